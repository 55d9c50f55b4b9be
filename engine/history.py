"""The run history: every run folder's run.json, listed and compared (config, curves, metrics, time, device),
and a finished run's per-message scores."""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.config import LABELS, RunConfig
from engine.data import read_split
from engine.errors import ConfigError, DataError
from engine.evaluate import Scores
from engine.run import RECORD_FILE


@dataclass(frozen=True)
class RunSummary:
    name: str  # the run folder's name
    folder: Path
    created: str
    model: str
    preset: str | None
    rank: int
    alpha: float
    device: str
    stopped: bool
    steps: int
    trainable: int | None
    train_seconds: float
    test_accuracy: float | None
    validation_accuracy: float | None
    losses: list[dict[str, Any]]  # the LossEvaluated points: step, epoch_progress, examples_seen, train_loss, validation_loss
    config: RunConfig | None = None  # None: a record of an older version whose config no longer validates


def read_record(folder: Path) -> dict[str, Any]:
    """A run folder's run.json as written.

    Raises:
        DataError: there is none (a run still going), or it is not a JSON object.
    """
    path = Path(folder) / RECORD_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise DataError(f"{path} is unreadable ({error})") from None
    if not isinstance(record, dict):
        raise DataError(f"{path} does not hold a run record")
    return record


def read_run(folder: Path) -> RunSummary | None:
    """A run folder's summary, or None when it has no readable record (a run still going, or damaged)."""
    try:
        record = read_record(folder)
        config, final = record["config"], record.get("final") or {}
        return RunSummary(
            name=Path(folder).name,
            folder=Path(folder),
            created=str(record["created"]),
            model=str(config["model"]),
            preset=config.get("preset"),
            rank=int(config["lora"]["rank"]),
            alpha=float(config["lora"]["alpha"]),
            device=str(record["device"]),
            stopped=bool(record["stopped"]),
            steps=int(record["steps"]),
            trainable=record.get("trainable"),
            train_seconds=float(record["timings"]["train_seconds"]),
            test_accuracy=final.get("test", {}).get("accuracy"),
            validation_accuracy=final.get("validation", {}).get("accuracy"),
            losses=list(record["losses"]),
            config=_config_of(config),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def list_runs(root: Path) -> list[RunSummary]:
    """Every readable run directly under `root`, newest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    runs = [run for folder in root.iterdir() if folder.is_dir() and (run := read_run(folder)) is not None]
    return sorted(runs, key=lambda run: run.created, reverse=True)


def _config_of(data: Any) -> RunConfig | None:
    try:
        return RunConfig.from_dict(data)
    except ConfigError:
        return None


def all_runs(root: Path) -> list[tuple[str, RunSummary]]:
    """(name, summary) of every run under `root`, newest first: runs/<date-time>, and the runs inside each
    grid (or older sweep) folder, named "<folder>/<run>"."""
    root = Path(root)
    found = [(run.name, run) for run in list_runs(root)]
    if root.is_dir():
        for folder in sorted(root.iterdir()):
            if folder.is_dir() and not (folder / RECORD_FILE).exists():
                found += [(f"{folder.name}/{run.name}", run) for run in list_runs(folder)]
    return sorted(found, key=lambda item: (item[1].created, item[0]), reverse=True)


@dataclass(frozen=True)
class SplitScores:
    """A finished run's per-message scores on one split, with what showing them needs."""

    class_names: tuple[str, ...]
    scores: Scores
    confusion: list[list[int]] | None  # the run's own confusion matrix (each message given its likeliest class)
    texts: list[str] | None  # the messages, while the run's data folder still holds exactly these (else None)


def read_scores(folder: Path, split: str) -> SplitScores | None:
    """The per-message scores a run's record keeps for `split`; None when it keeps none (the run
    stopped before its final evaluation, or an older version trained it).

    Raises:
        DataError: the record is unreadable or its scores are damaged.
    """
    record = read_record(folder)
    raw = (record.get("scores") or {}).get(split)
    if not raw:
        return None
    try:
        class_names = tuple((record.get("data") or {}).get("labels") or LABELS)
        labels = [int(label) for label in raw["labels"]]
        if "probabilities" in raw:
            scores = Scores(labels, [[float(p) for p in row] for row in raw["probabilities"]])
        else:  # records of older versions kept P(class 1) only
            scores = Scores.binary(labels, raw["p_positive"])
        confusion = ((record.get("final") or {}).get(split) or {}).get("confusion")
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise DataError(f"the scores in {Path(folder) / RECORD_FILE} are damaged ({type(error).__name__}: {error})") from None
    return SplitScores(class_names, scores, confusion, _split_texts(record, split, labels, len(class_names)))


def _split_texts(record: dict[str, Any], split: str, labels: list[int], n_classes: int) -> list[str] | None:
    """The split's messages from the run's data folder, if its rows still carry exactly these labels."""
    folder = (record.get("config") or {}).get("data")
    if not folder:
        return None
    try:
        frame = read_split(Path(folder), split, n_classes)
    except DataError:
        return None
    if frame["Label"].tolist() != labels:
        return None
    return frame["Text"].tolist()
