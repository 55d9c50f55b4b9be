"""Pictures of what LoRA learned: a heat map of layers × kinds, each layer's spectrum, and how the updates grew.

The numbers come from engine.anatomy (a saved adapter, or a run record's growth points); these only draw them.
Figures are matplotlib Figures of their own (no pyplot: no global state shared between sessions).
"""

import html
import math
from collections.abc import Sequence
from typing import Any

import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from engine.anatomy import ENERGY_SHARE, KIND_WORDS, LayerAnatomy, layers_of_point
from ui.views import PALETTE, rgba

MEASURES: dict[str, str] = {  # what the heat map's colour says, in words a visitor reads
    "relative": "Size of the change, next to the layer's own weights (‖ΔW‖ / ‖W‖)",
    "norm": "Size of the change (‖ΔW‖)",
    "effective_rank": f"Directions it uses ({100 * ENERGY_SHARE:.0f}% of the change)",
}
KIND_COLORS = {words: PALETTE[i] for i, words in enumerate(KIND_WORDS.values())}
HEAT_RGB = (88, 24, 140)
GROWTH_Y = "mean change, % of weights"  # the mean over the blocks; short: a y title longer than the plot pushes its title out of view
SAVED = "saved"  # the moment choice for the adapter as saved last
BEST = "best"  # the moment choice for the run's best adapter, where it is not also its last


def measure_of(layer: LayerAnatomy, measure: str) -> float | None:
    value = getattr(layer, measure)
    return None if value is None else float(value)


def shown(value: float | None, measure: str) -> str:
    if value is None:
        return "–"
    if measure == "relative":
        return f"{100 * value:.2f}%"
    if measure == "effective_rank":
        return f"{value:.0f}"
    return f"{value:.3g}"


def heat_map_html(layers: Sequence[LayerAnatomy], measure: str, n_blocks: int) -> str:
    """One row per block (and one for the head), one column per kind of layer; a layer LoRA did not adapt is blank."""
    kinds = [kind for kind in KIND_WORDS if kind != "score" and any(layer.kind == kind for layer in layers)]
    by_place = {(layer.block, layer.kind): layer for layer in layers}
    values = [v for layer in layers if (v := measure_of(layer, measure)) is not None]
    top = max(values, default=0.0) or 1.0
    head = "".join(f"<th scope='col'>{html.escape(KIND_WORDS[kind])}</th>" for kind in kinds)
    rows = [
        f"<tr><th scope='row'>block {block}</th>{''.join(_cell(by_place.get((block, kind)), measure, top) for kind in kinds)}</tr>" for block in range(n_blocks)
    ]
    if (None, "score") in by_place:
        rows.append(f"<tr><th scope='row'>head</th>{_cell(by_place[(None, 'score')], measure, top, span=max(1, len(kinds)))}</tr>")
    caption = html.escape(MEASURES[measure]) + ": darker is more."
    return (
        "<div style='overflow-x:auto'><table class='anatomy-heat' style='border-collapse:collapse;font-size:0.9em;font-variant-numeric:tabular-nums'>"
        f"<caption style='caption-side:top;text-align:left;padding-bottom:4px'>{caption}</caption>"
        f"<tr><th></th>{head}</tr>{''.join(rows)}</table></div>"
    )


def _cell(layer: LayerAnatomy | None, measure: str, top: float, span: int = 1) -> str:
    colspan = f" colspan='{span}'" if span > 1 else ""
    if layer is None:
        return f"<td{colspan} style='padding:4px 10px;color:#999;text-align:center'>·</td>"
    value = measure_of(layer, measure)
    strength = 0.05 + 0.85 * (value or 0.0) / top
    ink = "white" if strength > 0.55 else "inherit"
    relative = f"{100 * layer.relative:.2f}% of the layer's weights, " if layer.relative is not None else ""
    tip = f"{layer.name}: ‖ΔW‖ = {layer.norm:.3g}, {relative}{layer.effective_rank} of {len(layer.singular_values)} directions hold {100 * ENERGY_SHARE:.0f}%"
    return (
        f"<td{colspan} data-layer='{html.escape(layer.name)}' title='{html.escape(tip)}' "
        f"style='background:{rgba(HEAT_RGB, strength)};color:{ink};padding:4px 10px;text-align:center;border:1px solid rgba(128,128,128,0.2)'>"
        f"{shown(value, measure)}</td>"
    )


def spectra_figure(layers: Sequence[LayerAnatomy], n_blocks: int, complete: bool) -> Figure:
    """Each layer's singular values, largest first: one panel per kind, one line per block (darker: earlier)."""
    kinds = [kind for kind in KIND_WORDS if any(layer.kind == kind for layer in layers)]
    columns = min(4, len(kinds))
    rows = -(-len(kinds) // columns)
    figure = Figure(figsize=(2.6 * columns + 0.6, 2.3 * rows + 0.5), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False)
    shades = colormaps["viridis"]
    for axis, kind in zip(axes.flat, kinds, strict=False):
        for layer in (layer for layer in layers if layer.kind == kind):
            values = layer.singular_values
            shade = shades(0.0 if layer.block is None else layer.block / max(1, n_blocks - 1))
            axis.plot(range(1, len(values) + 1), values, marker="o", markersize=2.5, linewidth=1.2, color=shade)
        axis.set_title(KIND_WORDS[kind], fontsize=9)
        axis.tick_params(labelsize=7)
        axis.set_ylim(bottom=0)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # directions are counted: no direction 2.5
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(kinds) :]:
        axis.set_visible(False)
    for axis in axes[:, 0]:
        axis.set_ylabel("strength", fontsize=8)
    for axis in axes[-1, :]:
        axis.set_xlabel("direction", fontsize=8)
    which = "every direction" if complete else "the largest directions the run recorded"
    figure.suptitle(f"Each layer's spectrum ({which}): one line per block, dark first, yellow last", fontsize=9)
    return figure


def growth_frame(points: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """The size of the change by kind of layer at each point the run recorded: its mean over the blocks, in % of the layers' weights."""
    rows = []
    for point in points:
        by_kind: dict[str, list[float]] = {}
        for layer in layers_of_point(point["layers"]):
            if layer.relative is not None:
                by_kind.setdefault(layer.kind_words, []).append(100 * layer.relative)
        rows += [{"step": int(point["steps"]), GROWTH_Y: sum(v) / len(v), "layers": kind} for kind, v in by_kind.items()]
    # Every kind is named in every frame (a kind without points by one empty row): the plot keeps the series of the first frame it draws.
    first = rows[0]["step"] if rows else 0
    rows += [{"step": first, GROWTH_Y: math.nan, "layers": kind} for kind in KIND_COLORS if kind not in {row["layers"] for row in rows}]
    return pd.DataFrame(rows).sort_values(["layers", "step"], key=lambda c: c.map(list(KIND_COLORS).index) if c.name == "layers" else c)


def moment_choices(points: Sequence[dict[str, Any]], saved_step: int | None, best_step: int | None = None) -> list[tuple[str, str]]:
    """The moments the heat map can show: the best adapter (where the run kept one apart from its last), the
    adapter as saved last, then each point the run recorded."""
    saved = f"as saved (after step {saved_step})" if saved_step else "as saved"
    best = [(f"best adapter (step {best_step}): what Classify uses", BEST)] if best_step is not None else []
    return best + [(saved, SAVED)] + [(f"after step {int(p['steps'])}", str(int(p["steps"]))) for p in points]
