"""What a run reports as it goes, besides the training loop's own events (engine/train.py).

Small frozen values: the CLI prints them, a worker process sends them to the app, `RunRecorder`
folds them into a run's progress and record.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.data.download import DownloadProgress
from engine.data.prepared import DataSummary
from engine.evaluate import Metrics, Scores
from engine.lora import ParamCounts
from engine.train import TrainEvent


@dataclass(frozen=True)
class DataReady:
    summary: DataSummary


@dataclass(frozen=True)
class ModelReady:
    model: str
    device: str
    counts: ParamCounts
    seconds: float
    precision: str = "fp32"  # what the frozen base computes in on this device (the run's "auto" resolved)


@dataclass(frozen=True)
class BaselineEvaluated:
    train_accuracy: float
    validation_accuracy: float
    test_accuracy: float


@dataclass(frozen=True)
class FinalEvaluated:
    metrics: dict[str, Metrics]  # "train", "validation", "test" on the full loaders
    scores: dict[str, Scores] = field(default_factory=dict)  # per-message class probabilities: "validation", "test"


@dataclass(frozen=True)
class AdapterMeasured:
    """The anatomy of the adapter being trained, after `steps` optimiser steps (at each loss estimate, and at the end):
    per layer name, its update's norm, effective rank, size against the frozen weight and largest singular values
    (engine.anatomy.growth_point)."""

    steps: int
    layers: dict[str, dict[str, Any]]


@dataclass(frozen=True)
class BestKept:
    """The run's best weights (lowest validation loss at a loss estimate, engine.best), saved beside its last in the
    run folder's `adapter` folder: adapter-best, or adapter itself when the last step was the best. `metrics` and
    `scores` are theirs on the validation and test sets, when they are not the last's (those are FinalEvaluated's)
    and the run was not stopped."""

    step: int
    validation_loss: float
    adapter: str
    metrics: dict[str, Metrics] = field(default_factory=dict)
    scores: dict[str, Scores] = field(default_factory=dict)


@dataclass(frozen=True)
class RunSaved:
    out_dir: Path
    adapter_dir: Path
    record: Path
    plot: Path | None
    stopped: bool


RunEvent = DownloadProgress | DataReady | ModelReady | BaselineEvaluated | TrainEvent | AdapterMeasured | FinalEvaluated | BestKept | RunSaved
