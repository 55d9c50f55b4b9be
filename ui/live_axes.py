"""The axes of the Train tab's live plots: fixed by the run's plan, not by the points drawn so far.

Left to itself, a plot takes its axes from its points. A run with no point yet then shows an empty
chart whose only tick is "1.000000", with "Infinite extent" warnings in the browser; a run with one
estimate shows steps 0.2, 0.4... So every plot of a followed run gets both ends of its axes: the steps
(and examples) the run plans to take along the bottom, ticked at whole numbers, and the scores'
0 to 100 %. The loss reaches from 0 to its highest point once it has one; before that to 1 (a two-class
guess starts near ln 2 = 0.69).
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from engine.data.prepared import load_summary
from engine.runs.scheduler import RunView

WHOLE_NUMBERS = "d"  # the axis format: Vega-Lite then keeps its ticks at least one apart (no step 2.5)
LOSS_BEFORE_POINTS = (0.0, 1.0)
LOSS_WITH_POINTS = (0.0, None)  # from 0 to the highest point (an update's None would leave the axis as it was)
UNKNOWN_STEPS = 10  # the axis of a run that downloads its data first, until it knows its length


@dataclass(frozen=True)
class LiveAxes:
    """How far the followed run's plots reach along the bottom, and the loss's height while it has no point."""

    steps: int  # the optimiser steps it plans (at least 1)
    examples: int  # the training examples those steps read
    loss_drawn: bool  # whether the loss has a point yet

    def loss_plot(self, frame: pd.DataFrame, x: str) -> dict[str, Any]:
        """The update for a loss plot against `x` ("step" or "examples seen")."""
        end = self.steps if x == "step" else self.examples
        return gr.update(value=frame, x_lim=[0, end], y_lim=list(LOSS_WITH_POINTS if self.loss_drawn else LOSS_BEFORE_POINTS))

    def scores_plot(self, frame: pd.DataFrame) -> dict[str, Any]:
        return gr.update(value=frame, x_lim=[0, self.steps])

    def accuracy_plot(self, frame: pd.DataFrame) -> dict[str, Any]:
        return gr.update(value=frame, x_lim=[0, self.steps])


def live_axes(view: RunView, loss_drawn: bool) -> LiveAxes:
    """The axes of `view`'s plots: its planned steps once training started, else as its settings and data foretell them."""
    progress = view.progress
    steps = max(progress.total_steps if progress and progress.total_steps else planned_steps(view), 1)
    return LiveAxes(steps, steps * view.run.config.train.batch_size, loss_drawn)


def steps_per_epoch(view: RunView) -> int | None:
    """Whole batches of the training split (the last, partial one is dropped, as in the book): from the run once it
    read its data, before that from the prepared data it will read; None while neither is known (it downloads first)."""
    progress, cfg = view.progress, view.run.config
    if progress and progress.steps_per_epoch:
        return progress.steps_per_epoch
    data = progress.data if progress and progress.data else load_summary(Path(cfg.data)) if cfg.data else None
    return max(data.train // cfg.train.batch_size, 1) if data else None


def planned_steps(view: RunView) -> int:
    """The steps a run will take, before it says so itself: every epoch's batches, or max_steps if fewer."""
    train = view.run.config.train
    per_epoch = steps_per_epoch(view)
    if per_epoch is None:
        return train.max_steps or UNKNOWN_STEPS
    every_epoch = per_epoch * train.epochs
    return min(every_epoch, train.max_steps) if train.max_steps else every_epoch
