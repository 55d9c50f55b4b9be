"""The classical baseline (TF-IDF + logistic regression): on the real SMS splits, recorded as a run beside the LoRA runs."""

import json

import pandas as pd
import pytest

from engine.baseline import C_CHOICES, fit_baseline
from engine.cli import main
from engine.config import BASELINE_METHOD, RunConfig
from engine.data.prepared import Splits, load_splits
from engine.runs.history import all_runs
from engine.runs.record import BASELINE_FILE


def tiny_splits() -> Splits:
    """Two classes told apart by one word each; the validation split says which C wins."""
    frame = lambda rows: pd.DataFrame(rows, columns=["Label", "Text"])
    train = frame([(0, "see you at lunch"), (0, "call me later mum"), (1, "win a free prize now"), (1, "free entry claim prize")] * 3)
    validation = frame([(0, "lunch later"), (1, "claim your free prize")])
    test = frame([(0, "see you mum"), (1, "win free entry")])
    return Splits(train, validation, test)


def test_fits_on_train_and_counts_its_weights():
    result = fit_baseline(tiny_splits(), seed=1)
    assert set(result.validation_by_c) == {f"{c:g}" for c in C_CHOICES}
    assert result.final["train"].count == 12 and result.final["test"].accuracy == 1.0
    assert result.parameters == result.features + 1  # two classes: one weight per word feature, plus the bias
    assert result.final["test"].count == 2 and set(result.scores) == {"validation", "test"}
    assert all(abs(sum(row) - 1) < 1e-9 for row in result.scores["test"].probabilities)


@pytest.mark.slow
def test_the_command_beats_95_percent_on_the_sms_data_and_records_a_run(capsys, prepared_data, tmp_path):
    assert main(["baseline", "--data", str(prepared_data), "--out", str(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["accuracy"]["test"] > 0.95
    record = json.loads((tmp_path / out["out_dir"].rpartition("/")[2] / "run.json").read_text())
    assert record["state"] == "done" and record["config"]["method"] == BASELINE_METHOD
    assert record["config"]["data"] == str(prepared_data)  # the very splits the LoRA runs read
    assert RunConfig.from_dict(record["config"]).method == BASELINE_METHOD
    saved = tmp_path / out["out_dir"].rpartition("/")[2] / BASELINE_FILE
    assert record["size_bytes"] == saved.stat().st_size
    assert record["trainable"] == out["trainable"] == json.loads(saved.read_text())["intercept"].__len__() + out["features"]
    assert record["final"]["test"]["count"] == len(load_splits(prepared_data).test)
    by_c = record["tfidf_logreg"]["validation_accuracy_by_C"]
    assert len(set(by_c.values())) > 1  # C matters on this data, so choosing it means something
    assert by_c[f"{record['tfidf_logreg']['C']:g}"] == max(by_c.values()) == record["final"]["validation"]["accuracy"]
    assert record["reproduce"]["command"].startswith("python -m engine baseline")
    (name, run), *others = all_runs(tmp_path)
    assert not others and name.startswith("baseline-") and run.test_accuracy == out["accuracy"]["test"] and run.state == "done"
