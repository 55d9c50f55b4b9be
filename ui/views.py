"""Colours, a confusion-matrix table and small formatting shared by several tabs."""

import html
from collections.abc import Sequence

# A Gradio plot keeps the colour legend of the first value it draws: later values with new series
# (other runs, more ranks) would be drawn without lines or legend. Such plots get their new value,
# then a new colour map, which makes Gradio draw them afresh (a plot emptied to None and filled
# again also redraws, but leaves the browser erring when it is taken down).
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
HAM_RGB, SPAM_RGB = (31, 119, 180), (214, 39, 40)  # the Data tab's histogram colours
# "Why this answer?" speaks one colour code in all its views: red pushes towards the positive class (spam), blue away.
TOWARDS_RGB, AWAY_RGB = SPAM_RGB, HAM_RGB


TOAST_SECONDS = 6  # info and warning toasts go by themselves; errors stay until closed
# The narrowest a chart or table sharing a row may get: narrower screens (phones) give each the whole row.
HALF_ROW_PX = 320

# Words Gradio's own English lacks: after each event its screen-reader status line announced "common.complete".
GRADIO_WORDS = {"common.complete": "Done"}

# Toasts sit at the bottom right, away from the buttons they speak of (Start, Stop, Download: at the top).
APP_CSS = """
.toast-wrap { top: auto !important; bottom: var(--size-4) !important; }
/* Table cells wrap between words, never inside one: a column is at least as wide as its longest word
   (Gradio's break-word lets a narrow screen squeeze "alpha" to one letter a line); wide tables scroll sideways. */
.table-wrap span.wrap { word-break: normal; overflow-wrap: break-word; }
.example-message { white-space: normal; text-align: left; justify-content: flex-start; }  /* a whole message, on several lines */
@media (max-width: 640px) {
  /* A chart drawn as a picture keeps a readable size on a phone: it scrolls sideways instead of shrinking. */
  div.matplotlib.layout { overflow-x: auto; align-items: flex-start; }
  div.matplotlib.layout img { min-width: 600px; }
  .lora-picture { --lora-side: 96px; }  /* W, A and B drawn smaller: "+ s × x · A · B" fits one line */
}
"""


def text_last(columns: int, share: str) -> list[str]:
    """Column widths for a table whose last column holds long text: the others as wide as their content
    (never narrower than a word), the text a `share` of the table's width ("60%", or "240px"), where it wraps."""
    return ["auto"] * (columns - 1) + [share]


def series_colors(names: Sequence[str]) -> dict[str, str]:
    """A colour per series name, in order of first appearance (cycling through the palette)."""
    unique = list(dict.fromkeys(names))
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(unique)}


def rgba(rgb: tuple[int, int, int], alpha: float) -> str:
    return f"rgba({rgb[0]},{rgb[1]},{rgb[2]},{min(max(alpha, 0.0), 1.0):.2f})"


def plural(count: int, noun: str) -> str:
    """ "1 mistake", "2 mistakes", "1,045 messages"."""
    return f"{count:,} {noun}" if count == 1 else f"{count:,} {noun}s"


def short_count(count: float) -> str:
    """124,441,346 -> "124.4 M"; 2,666,528 -> "2.67 M"; 12,320 -> "12.3 k"."""
    for size, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if count >= size:
            value = count / size
            return f"{value:.3g} {unit}" if value < 100 else f"{value:,.0f} {unit}"
    return f"{count:,.0f}"


def percent(value: float | None) -> float | None:
    return None if value is None else round(100 * value, 2)


def confusion_html(confusion: list[list[int]], class_names: Sequence[str], caption: str, table: str | None = None) -> str:
    """A confusion matrix as an HTML table, cells shaded by their share of the row (the true class).

    With a `table` name each cell says which it is (data-cell="table:true:predicted"), so a click can list its messages (ui/errors_view.py).
    """
    head = "".join(f"<th>predicted {html.escape(name)}</th>" for name in class_names)
    body = []
    for true_index, row in enumerate(confusion):
        total = sum(row) or 1
        cells = []
        for predicted_index, count in enumerate(row):
            rgb = (44, 160, 44) if predicted_index == true_index else SPAM_RGB
            alpha = 0.12 + 0.6 * count / total
            pick = f" data-cell='{html.escape(table)}:{true_index}:{predicted_index}' title='list these messages'" if table else ""
            cursor = ";cursor:pointer;text-decoration:underline dotted" if table else ""
            cells.append(f"<td{pick} style='background:{rgba(rgb, alpha)};text-align:center;padding:8px 18px{cursor}'>{count}</td>")
        body.append(f"<tr><th style='text-align:right;padding-right:10px'>true {html.escape(class_names[true_index])}</th>{''.join(cells)}</tr>")
    return (
        "<div style='overflow-x:auto'><table class='confusion' style='border-collapse:collapse;font-size:1.05em'>"
        f"<caption style='caption-side:top;text-align:left'>{html.escape(caption)}</caption>"
        f"<tr><th></th>{head}</tr>{''.join(body)}</table></div>"
    )
