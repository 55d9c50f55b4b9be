"""Fixtures for the insight tests: a small slice of the SMS data as your-own-data CSV, and one finished tiny run on it."""

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import SMS_ZIP, tiny_run_config

from engine.data.prepared import prepare, read_source_file
from engine.runs.run import fine_tune


def small_csv(folder: Path, per_class: int = 40) -> Path:
    """A headered CSV of the first `per_class` ham and spam messages: the custom-data path, and fast."""
    messages = read_source_file(SMS_ZIP)
    rows = pd.concat([messages[messages["Label"] == name].head(per_class) for name in ("ham", "spam")])
    path = folder / "small.csv"
    rows.rename(columns={"Label": "label", "Text": "text"})[["label", "text"]].to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("small-data")
    prepare(str(small_csv(folder)), folder / "prepared")
    return folder / "prepared"


@pytest.fixture(scope="module")
def finished_runs(tiny_model_dir: Path, small_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A runs folder holding one finished tiny run, called first-run."""
    runs = tmp_path_factory.mktemp("runs")
    cfg = tiny_run_config(tiny_model_dir, small_data, runs / "first-run", max_steps=6, eval_freq=2, batch_size=8)
    list(fine_tune(cfg))
    return runs


def write_three_classes(folder: Path) -> Path:
    path = folder / "three.tsv"
    rows = [f"{label}\t{label} message number {i}" for label in ("work", "friends", "bills") for i in range(12)]
    path.write_text("label\ttext\n" + "\n".join(rows) + "\n")
    return path


def three_class_scores(run: Path, folder: Path) -> None:
    """Rewrite a finished run's record as a three-class run (bills, friends, work) with six validation messages:
    P(friends) is [.2, .6, .5, .3, .4, .1] and friends are b and d, so at 0.55 only d is a mistake."""
    data = folder / "three"
    data.mkdir()
    labels = [0, 1, 2, 1, 0, 2]
    pd.DataFrame({"Label": labels, "Text": list("abcdef")}).to_csv(data / "validation.csv", index=False)
    record = json.loads((run / "run.json").read_text())
    record["config"]["data"] = str(data)
    record["data"]["labels"] = ["bills", "friends", "work"]
    probabilities = [[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.2, 0.5, 0.3], [0.3, 0.3, 0.4], [0.5, 0.4, 0.1], [0.1, 0.1, 0.8]]
    record["scores"]["validation"] = {"labels": labels, "probabilities": probabilities}
    record["final"]["validation"]["confusion"] = [[2, 0, 0], [0, 1, 1], [0, 1, 1]]
    (run / "run.json").write_text(json.dumps(record))
