"""The axes of the Train tab's live plots: fixed by the run's plan, not by the points drawn so far.

Left to itself, a plot takes its axes from its points. A run with no point yet then showed an empty
chart whose only tick was "1.000000", with "Infinite extent" warnings in the browser; a first estimate
showed steps 0.2, 0.4... So every frame of a followed run carries rows that stretch its axes to the
steps (and examples) the run plans, ticked at whole numbers, and the loss's to at least 1; the scores
keep 0 to 100 %. Those rows lie outside the axes, so nothing of them is drawn.
"""

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from engine.data.prepared import load_summary
from engine.runs.scheduler import RunView

WHOLE_NUMBERS = "d"  # the axis format: Vega-Lite then keeps its ticks at least one apart (no step 2.5)
BELOW = -1000.0  # far outside every axis (loss and scores start at 0, steps at 0): a row there is cut away, marker and all
UNKNOWN_STEPS = 10  # the axis of a run that downloads its data first, until it knows its length
# Series of one row each that only stretch the axes; drawn outside them, in no colour, and left out of the legend.
END, TOP = "end of the run", "loss axis top"
AXIS_SERIES = {END: "transparent", TOP: "transparent"}


@dataclass(frozen=True)
class LiveAxes:
    """How far the followed run's plots reach along the bottom: the rows each plot's frame gets to say so.

    The axes come from the data, not from the plot's x_lim: a Gradio plot sent new limits with new data
    redraws with the data it had before (the last run's curves on the new run's axes, until the next poll).
    """

    steps: int  # the optimiser steps it plans (at least 1)
    examples: int  # the training examples those steps read

    def loss(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Along the bottom 0 to the planned steps (examples), up the side 0 to at least 1 (the plots start both at 0)."""
        rows = [
            {"step": self.steps, "examples seen": self.examples, "loss": BELOW, "split": END},
            {"step": BELOW, "examples seen": BELOW, "loss": 1.0, "split": TOP},
        ]
        return pd.concat([frame, pd.DataFrame(rows)], ignore_index=True)

    def points(self, frame: pd.DataFrame, y: str, series: str) -> pd.DataFrame:
        """Along the bottom 0 to the planned steps (the plot keeps the scores' 0 to 100 %)."""
        return pd.concat([frame, pd.DataFrame([{"step": self.steps, y: BELOW, series: END}])], ignore_index=True)


def live_axes(view: RunView) -> LiveAxes:
    """The axes of `view`'s plots: its planned steps once training started, else as its settings and data foretell them."""
    progress = view.progress
    steps = max(progress.total_steps if progress and progress.total_steps else planned_steps(view), 1)
    return LiveAxes(steps, steps * view.run.config.train.batch_size)


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
