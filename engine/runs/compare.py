"""What came back from a grid: test accuracy by setting, averaged over the seeds (or whatever else varied);
and the fine-tuning methods side by side (is the language model worth it?).

Read from the runs' records, so a grid finished before a restart compares as well as one that just
ran. A heat map takes two settings and averages the rest; the spread across seeds shows where
several seeds ran.
"""

import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from engine.config import BASELINE_METHOD, METHODS, RunConfig, target_set_name
from engine.runs.grid import Grid
from engine.runs.history import RunSummary

GRID_SETTINGS: tuple[str, ...] = tuple(f.name for f in fields(Grid))


@dataclass(frozen=True)
class GridPoint:
    """One finished run of a grid."""

    name: str
    settings: dict[str, Any]  # every GRID_SETTINGS value of the run (targets by layer-set name)
    test_accuracy: float
    trainable: int | None
    train_seconds: float


@dataclass(frozen=True)
class Summary:
    """Runs that agree on the compared settings: their mean, spread and count."""

    key: tuple[Any, ...]  # the compared settings' values
    mean: float
    std: float  # 0 for a single run
    count: int
    trainable: float | None  # mean trainable parameters
    seconds: float  # mean training time


def setting_of(cfg: RunConfig, name: str) -> Any:
    """A run's value of a grid setting, as a grid names it."""
    match name:
        case "rank" | "alpha" | "scaling" | "targets":
            value = getattr(cfg.lora, name)
            if name == "targets":
                return target_set_name(value) or "+".join(value)
            return value
        case "lr" | "seed":
            return getattr(cfg.train, name)
        case "preset":
            return cfg.preset or "custom"
    raise KeyError(name)


def grid_points(runs: Sequence[RunSummary]) -> list[GridPoint]:
    """The runs that finished with a test accuracy, as grid points."""
    return [
        GridPoint(run.name, {name: setting_of(run.config, name) for name in GRID_SETTINGS}, run.test_accuracy, run.trainable, run.train_seconds)
        for run in runs
        if run.config is not None and run.test_accuracy is not None
    ]


def varied(points: Sequence[GridPoint]) -> list[str]:
    """The settings that take more than one value among the points, in GRID_SETTINGS order."""
    return [name for name in GRID_SETTINGS if len({_hashable(p.settings[name]) for p in points}) > 1]


def summarise(points: Sequence[GridPoint], by: Sequence[str]) -> list[Summary]:
    """Test accuracy grouped by the settings `by` (every other setting averaged), sorted by key."""
    groups: dict[tuple, list[GridPoint]] = defaultdict(list)
    for point in points:
        groups[tuple(_hashable(point.settings[name]) for name in by)].append(point)
    summaries = []
    for key, members in groups.items():
        accuracies = [p.test_accuracy for p in members]
        trainables = [p.trainable for p in members if p.trainable is not None]
        summaries.append(
            Summary(
                key,
                statistics.fmean(accuracies),
                statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
                len(members),
                statistics.fmean(trainables) if trainables else None,
                statistics.fmean(p.train_seconds for p in members),
            )
        )
    return sorted(summaries, key=lambda s: tuple(_sortable(v) for v in s.key))


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _sortable(value: Any) -> tuple[int, Any]:
    return (0, value) if isinstance(value, int | float) else (1, str(value))


# The book's table for SMS spam on an A100 (appendix E; chapter 6 for the last block), for reference beside ours.
BOOK_A100 = "LoRA 97.32 % validation, 96.67 % test, 0.75 min; last block 0.28 min; full fine-tuning 0.69 min"

# The methods in the order a comparison lists them: LoRA, the heavier ones, then the classical baseline.
METHOD_ORDER: tuple[str, ...] = (*METHODS, BASELINE_METHOD)


def methods_side_by_side(runs: Sequence[tuple[str, RunSummary]]) -> list[tuple[str, RunSummary]]:
    """The newest finished run (done, with a test accuracy) of each method, in METHOD_ORDER: `runs` come newest first."""
    newest: dict[str, tuple[str, RunSummary]] = {}
    for name, run in runs:
        if run.state == "done" and run.test_accuracy is not None:
            newest.setdefault(run.method, (name, run))
    return [newest[method] for method in METHOD_ORDER if method in newest]
