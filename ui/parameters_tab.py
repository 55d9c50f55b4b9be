"""The Parameters tab: how many parameters LoRA trains for the chosen model, rank and layers (no weights needed)."""

from collections.abc import Sequence
from pathlib import Path

import gradio as gr
import pandas as pd

from engine.config import LoRAConfig
from engine.errors import LoRALabError
from engine.params import param_summary
from ui.controls import ControlWidgets, as_int
from ui.guards import user_error
from ui.lab import Lab


class ParametersTab:
    """The Parameters tab's handler over the app's Lab."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab

    def parameters(self, model: str, rank: float, targets: Sequence[str], train_head: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Frozen vs trainable counts for these settings, computed without weights."""
        self.lab.check_model(model)
        try:
            summary = param_summary(model, LoRAConfig(rank=as_int(rank), targets=tuple(targets or ()), train_head=bool(train_head)))
        except LoRALabError as error:
            raise user_error(error) from None
        frozen = summary.total_before_freeze - summary.trainable_after_freeze
        chart = pd.DataFrame(
            {
                "parameters": ["total (before freezing)", "frozen", "trainable with LoRA"],
                "millions": [summary.total_before_freeze / 1e6, frozen / 1e6, summary.trainable / 1e6],
            }
        )
        table = pd.DataFrame(
            [
                ("total parameters (before freezing)", f"{summary.total_before_freeze:,}"),
                ("frozen", f"{frozen:,}"),
                ("LoRA trainable", f"{summary.trainable_lora:,}"),
                ("trainable in all (LoRA + head if trained)", f"{summary.trainable:,}"),
                ("ratio", f"{summary.ratio:,.0f}x fewer"),
                ("adapter file", f"{summary.adapter_megabytes:,.2f} MB"),
                ("base model", f"{summary.model_megabytes:,.1f} MB"),
            ],
            columns=["", Path(model).name],  # a size name, or the local folder's name
        )
        return chart, table


def build_parameters_tab(parameters: ParametersTab, demo: gr.Blocks, controls: ControlWidgets) -> None:
    """The Parameters tab, refreshed on page load and whenever the model, rank or layers change."""
    with gr.Tab("Parameters"):
        gr.Markdown("How many parameters LoRA trains, for the model and the rank and layers chosen on *Model & LoRA*: no weights needed.")
        with gr.Row():
            param_chart = gr.BarPlot(
                x="parameters",
                y="millions",
                sort=["total (before freezing)", "frozen", "trainable with LoRA"],
                title="Parameters (millions)",
                height=300,
                elem_id="param-chart",
            )
            param_table = gr.Dataframe(label="Counts", interactive=False, elem_id="param-table")

    param_inputs = [controls.model, controls.rank, controls.targets, controls.train_head]
    gr.on(
        [demo.load] + [c.change for c in param_inputs],
        parameters.parameters,
        param_inputs,
        [param_chart, param_table],
        api_name="parameters",
        show_progress="hidden",
    )
