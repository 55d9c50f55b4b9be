import csv

import pytest
import torch
from conftest import tiny_run_config

from engine.classifier import Classifier
from engine.data.prepared import prepare, read_source_file
from engine.errors import DataError
from engine.runs.events import FinalEvaluated, RunSaved
from engine.runs.run import fine_tune

TOPICS = {
    "billing": "my invoice {i} was charged twice, please refund the payment",
    "delivery": "where is parcel {i}? the courier said it would arrive today",
    "praise": "thank you {i} times, the support team was wonderful",
}


def write_csv(path, rows_per_label: dict[str, int]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for label, count in rows_per_label.items():
            for i in range(count):
                writer.writerow([TOPICS[label].format(i=i) + (', "quoted", too' if i % 7 == 0 else ""), label])


def test_three_class_csv_trains_and_classifies(tmp_path, tiny_model_dir):
    write_csv(tmp_path / "tickets.csv", {"billing": 60, "delivery": 45, "praise": 50})
    data = prepare(str(tmp_path / "tickets.csv"), tmp_path / "cache")
    assert data.summary.labels == ("billing", "delivery", "praise")
    assert data.summary.class_counts == {"billing": 60, "delivery": 45, "praise": 50}
    assert data.summary.balanced == 135  # every class cut to the smallest, 45
    assert data.splits.train.Text.str.contains('"quoted"').any()
    cfg = tiny_run_config(tiny_model_dir, tmp_path / "cache", tmp_path / "run", max_steps=8, eval_freq=4)
    events = list(fine_tune(cfg))
    final = next(e for e in events if isinstance(e, FinalEvaluated))
    assert len(final.metrics["test"].confusion) == 3
    classifier = Classifier.load(next(e for e in events if isinstance(e, RunSaved)).adapter_dir, torch.device("cpu"))
    (prediction,) = classifier.classify("the courier lost my parcel")
    assert set(prediction.probabilities) == {"billing", "delivery", "praise"} and prediction.label in prediction.probabilities


def test_prepared_custom_data_keeps_its_labels(tmp_path):
    write_csv(tmp_path / "tickets.csv", {"billing": 20, "praise": 20, "delivery": 20})
    prepare(str(tmp_path / "tickets.csv"), tmp_path / "cache")
    again = prepare(str(tmp_path / "cache"), tmp_path / "other")
    assert again.splits.labels == ("billing", "delivery", "praise") and again.summary.messages == 60


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("words,more\nhello,there\n", "no tab .* or a CSV/TSV whose first line names a text and a label column"),
        ("label,text\nbilling\n", "line 2: expected at least 2 fields"),
        ("label,text\n,some text\n", "line 2: empty label"),
        ("label,text\nbilling,\"unterminated\n", "line 2"),
        ("label,text\n" + "".join(f"only,row {i}\n" for i in range(20)), "only one class"),
    ],
)
def test_bad_custom_files_name_the_problem(tmp_path, content, problem):
    path = tmp_path / "mine.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=problem):
        prepare(str(path), tmp_path / "cache")


def test_tab_separated_with_header_and_any_labels(tmp_path):
    path = tmp_path / "mine.tsv"
    path.write_text("class\tmessage\n" + "".join(f"{'pos' if i % 2 else 'neg'}\tsample \"{i}\n" for i in range(40)))
    messages = read_source_file(path)
    assert set(messages.Label) == {"neg", "pos"} and messages.Text[1] == 'sample "1'
