"""The run history: every run folder's run.json, listed and compared (config, curves, metrics, time, device)."""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
