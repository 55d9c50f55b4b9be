"""From an error to its reason: click a cell of a confusion matrix to list its messages, click a message
to see why it got its answer ("Why this answer?", as on the Classify tab), without leaving the tab.

The Evaluate tab's matrices (a finished run's final answers) and the Train tab's live one (the followed
run's latest estimate) both use it: each says where its answers come from as a `CellSource`. A cell
says which it is (`confusion_html(..., table=...)`); the table's small script sends that with its click.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from engine.evaluate import Scores, cell_messages
from engine.runs.record import read_record
from ui.classify_tab import explanation_html
from ui.lab import Lab
from ui.views import plural

# Sent by a confusion table's gr.HTML on a click on a cell (event delegation: the table's HTML is replaced as it updates).
CELL_SCRIPT = """
element.addEventListener('click', (event) => {
  const cell = event.target.closest('td[data-cell]');
  if (cell) trigger('click', {cell: cell.dataset.cell});
});
"""
THRESHOLD_TABLE = "threshold"  # one class against the rest, at a threshold (at_threshold's matrix)
CLASSES_TABLE = "classes"  # every class, each message given its likeliest one
HINT = "Click a number in the confusion matrix to list its messages, then a message to see why it got its answer."
MAX_LISTED = 300  # rows a cell lists (the most confident answers first)


@dataclass(frozen=True)
class CellSource:
    """Where a confusion matrix's answers come from: per-message scores and texts, and the adapter that explains them."""

    scores: Scores
    texts: list[str] | None  # None: the run's data folder was prepared again since, or is gone
    class_names: tuple[str, ...]
    adapter: Path  # the run's adapter folder
    threshold: float = 0.5  # the threshold table's rule ...
    positive: int = 1  # ... for this class against the rest


@dataclass(frozen=True)
class Cell:
    table: str
    true: int
    predicted: int


def parse_cell(value: object, n_classes: int) -> Cell:
    """A cell from its name ("threshold:0:1"), checked against the table's size."""
    parts = value.split(":") if isinstance(value, str) else []
    size = {THRESHOLD_TABLE: 2, CLASSES_TABLE: n_classes}
    if len(parts) != 3 or parts[0] not in size or not all(p.isdigit() for p in parts[1:]) or max(int(parts[1]), int(parts[2])) >= size[parts[0]]:
        raise gr.Error("click a number in the confusion matrix to list its messages", duration=5)
    return Cell(parts[0], int(parts[1]), int(parts[2]))


def cell_listing(source: CellSource, cell: Cell) -> tuple[str, pd.DataFrame | None]:
    """A sentence on the cell and its messages (answer first, the message last), the most confident answers first."""
    names, scores = source.class_names, source.scores
    if cell.table == THRESHOLD_TABLE:
        chosen = names[source.positive]
        rest = names[1 - source.positive] if len(names) == 2 else f"not {chosen}"
        sides = (rest, chosen)
        indices = cell_messages(scores, cell.true, cell.predicted, source.threshold, source.positive)
        column, rule = f"P({chosen})", f" at threshold {source.threshold:.2f}"
    else:
        sides, rule, column = names, "", "P(answer)"
        indices = cell_messages(scores, cell.true, cell.predicted)
    which = "right" if cell.true == cell.predicted else "wrong"
    said = f"**{plural(len(indices), 'message')}** of class {sides[cell.true]} answered {sides[cell.predicted]}{rule} ({which})."
    if source.texts is None:
        return said + " Their texts are not shown: the run's data was prepared again since (or is gone).", None
    rows = []
    for index in indices[:MAX_LISTED]:
        row = scores.probabilities[index]
        answer = answered(row, source.positive, source.threshold) if cell.table == THRESHOLD_TABLE else max(range(len(row)), key=row.__getitem__)
        p = row[source.positive] if cell.table == THRESHOLD_TABLE else row[answer]
        rows.append({"true": names[scores.labels[index]], "answer": names[answer], column: round(p, 3), "message": source.texts[index]})
    more = f" The {MAX_LISTED} most confident are listed." if len(indices) > MAX_LISTED else ""
    hint = " Click a message to see why it got its answer." if rows else ""
    return said + more + hint, pd.DataFrame(rows, columns=["true", "answer", column, "message"])


def answered(row: Sequence[float], positive: int, threshold: float) -> int:
    """The one-vs-rest answer: `positive` at or over the threshold, else the likeliest other class (as engine.evaluate.mistakes)."""
    if row[positive] >= threshold:
        return positive
    return max((c for c in range(len(row)) if c != positive), key=row.__getitem__)


def explain_message(lab: Lab, adapter: Path, message: object) -> tuple[str, str, str]:
    """Why this answer, for a listed message, by the run's adapter: where it comes from, the heat map, the words."""
    if not isinstance(message, str) or not message.strip():
        raise gr.Error("click a message in the list to see why it got its answer", duration=5)
    if not (adapter / "adapter.safetensors").is_file():
        raise gr.Error("this run has saved no adapter yet: it saves one at its first loss estimate", duration=5)
    record = read_record(adapter.parent) or {}
    step = record.get("checkpoint_step", record.get("steps"))  # a running run's last checkpoint; a closed record's final step
    with lab.classify_lock:
        heat, bars = explanation_html(lab.classifier_at(adapter), message)
    saved = f"the adapter saved at step {step}" if step is not None else "the run's adapter"
    return f"**Why this answer?** As {saved} reads the message:", heat, bars


def build_reasons(lab: Lab, prefix: str, confusion: gr.HTML, source: Callable[..., CellSource], inputs: Sequence[gr.components.Component]) -> None:
    """Below a confusion matrix: the clicked cell's messages and a clicked message's explanation, wired to the
    matrix's clicks. `source(*inputs)` says where the matrix's answers come from."""
    with gr.Accordion("Messages of a cell, and why they got their answer", open=False, elem_id=f"{prefix}-reasons") as panel:
        note = gr.Markdown(HINT, elem_id=f"{prefix}-cell-note")
        messages = gr.Dataframe(
            headers=["true", "answer", "P", "message"],
            interactive=False,
            wrap=True,
            max_height=320,
            column_widths=["12%", "12%", "10%", "66%"],
            elem_id=f"{prefix}-cell-messages",
        )
        why = gr.Markdown(elem_id=f"{prefix}-why-note")
        heat = gr.HTML(elem_id=f"{prefix}-why-heat")
        bars = gr.HTML(elem_id=f"{prefix}-why-words")

    def pick(evt: gr.EventData, *values: Any) -> tuple[Any, ...]:
        found = source(*values)
        cell = parse_cell((getattr(evt, "_data", None) or {}).get("cell"), len(found.class_names))
        said, frame = cell_listing(found, cell)
        return said, frame, gr.Accordion(open=True), "", "", ""

    def explain(evt: gr.SelectData, *values: Any) -> tuple[str, str, str]:
        row = evt.row_value or []
        return explain_message(lab, source(*values).adapter, row[-1] if row else None)

    # Private: the click's cell and the row come from the page (event data), which an API call cannot send.
    # Named, so that they never take a public event's name (Classify's /explain).
    confusion.click(pick, list(inputs), [note, messages, panel, why, heat, bars], api_name=f"{prefix}_cell", api_visibility="private", show_progress="hidden")
    messages.select(
        explain, list(inputs), [why, heat, bars], api_name=f"{prefix}_why", api_visibility="private", concurrency_id="classify", concurrency_limit=1
    )
