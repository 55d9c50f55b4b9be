"""How long a waiting run will wait: the runs ahead of it, at this machine's measured speed.

The speed is measured, never assumed: the recent finished runs' wall time (their worker's start,
the evaluations and the saving included) per optimiser step, else the running runs' so far. The
runs ahead are laid on the worker slots in queue order, each slot taking the next run as it comes
free, so two slots halve the wait and a long run ahead counts for its length.
"""

import heapq
import time
from collections.abc import Callable, Sequence

from engine.config import RunConfig
from engine.runs.scheduler import RunView

RECENT_RUNS = 10  # finished runs the speed is measured over


def planned_steps(cfg: RunConfig, training_messages: int | None) -> int | None:
    """The optimiser steps `cfg` will take on `training_messages` (whole batches, as the training loader draws them); None when unknown."""
    train = cfg.train
    if training_messages is None:
        return train.max_steps
    steps = train.epochs * max(1, training_messages // train.batch_size)
    return min(steps, train.max_steps) if train.max_steps else steps


def seconds_per_step(views: Sequence[RunView]) -> float | None:
    """Wall seconds per optimiser step on this machine, from the recent finished runs (else the running ones); None before any step."""
    done = sorted(
        (v for v in views if v.run.state == "done" and v.run.started_at and v.run.ended_at and v.progress and v.progress.step),
        key=lambda v: v.run.ended_at or 0.0,
    )[-RECENT_RUNS:]
    if done:
        return sum((v.run.ended_at or 0.0) - (v.run.started_at or 0.0) for v in done) / sum(v.progress.step for v in done if v.progress)
    running = [v for v in views if v.run.state == "running" and v.run.started_at and v.progress and v.progress.step]
    if running:
        now = time.time()
        return sum(now - (v.run.started_at or now) for v in running) / sum(v.progress.step for v in running if v.progress)
    return None


def expected_wait_s(views: Sequence[RunView], run_id: str, slots: int, steps_of: Callable[[RunConfig], int | None]) -> float | None:
    """Seconds until `run_id` (waiting) starts, or None when the speed or a run's length is unknown yet.

    `views` are in queue order (waiting runs in the order they start); `steps_of` gives a waiting run's planned steps.
    """
    rate = seconds_per_step(views)
    mine = next((v for v in views if v.run.id == run_id), None)
    if rate is None or mine is None or mine.run.state != "queued":
        return None
    free_at = []  # when each slot comes free, seconds from now
    for view in views:
        if view.run.state == "running":
            progress = view.progress
            left = progress.total_steps - progress.step if progress and progress.total_steps else steps_of(view.run.config)
            if left is None:
                return None
            free_at.append(max(0, left) * rate)
    free_at += [0.0] * max(0, slots - len(free_at))
    heapq.heapify(free_at)
    for view in views:
        if view.run.id == run_id:
            return free_at[0]
        if view.run.state == "queued":
            steps = steps_of(view.run.config)
            if steps is None:
                return None
            heapq.heapreplace(free_at, free_at[0] + steps * rate)
    return None
