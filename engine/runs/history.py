"""The run history: every run folder's run.json, listed and compared (config, curves, metrics, time,
device, state), a finished run's per-message scores, and whether a run's adapter is usable (reads,
every value finite)."""

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.adapter import TENSORS_FILE, read_adapter
from engine.config import LABELS, RunConfig
from engine.data.prepared import read_split
from engine.errors import AdapterError, ConfigError, DataError
from engine.evaluate import Scores
from engine.runs.record import ADAPTER_DIR, BASELINE_FILE, BEST_ADAPTER_DIR, RECORD_FILE, read_record, record_state


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
    state: str = "done"  # running, done, stopped, failed, interrupted (see engine.runs.record)
    error: str | None = None  # why a failed or interrupted run ended
    method: str = "lora"  # lora, last-block, full, or the classical baseline (engine.config.BASELINE_METHOD)
    size_bytes: int | None = None  # what the run saved to use it: its adapter (or trained weights), or the baseline's model
    best_step: int | None = None  # steps taken at its lowest validation loss (None: a run that kept no best, e.g. of an older version)
    best_adapter: str | None = None  # the folder in `folder` holding those weights: adapter-best, or adapter when the last were the best
    best_test_accuracy: float | None = None  # the best weights' own, when they are not the last (None: not measured)


def read_run(folder: Path) -> RunSummary | None:
    """A run folder's summary, or None when it has no readable record (damaged, or not a run).

    A run that is going, failed or was interrupted has a record too; fields it never reached are
    empty (no device before the model loaded, no accuracy before the final evaluation).
    """
    record = read_record(folder)
    if record is None:
        return None
    try:
        config, final = record["config"], record.get("final") or {}
        state = record_state(record)
        return RunSummary(
            name=Path(folder).name,
            folder=Path(folder),
            created=str(record["created"]),
            model=str(config["model"]),
            preset=config.get("preset"),
            rank=int(config["lora"]["rank"]),
            alpha=float(config["lora"]["alpha"]),
            device=str(record.get("device", "")),
            stopped=state == "stopped",
            steps=int(record.get("steps", 0)),
            trainable=record.get("trainable"),
            train_seconds=float((record.get("timings") or {}).get("train_seconds", 0.0)),
            test_accuracy=final.get("test", {}).get("accuracy"),
            validation_accuracy=final.get("validation", {}).get("accuracy"),
            losses=list(record.get("losses", [])),
            config=_config_of(config),
            state=state,
            error=record.get("error"),
            method=str(config.get("method", "lora")),
            size_bytes=saved_bytes(Path(folder)),
            **_best_fields(record.get("best")),
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _best_fields(best: Any) -> dict[str, Any]:
    """The summary's fields of the record's best weights (none when it names none)."""
    if not isinstance(best, dict) or best.get("adapter") not in (ADAPTER_DIR, BEST_ADAPTER_DIR) or not isinstance(best.get("step"), int):
        return {}
    test = ((best.get("final") or {}).get("test") or {}).get("accuracy")
    return {"best_step": int(best["step"]), "best_adapter": best["adapter"], "best_test_accuracy": test}


def saved_bytes(folder: Path) -> int | None:
    """The size on disk of what a run saved to be used (adapter tensors, or the baseline's model); None when it saved nothing."""
    sizes = []
    for path in (folder / ADAPTER_DIR / TENSORS_FILE, folder / BASELINE_FILE):
        try:
            sizes.append(path.stat().st_size)
        except OSError:
            continue
    return sum(sizes) if sizes else None


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
    """(name, summary) of every readable run under `root`, newest first: runs/<date-time>, and the runs inside
    each grid (or older sweep) folder, named "<folder>/<run>"."""
    root = Path(root)
    found = [(folder.relative_to(root).as_posix(), run) for folder in run_folders(root) if (run := read_run(folder)) is not None]
    return sorted(found, key=lambda item: (item[1].created, item[0]), reverse=True)


def run_folders(root: Path) -> list[Path]:
    """The run folders under `root`: root/<run>, and root/<grid>/<run> for each grid (or older sweep)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for folder in root.iterdir():
        if not folder.is_dir():
            continue
        if (folder / RECORD_FILE).exists() or (folder / ADAPTER_DIR).is_dir():
            found.append(folder)
        else:
            found += [inner for inner in folder.iterdir() if inner.is_dir()]
    return found


def settle_runs(root: Path) -> None:
    """Read every record under `root`, so that runs whose process is gone are marked interrupted."""
    for folder in run_folders(root):
        read_record(folder)


def usable_adapter(folder: Path) -> bool:
    """Whether the adapter in `folder` reads and validates (finite values included); remembered per file version."""
    tensors = Path(folder) / TENSORS_FILE
    try:
        stat = tensors.stat()
    except OSError:
        return False
    return _validates(str(tensors.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=64)
def _validates(path: str, mtime_ns: int, size: int) -> bool:  # the file's version is part of the key
    try:
        read_adapter(Path(path))
    except AdapterError:
        return False
    return True


@dataclass(frozen=True)
class SplitScores:
    """A finished run's per-message scores on one split, with what showing them needs."""

    class_names: tuple[str, ...]
    scores: Scores
    confusion: list[list[int]] | None  # the run's own confusion matrix (each message given its likeliest class)
    texts: list[str] | None  # the messages, while the run's data folder still holds exactly these (else None)


def read_scores(folder: Path, split: str, adapter: str = ADAPTER_DIR) -> SplitScores | None:
    """The per-message scores a run's record keeps for `split`, of its last weights or (`adapter` adapter-best)
    its best; None when it keeps none (the run stopped before its final evaluation, or an older version trained it).

    Raises:
        DataError: the record is unreadable or its scores are damaged.
    """
    record = read_record(folder)
    if record is None:
        raise DataError(f"{Path(folder) / RECORD_FILE} is unreadable: the run's folder was moved, or its record damaged")
    figures = (record.get("best") or {}) if adapter == BEST_ADAPTER_DIR else record  # the best's are kept apart (engine.runs.run)
    raw = (figures.get("scores") or {}).get(split)
    if not raw:
        return None
    try:
        class_names = tuple((record.get("data") or {}).get("labels") or LABELS)
        labels = [int(label) for label in raw["labels"]]
        if "probabilities" in raw:
            scores = Scores(labels, [[float(p) for p in row] for row in raw["probabilities"]])
        else:  # records of older versions kept P(class 1) only
            scores = Scores.binary(labels, raw["p_positive"])
        confusion = ((figures.get("final") or {}).get(split) or {}).get("confusion")
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


def split_texts(folder: Path, split: str, labels: list[int]) -> list[str] | None:
    """The messages of `split` of the run in `folder`, in order, if its data folder still holds exactly these `labels`
    (a running run's too, once its record names its data)."""
    record = read_record(folder)
    if record is None:
        return None
    return _split_texts(record, split, labels, len((record.get("data") or {}).get("labels") or LABELS))
