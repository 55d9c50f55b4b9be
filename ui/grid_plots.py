"""A grid's results as pictures: a heat map of test accuracy over two settings, and accuracy against
trainable parameters and training time with the spread across seeds.

Drawn with matplotlib Figures of their own (no pyplot: no global state shared between sessions);
the numbers come from engine.runs.compare.
"""

from collections.abc import Sequence

from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

from engine.runs.compare import GridPoint, summarise
from ui.views import short_count

SETTING_WORDS = {"rank": "rank", "alpha": "alpha", "scaling": "scaling", "lr": "learning rate", "preset": "preset", "targets": "layers", "seed": "seed"}


def heat_map(points: Sequence[GridPoint], x: str, y: str) -> Figure:
    """Mean test accuracy per (x, y) cell, every other setting averaged; each cell says its mean, spread and count."""
    cells = summarise(points, (y, x))
    xs = list(dict.fromkeys(c.key[1] for c in sorted(cells, key=lambda c: _order(c.key[1]))))
    ys = list(dict.fromkeys(c.key[0] for c in sorted(cells, key=lambda c: _order(c.key[0]))))
    grid = [[None] * len(xs) for _ in ys]
    for cell in cells:
        grid[ys.index(cell.key[0])][xs.index(cell.key[1])] = cell
    figure = Figure(figsize=(max(4.5, 1.3 * len(xs) + 2), max(3.0, 0.8 * len(ys) + 1.6)), layout="constrained")
    axis = figure.subplots()
    values = [[100 * c.mean if c else float("nan") for c in row] for row in grid]
    lowest = min(100 * c.mean for c in cells)
    image = axis.imshow(values, cmap="viridis", aspect="auto", vmin=min(lowest, 99.0), vmax=100)  # colours spread over the range reached
    for i, row in enumerate(grid):
        for j, cell in enumerate(row):
            if cell is None:
                continue
            text = f"{100 * cell.mean:.1f}%" + (f"\n±{100 * cell.std:.1f} (n={cell.count})" if cell.count > 1 else "")
            axis.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if 100 * cell.mean < 0.5 * (image.norm.vmin + 100) else "black")
    axis.set_xticks(range(len(xs)), [_label(v) for v in xs])
    axis.set_yticks(range(len(ys)), [_label(v) for v in ys])
    axis.set_xlabel(SETTING_WORDS[x])
    axis.set_ylabel(SETTING_WORDS[y])
    axis.set_title("Test accuracy" + (" (mean ± spread over the other settings)" if any(c.count > 1 for c in cells) else ""), fontsize=10)
    figure.colorbar(image, ax=axis, label="test accuracy (%)")
    return figure


def accuracy_against_cost(points: Sequence[GridPoint], by: Sequence[str]) -> Figure:
    """Test accuracy against trainable parameters and against training time, one point per setting group (seeds averaged, bars: their spread)."""
    groups = summarise(points, by)
    figure = Figure(figsize=(8, 3.6), layout="constrained")
    left, right = figure.subplots(1, 2, sharey=True)
    for group in groups:
        label = ", ".join(f"{SETTING_WORDS[name]} {_label(value)}" for name, value in zip(by, group.key, strict=True)) or "all runs"
        spread = 100 * group.std if group.count > 1 else None
        if group.trainable is not None:
            left.errorbar(group.trainable, 100 * group.mean, yerr=spread, fmt="o", capsize=3, label=label)
        right.errorbar(group.seconds, 100 * group.mean, yerr=spread, fmt="o", capsize=3)
    left.set_xscale("log")
    counts = sorted({g.trainable for g in groups if g.trainable is not None})
    if counts and len(counts) <= 8:  # a tick at each count the grid trained: log ticks within one decade crowd each other
        left.set_xticks(counts, [short_count(c) for c in counts])
    else:
        left.xaxis.set_major_formatter(FuncFormatter(lambda value, _: short_count(value)))
    left.xaxis.set_minor_formatter(NullFormatter())
    right.xaxis.set_major_locator(MaxNLocator(4))
    right.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.3g}"))  # no offset: "+1.07" beside the axis reads as a value
    for axis in (left, right):
        axis.margins(x=0.2)
        axis.grid(alpha=0.3)
    left.set_xlabel("trainable parameters (log scale)")
    right.set_xlabel("training time (s)")
    left.set_ylabel("test accuracy (%)")
    seeds = max((g.count for g in groups), default=1)
    figure.suptitle("Accuracy against what it costs" + (f" (mean of {seeds} runs each; bars: their standard deviation)" if seeds > 1 else ""), fontsize=10)
    if len(groups) <= 12:
        left.legend(fontsize=7, loc="lower right")
    return figure


def _label(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _order(value: object) -> tuple[int, object]:
    return (0, value) if isinstance(value, int | float) else (1, str(value))
