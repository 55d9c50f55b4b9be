"""The Parameters tab: how many parameters LoRA trains for the chosen model, rank and layers (no weights needed).

The contrast is the point: a few million trained weights beside a hundred million frozen ones. On a
linear scale the trained bar is a sliver, so the chart uses a logarithmic scale (each grid line ten
times the last) and breaks both down by kind of layer, with the counts written on the bars.
"""

import math
from collections.abc import Sequence
from pathlib import Path

import gradio as gr
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from engine.config import LoRAConfig
from engine.errors import LoRALabError
from engine.params import EMBEDDINGS, LAYER_NORMS, LayerTypeCounts, ParamSummary, param_breakdown, param_summary
from ui.controls import ControlWidgets, as_int
from ui.guards import user_error
from ui.lab import Lab
from ui.lora_picture import FROZEN, TRAINED, layer_label
from ui.views import short_count

BREAKDOWN_COLUMNS = ["kind of layer", "layers", "frozen", "trained"]


def trained(row: LayerTypeCounts) -> int:
    return row.lora + row.trained_as_is


def parameters_figure(summary: ParamSummary, breakdown: Sequence[LayerTypeCounts], model: str, frozen: int) -> Figure:
    """Frozen against trained weights on a log scale: for the whole model, then by kind of layer."""
    figure = Figure(figsize=(11, 4.6), layout="constrained")  # no pyplot: no global state shared between sessions
    whole, by_kind = figure.subplots(1, 2, width_ratios=[1, 1.6])
    bars = whole.barh(["trained", "frozen"], [summary.trainable, frozen], color=[TRAINED, FROZEN])
    whole.set_title(f"{model}: 1 weight in {summary.ratio:,.0f} is trained", fontsize=10)
    for bar, count in zip(bars, (summary.trainable, frozen), strict=True):
        whole.text(bar.get_width() * 1.15, bar.get_y() + bar.get_height() / 2, short_count(count), va="center", fontsize=9)
    kinds = list(reversed(breakdown))  # the first kind at the top
    positions = range(len(kinds))
    height = 0.38
    by_kind.barh([p + height / 2 for p in positions], [k.frozen or math.nan for k in kinds], height, color=FROZEN, label="frozen")
    trained_label = "trained (LoRA, and the head if ticked)"
    by_kind.barh([p - height / 2 for p in positions], [trained(k) or math.nan for k in kinds], height, color=TRAINED, label=trained_label)
    for position, kind in zip(positions, kinds, strict=True):
        if trained(kind):
            by_kind.text(trained(kind) * 1.15, position - height / 2, short_count(trained(kind)), va="center", fontsize=8)
    by_kind.set_yticks(list(positions), [layer_label(k.name) for k in kinds], fontsize=8)
    by_kind.set_title("By kind of layer (every block together)", fontsize=10, pad=24)
    by_kind.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=2, fontsize=8, frameon=False)
    largest = max(summary.total_before_freeze, 10)
    for axis in (whole, by_kind):
        axis.set_xscale("log")
        axis.set_xlim(1, largest * 60)  # room for the labels right of the longest bar
        axis.xaxis.set_major_formatter(FuncFormatter(lambda value, _: short_count(value)))
        axis.set_xlabel("weights (log scale: each grid line is 10 times the last)", fontsize=8)
        axis.grid(axis="x", alpha=0.3)
    return figure


def breakdown_frame(breakdown: Sequence[LayerTypeCounts]) -> pd.DataFrame:
    rows = [(layer_label(k.name), k.layers, f"{k.frozen:,}", f"{trained(k):,}") for k in breakdown]
    return pd.DataFrame(rows, columns=BREAKDOWN_COLUMNS)


class ParametersTab:
    """The Parameters tab's handler over the app's Lab."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab

    def parameters(self, model: str, rank: float, targets: Sequence[str], train_head: bool, method: str = "lora") -> tuple[Figure, pd.DataFrame, pd.DataFrame]:
        """Frozen vs trained counts for these settings and method, computed without weights: a chart, the totals, the split by kind of layer."""
        self.lab.check_model(model)
        try:
            lora = LoRAConfig(rank=as_int(rank), targets=tuple(targets or ()), train_head=bool(train_head))
            summary = param_summary(model, lora, method)
            breakdown = param_breakdown(model, lora, method=method)
        except LoRALabError as error:
            raise user_error(error) from None
        frozen = summary.total_before_freeze - summary.trainable_after_freeze
        table = pd.DataFrame(
            [
                ("total parameters (before freezing)", f"{summary.total_before_freeze:,}"),
                ("frozen", f"{frozen:,}"),
                ("LoRA trainable", f"{summary.trainable_lora:,}"),
                ("trainable in all (LoRA + head if trained)" if method == "lora" else f"trainable in all ({method})", f"{summary.trainable:,}"),
                ("ratio", f"{summary.ratio:,.0f}x fewer"),
                ("adapter file" if method == "lora" else "saved file (the retrained weights)", f"{summary.adapter_megabytes:,.2f} MB"),
                ("base model", f"{summary.model_megabytes:,.1f} MB"),
            ],
            columns=["", Path(model).name],  # a size name, or the local folder's name
        )
        return parameters_figure(summary, breakdown, Path(model).name, frozen), table, breakdown_frame(breakdown)


def build_parameters_tab(parameters: ParametersTab, demo: gr.Blocks, controls: ControlWidgets) -> None:
    """The Parameters tab, refreshed on page load and whenever the model, rank or layers change."""
    with gr.Tab("Parameters"):
        gr.Markdown(
            "How many weights LoRA trains, for the model, rank and layers chosen on *Model & LoRA* (no weights needed). "
            f"The frozen weights stay exactly as pretrained; only the red ones change. {EMBEDDINGS.capitalize()} and {LAYER_NORMS} are never adapted."
        )
        param_chart = gr.Plot(label="Frozen and trained weights", show_label=False, elem_id="param-chart")
        with gr.Row():
            param_table = gr.Dataframe(
                headers=["", "count"], label="Counts", interactive=False, wrap=True, column_widths=["60%", "auto"], elem_id="param-table", scale=2
            )
            breakdown = gr.Dataframe(
                headers=BREAKDOWN_COLUMNS,
                label="By kind of layer",
                interactive=False,
                wrap=True,
                column_widths=["45%", "auto", "auto", "auto"],
                elem_id="param-breakdown",
                scale=3,
            )

    param_inputs = [controls.model, controls.rank, controls.targets, controls.train_head, controls.method]
    gr.on(
        [demo.load] + [c.change for c in param_inputs],
        parameters.parameters,
        param_inputs,
        [param_chart, param_table, breakdown],
        api_name="parameters",
        show_progress="hidden",
        trigger_mode="always_last",
    )
