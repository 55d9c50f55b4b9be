"""Fixtures for the insight tests: one finished tiny run on conftest's small slice of the SMS data."""

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import tiny_run_config

from engine.runs.run import fine_tune


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
    record.pop("best", None)  # its last adapter is its only one: the scores above are the ones Evaluate shows
    (run / "run.json").write_text(json.dumps(record))
