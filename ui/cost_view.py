"""What a run, or a grid, will cost before Start: one line beside Start on the Train tab, one under a
grid's preview on the Runs tab, updated as the settings change.

The figures are the engine's (engine/runs/cost.py): this machine's calibration for the model's shape,
and arithmetic. The first estimate for a shape measures the machine in a short subprocess (seconds;
this process does no tensor math), the line saying "measuring this machine..." meanwhile; every later
one reads the cached calibration at once.
"""

from collections.abc import Iterator, Sequence
from typing import Any

import gradio as gr

from engine.config import RunConfig
from engine.errors import ConfigError, LoRALabError
from engine.estimate import Estimate, duration_words, gigabytes
from engine.runs.cost import check_fits, grid_cost, run_cost
from ui.controls import Controls, ControlWidgets, run_config
from ui.lab import Lab
from ui.views import plural

MEASURING = "Measuring this machine (once per model size; a few seconds) ..."
DEVICE_WORDS = {"cpu": "CPU", "cuda": "GPU", "mps": "Apple GPU"}


def device_words(device: str) -> str:
    return DEVICE_WORDS.get(device.partition(":")[0], device)


def run_words(cost: Estimate) -> str:
    """ "About 6 min on this machine (CPU), peak memory 1.1 GB (about 1 min an epoch)."""
    epoch = f" ({duration_words(cost.epoch_s)} an epoch)" if cost.epochs > 1 else ""
    return f"{duration_words(cost.total_s).capitalize()} on this machine ({device_words(cost.device)}), peak memory {gigabytes(cost.memory.total)}{epoch}."


def grid_words(runs: int, seconds: float, workers: int) -> str:
    """ "15 runs, about 42 min on 2 workers."""
    return f"{plural(runs, 'run')}, {duration_words(seconds)} on {plural(workers, 'worker')}."


class CostView:
    """The two lines' handlers over the app's Lab: its settings (device, data) and its workers."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab

    def _workers(self) -> tuple[int, int | None]:
        """How many runs train at once, and the CPU threads each has (None: the default, or a GPU)."""
        slots = self.lab.scheduler.workers.slots
        cores = getattr(slots[0], "cores", None) if slots else None
        return max(1, len(slots)), len(cores) if cores else None

    def _measured(self, configs: Sequence[RunConfig], threads: int | None) -> Iterator[str]:
        """Yields MEASURING while a model shape in `configs` is measured for the first time."""
        missing = [cfg for cfg in configs if run_cost(cfg, "cached", threads=threads) is None]
        if missing:
            yield MEASURING
            for cfg in missing:
                run_cost(cfg, "subprocess", threads=threads)

    def run_line(self, **controls: Any) -> Iterator[str]:
        """The Train tab's line for the Model & LoRA settings."""
        _, threads = self._workers()
        try:
            cfg = run_config(self.lab.settings, Controls(**controls))
            yield from self._measured([cfg], threads)
            cost = run_cost(cfg, "cached", threads=threads)
        except (LoRALabError, RuntimeError) as error:
            yield f"No estimate for these settings: {error}"
            return
        assert cost is not None  # measured just now
        line = run_words(cost)
        if cost.device == "cpu":  # a GPU's free memory is the worker's to ask: this process never initialises CUDA
            try:
                check_fits(cfg, cost.device, cost.precision)
            except ConfigError as refused:
                line += f" **It will be refused:** {refused}"
        yield line

    def grid_line(
        self, ranks: Sequence[Any], alphas: str, scalings: Sequence[str], lrs: str, presets: Sequence[str], layers: Sequence[str], seeds: str, **controls: Any
    ) -> Iterator[str]:
        """The Runs tab's line for a grid over the Model & LoRA settings."""
        from ui.runs_tab import grid_of  # the Runs tab builds this view: imported when called

        workers, threads = self._workers()
        try:
            base = run_config(self.lab.settings, Controls(**controls))
            configs = [cfg for _, cfg in grid_of(ranks, alphas, scalings, lrs, presets, layers, seeds).expand(base)]
            yield from self._measured(configs, threads)
            seconds = grid_cost(configs, workers, threads=threads)
        except (LoRALabError, RuntimeError):
            yield ""  # the preview beside it says what is wrong
            return
        yield grid_words(len(configs), seconds or 0.0, workers)


def build_cost_line(view: CostView, demo: gr.Blocks, controls: ControlWidgets, line: gr.Markdown) -> None:
    """Keep `line` (the Train tab's) saying what the Model & LoRA settings will cost."""
    gr.on(
        [demo.load] + [widget.change for widget in controls.inputs()],
        view.run_line,
        inputs_kwargs=controls.by_name(),
        outputs=line,
        api_name="estimate",
        show_progress="hidden",
        trigger_mode="always_last",
    )


def build_grid_cost_line(view: CostView, demo: gr.Blocks, controls: ControlWidgets, grid_fields: Sequence[Any], line: gr.Markdown) -> None:
    """Keep `line` (under the Runs tab's grid preview) saying what the grid will cost."""
    names = ("ranks", "alphas", "scalings", "lrs", "presets", "layers", "seeds")
    gr.on(
        [demo.load] + [field.change for field in grid_fields] + [widget.change for widget in controls.inputs()],
        view.grid_line,
        inputs_kwargs={**dict(zip(names, grid_fields, strict=True)), **controls.by_name()},
        outputs=line,
        api_name="grid_estimate",
        show_progress="hidden",
        trigger_mode="always_last",
    )
