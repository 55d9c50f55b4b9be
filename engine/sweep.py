"""A rank sweep: train the same run at several LoRA ranks, one after another, and compare."""

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from engine.config import RunConfig
from engine.errors import ConfigError
from engine.events import FinalEvaluated, ModelReady, RunEvent
from engine.run import fine_tune
from engine.train import TrainEnded

DEFAULT_RANKS: tuple[int, ...] = (1, 2, 4, 8, 16)


@dataclass(frozen=True)
class SweepPoint:
    rank: int
    trainable: int
    test_accuracy: float | None  # None when the run was stopped before its final evaluation
    train_seconds: float
    out_dir: Path


@dataclass(frozen=True)
class SweepRunStarted:
    rank: int
    index: int  # 0-based position in the sweep
    total: int


SweepEvent = SweepRunStarted | RunEvent | SweepPoint


def rank_sweep(base: RunConfig, ranks: Sequence[int] = DEFAULT_RANKS, stop: threading.Event | None = None) -> Iterator[SweepEvent]:
    """Run `base` once per rank (into OUT/rank-R), yielding each run's events and then its SweepPoint.

    Alpha is kept as given, so with alpha/rank scaling the update's strength stays comparable.
    A stop ends the current run (which saves its adapter) and the sweep.
    """
    if not ranks or len(set(ranks)) != len(ranks):
        raise ConfigError(f"ranks must be distinct and not empty, got {list(ranks)}")
    stop = stop or threading.Event()
    for index, rank in enumerate(ranks):
        cfg = replace(base, lora=replace(base.lora, rank=rank), out_dir=str(Path(base.out_dir) / f"rank-{rank}"))
        yield SweepRunStarted(rank, index, len(ranks))
        trainable, accuracy, seconds = 0, None, 0.0
        for event in fine_tune(cfg, stop):
            if isinstance(event, ModelReady):
                trainable = event.counts.trainable
            elif isinstance(event, FinalEvaluated):
                accuracy = event.metrics["test"].accuracy
            elif isinstance(event, TrainEnded):
                seconds = event.elapsed_s
            yield event
        yield SweepPoint(rank, trainable, accuracy, seconds, Path(cfg.out_dir))
        if stop.is_set():
            return

