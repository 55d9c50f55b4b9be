"""A run's two adapters, its best (lowest validation loss at a loss estimate) and its last, and which answers.

Classify and Evaluate use a run's best adapter unless asked for its last. A run of an older version,
or one whose best adapter is missing or was not measured (stopped during its measuring), answers
with its last, and says so.
"""

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, get_args

from engine.runs.history import RunSummary, usable_adapter
from engine.runs.record import ADAPTER_DIR, BEST_ADAPTER_DIR

Which = Literal["best", "last"]
WHICH: tuple[str, ...] = get_args(Which)


@dataclass(frozen=True)
class KeptAdapter:
    """The adapter of a run that answers: its folder, which it is, and the step it was saved at."""

    folder: Path
    which: Which
    step: int | None  # None: a run that kept no best, whose last adapter's step its record gives as `steps`
    steps: int  # the run's steps in all
    best_step: int | None  # where its best was (None: it kept none)
    test_accuracy: float | None

    @property
    def adapter(self) -> str:
        """The adapter's folder name in the run's folder (adapter, adapter-best): which scores the record keeps for it."""
        return self.folder.name

    def words(self) -> str:
        """What answers, for a header: "best adapter, step 60 of 130 (lowest validation loss)"."""
        if self.best_step is None:
            return f"last adapter, step {self.steps:,} (this run kept no best adapter: trained by an older version, or its best is missing)"
        if self.which == "best" and self.best_step == self.steps:
            return f"best adapter, step {self.steps:,} of {self.steps:,} (lowest validation loss; also its last)"
        if self.which == "best":
            return f"best adapter, step {self.best_step:,} of {self.steps:,} (lowest validation loss)"
        return f"last adapter, step {self.steps:,} of {self.steps:,} (its best was at step {self.best_step:,})"


def kept_adapter(summary: RunSummary, which: str = "best") -> KeptAdapter:
    """The adapter of the run `summary` that answers when `which` is asked for (anything but "last": the best)."""
    last = KeptAdapter(summary.folder / ADAPTER_DIR, "last", summary.steps, summary.steps, None, summary.test_accuracy)
    if summary.best_step is None or summary.best_adapter is None:
        return last
    if summary.best_adapter == ADAPTER_DIR:  # the last step was the best: one adapter is both
        return replace(last, which="best" if which != "last" else "last", best_step=summary.best_step)
    best = summary.folder / BEST_ADAPTER_DIR
    if summary.best_test_accuracy is None or not usable_adapter(best):  # not measured, or missing or damaged: the last answers
        return last
    if which == "last":
        return replace(last, best_step=summary.best_step)
    return KeptAdapter(best, "best", summary.best_step, summary.steps, summary.best_step, summary.best_test_accuracy)
