"""The run history: every run folder's run.json, listed and compared (config, curves, metrics, time, device)."""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.config import RunConfig
from engine.errors import ConfigError
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


def read_run(folder: Path) -> RunSummary | None:
    """A run folder's summary, or None when it has no readable record (a run still going, or damaged)."""
    try:
        record = json.loads((Path(folder) / RECORD_FILE).read_text(encoding="utf-8"))
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
