"""Which model answers on Classify and Evaluate: one list of finished runs for both tabs, and one default.

The list holds every finished run (its record says done, it kept its final evaluation, its adapter
reads with every value finite), newest first, a grid's runs included. A stopped run (no final
evaluation) is not offered; its adapter can still be downloaded and uploaded on Classify.
The default is the visitor's own latest finished run, else the presenter's (runs nobody in
particular queued, from the command line or an older version, count as the presenter's); never a
grid's run or another visitor's, so a page never silently answers with a model its visitor did not choose.
With the room off it is the latest finished run that is not a grid's.
A run answers with its best adapter (lowest validation loss) unless its last is asked for (engine.runs.adapters).
"""

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from engine.runs.adapters import WHICH, kept_adapter
from engine.runs.history import RunSummary, read_run, run_folders, usable_adapter
from engine.runs.queue import QueuedRun
from engine.runs.record import ADAPTER_DIR, RECORD_FILE
from ui.room import PRESENTER, Visitor


@dataclass(frozen=True)
class FinishedRun:
    name: str  # the folder under the runs folder: "20261202-153000", "grid-.../rank4"
    summary: RunSummary
    visitor: str  # who queued it ("" when nobody in particular, or the queue no longer holds it)

    @property
    def folder(self) -> Path:
        return self.summary.folder

    @property
    def in_grid(self) -> bool:
        return "/" in self.name


def finished_runs(root: Path, queued: Sequence[QueuedRun]) -> list[FinishedRun]:
    """Every finished run under `root`, newest first, with who queued it (from the queue)."""
    visitors = {run.id: run.visitor for run in queued}
    found = []
    for folder in run_folders(Path(root)):
        summary = _summary(folder)
        if summary is None or summary.state != "done" or summary.validation_accuracy is None or not usable_adapter(folder / ADAPTER_DIR):
            continue
        name = folder.relative_to(root).as_posix()
        found.append(FinishedRun(name, summary, visitors.get(name, "")))
    return sorted(found, key=lambda run: (run.summary.created, run.name), reverse=True)


def _summary(folder: Path) -> RunSummary | None:
    """The run's summary, read again only when its record changed (every page asks for the list)."""
    try:
        stat = (folder / RECORD_FILE).stat()
    except OSError:
        return None
    return _read(str(folder), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=2048)
def _read(folder: str, mtime_ns: int, size: int) -> RunSummary | None:  # the record's version is part of the key
    return read_run(Path(folder))


def default_run(runs: Sequence[FinishedRun], visitor: Visitor, room_on: bool) -> FinishedRun | None:
    """The run that answers unless the visitor picks another (see the module's note); None when there is none to choose silently."""
    alone = [run for run in runs if not run.in_grid]
    if not room_on:
        return alone[0] if alone else None
    own = [run for run in alone if run.visitor == visitor.key]
    presenters = [run for run in alone if run.visitor in (PRESENTER, "")]
    return (own or presenters or [None])[0]


ADAPTER_CHOICES = [("best: lowest validation loss", "best"), ("last: after the final step", "last")]  # the picker's words, then its values


def adapter_choice(which: object) -> str:
    """Which adapter of a run a visitor asked for: "best" (also when nothing was sent) or "last".

    Raises:
        gr.Error: anything else (a script's typo), with the two choices.
    """
    if which in (None, ""):
        return "best"
    if which not in WHICH:
        raise gr.Error(f"unknown adapter {str(which)[:40]!r}: choose best (lowest validation loss) or last (after the final step)")
    return str(which)


def adapter_picker(elem_id: str) -> gr.Radio:
    """Which of a run's adapters answers: its best (the default) or its last."""
    return gr.Radio(
        ADAPTER_CHOICES,
        value="best",
        label="Which of its adapters",
        info="best: saved when its validation loss was lowest; last: after its final training step",
        elem_id=elem_id,
    )


def choice_label(run: FinishedRun, visitor: Visitor, room_on: bool, which: str = "best") -> str:
    """How the list names a run: "20261202-153000 · 96.3% on test · yours", the accuracy of its `which` adapter (best or last)."""
    parts = [run.name]
    accuracy = kept_adapter(run.summary, which).test_accuracy
    if accuracy is not None:
        parts.append(f"{100 * accuracy:.1f}% on test")
    owner = run.summary.config.owner if run.summary.config else ""
    if room_on and run.visitor == visitor.key:
        parts.append("yours")
    elif room_on and run.visitor == PRESENTER:
        parts.append("the presenter's")
    elif owner:
        parts.append(owner)
    return " · ".join(parts)
