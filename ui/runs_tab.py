"""The Runs tab: every run's record, the loss curves of chosen runs overlaid, and the rank sweep.

The sweep trains the Model & LoRA controls once per chosen rank, one run after another, in the app's
one training job (watch each on the Train tab; Stop ends it).
"""

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from engine.errors import LoRALabError
from engine.history import RunSummary, list_runs
from engine.job import JobSnapshot
from engine.run import RECORD_FILE
from engine.sweep import DEFAULT_RANKS, SweepPoint
from ui.controls import Controls, run_config
from ui.guards import user_error
from ui.lab import Lab
from ui.model_tab import ControlWidgets
from ui.views import TOAST_SECONDS, percent, series_colors

SWEEP_RANK_CHOICES = (1, 2, 4, 8, 16, 32, 64)


def all_runs(root: Path) -> list[tuple[str, RunSummary]]:
    """(shown name, summary) of every run under `root`: runs/<date-time> and the runs of each sweep folder."""
    root = Path(root)
    found = [(run.name, run) for run in list_runs(root)]
    if root.is_dir():
        for folder in sorted(root.iterdir()):
            if folder.is_dir() and not (folder / RECORD_FILE).exists():
                found += [(f"{folder.name}/{run.name}", run) for run in list_runs(folder)]
    return sorted(found, key=lambda item: (item[1].created, item[0]), reverse=True)


HISTORY_COLUMNS = [
    "run",
    "test acc. (%)",
    "validation acc. (%)",
    "stopped",
    "rank",
    "alpha",
    "trainable",
    "steps",
    "train time (s)",
    "model",
    "preset",
    "device",
    "created",
]  # the answers first: a narrow window still shows how each run did


def history_frame(runs: Sequence[tuple[str, RunSummary]]) -> pd.DataFrame | None:
    if not runs:
        return None
    rows = [
        {
            "run": name,
            "test acc. (%)": percent(run.test_accuracy),
            "validation acc. (%)": percent(run.validation_accuracy),
            "stopped": "yes" if run.stopped else "",
            "rank": run.rank,
            "alpha": run.alpha,
            "trainable": f"{run.trainable:,}" if run.trainable else "",
            "steps": run.steps,
            "train time (s)": round(run.train_seconds, 1),
            "model": Path(run.model).name,
            "preset": run.preset or "",
            "device": run.device,
            "created": run.created.replace("T", " ").split("+")[0],
        }
        for name, run in runs
    ]
    return pd.DataFrame(rows, columns=HISTORY_COLUMNS)


def overlay_frame(runs: Sequence[tuple[str, RunSummary]], chosen: Sequence[str]) -> pd.DataFrame | None:
    """Long format for one LinePlot: train and validation loss of every chosen run, against steps."""
    picked = [(name, run) for name, run in runs if name in chosen]
    short = [name.rsplit("/", 1)[-1] for name, _ in picked]  # "rank-2", not "sweep-.../rank-2": legends cut long names
    labels = short if len(set(short)) == len(short) else [name for name, _ in picked]
    rows = []
    for label, (_, run) in zip(labels, picked, strict=True):
        for point in run.losses:
            step = int(point["step"]) + 1  # the book counts evaluations from step 0; the Train tab counts steps taken
            rows.append({"step": step, "loss": float(point["train_loss"]), "run": f"{label} · train"})
            rows.append({"step": step, "loss": float(point["validation_loss"]), "run": f"{label} · validation"})
    return pd.DataFrame(rows) if rows else None


EMPTY_OVERLAY = pd.DataFrame({"step": pd.Series(dtype="int64"), "loss": pd.Series(dtype="float64"), "run": pd.Series(dtype="object")})


def sweep_frame(points: Sequence[SweepPoint]) -> pd.DataFrame | None:
    if not points:
        return None
    return pd.DataFrame(
        {
            "rank": [str(p.rank) for p in points],
            "trainable parameters": [p.trainable for p in points],
            "test accuracy (%)": [percent(p.test_accuracy) for p in points],
            "training time (s)": [round(p.train_seconds, 2) for p in points],
            "folder": [str(p.out_dir) for p in points],
        }
    )


def sweep_status(snapshot: JobSnapshot) -> str:
    if not snapshot.sweep_ranks:
        return (
            "No sweep yet: choose ranks and press Start the sweep."
            if not snapshot.running
            else f"A single training run is going ({snapshot.status}); a sweep can start after it."
        )
    ranks = ", ".join(map(str, snapshot.sweep_ranks))
    return f"Sweep over ranks {ranks}: {len(snapshot.sweep)} of {len(snapshot.sweep_ranks)} runs finished. {snapshot.status}"


def sweep_dir(root: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    candidates = (Path(root) / (f"sweep-{stamp}" if n == 1 else f"sweep-{stamp}-{n}") for n in range(1, 1000))
    return next(path for path in candidates if not path.exists())


class RunsTab:
    """The Runs tab's handlers over the app's Lab."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab

    @property
    def out(self) -> Path:
        return Path(self.lab.settings.out)

    def history(self) -> pd.DataFrame | None:
        return history_frame(all_runs(self.out))

    def overlay_choices(self) -> gr.Dropdown:
        """Runs with loss curves; the newest two chosen (the picker's choices, so not a plain value)."""
        names = [name for name, run in all_runs(self.out) if run.losses]
        return gr.Dropdown(choices=names, value=names[:2], multiselect=True, allow_custom_value=True)

    def overlay(self, chosen: Sequence[str] | None) -> pd.DataFrame:
        """The chosen runs' loss curves; an empty frame (not None) when none is chosen.

        A plot that goes back to None after drawing leaves the browser erring as it is taken down,
        so the page always gets a frame, and a colour map after it (`overlay_colors`).
        """
        if chosen is not None and not isinstance(chosen, list | tuple):
            raise gr.Error("choose runs from the list")
        frame = overlay_frame(all_runs(self.out), list(chosen or ()))
        return EMPTY_OVERLAY if frame is None else frame

    def overlay_colors(self, chosen: Sequence[str] | None) -> gr.LinePlot:
        """A colour per series of the chosen runs, sent after their frame: a new colour map makes the plot
        draw itself afresh with the frame it holds, so its legend follows the runs (see PALETTE's note)."""
        return gr.LinePlot(color_map=series_colors(self.overlay(chosen)["run"]))

    def start_sweep(self, ranks: Sequence[Any], **controls: Any) -> tuple[Any, ...]:
        """Train the Model & LoRA settings once per chosen rank, one after another, in the app's job."""
        try:
            chosen = sorted({int(rank) for rank in ranks or ()})
        except (TypeError, ValueError):
            raise gr.Error("ranks must be whole numbers: tick them in the list") from None
        if not chosen:
            raise gr.Error("tick at least one rank for the sweep")
        settings = Controls(**controls)  # Gradio sends the controls by name: they name the API's parameters
        self.lab.check_model(settings.model)
        try:
            cfg = run_config(self.lab.settings, settings, sweep_dir(self.out))
        except LoRALabError as error:
            raise user_error(error) from None
        self.lab.check_batch_size(cfg.train.batch_size)
        if not self.lab.job.start(cfg, chosen):
            gr.Info("A training run or sweep is already going: showing it. Stop it first to start a sweep.", duration=TOAST_SECONDS)
        return self.poll_sweep()

    def poll_sweep(self) -> tuple[Any, ...]:
        snapshot = self.lab.job.snapshot()
        table = sweep_frame(snapshot.sweep)
        done = None if snapshot.running else table  # the plots show a finished (or stopped) sweep: see PALETTE's note
        colors = series_colors(done["rank"]) if done is not None else None

        def plot(x: str) -> gr.ScatterPlot:  # axes from 0 with some room, so no point sits on an edge
            return gr.ScatterPlot(value=done, color_map=colors, x_lim=[0, 1.1 * float(done[x].max()) or 1] if done is not None else None)

        shown = table.style.format({"trainable parameters": "{:,}"}).hide(axis="index") if table is not None else None  # 2,370 as everywhere else
        return sweep_status(snapshot), shown, plot("trainable parameters"), plot("training time (s)"), gr.Timer(active=snapshot.running)

    def stop_sweep(self) -> str:
        return "stopping after the current step..." if self.lab.job.stop() else self.lab.job.snapshot().status


def build_runs_tab(runs: RunsTab, demo: gr.Blocks, controls: ControlWidgets) -> None:
    """The Runs tab, wired; its rank sweep trains `controls`, and a (re)loaded page re-attaches to a sweep."""
    with gr.Tab("Runs") as tab:
        refresh = gr.Button("Refresh", size="sm", elem_id="runs-refresh")
        history = gr.Dataframe(
            headers=HISTORY_COLUMNS,
            label="Run history (each run's folder is under the runs folder)",
            interactive=False,
            max_height=300,
            elem_id="run-history",
        )
        chosen = gr.Dropdown([], multiselect=True, label="Runs to compare", allow_custom_value=True, elem_id="overlay-runs")  # choices come on refresh
        overlay = gr.LinePlot(x="step", y="loss", color="run", title="Loss curves of the chosen runs (estimated every N steps)", height=300, elem_id="overlay")
        gr.Markdown(
            "### Rank sweep\nTrain the settings of *Model & LoRA* once per rank, one run after another (watch each on the Train tab), "
            "then compare test accuracy against the number of trainable parameters and the time taken."
        )
        with gr.Row():
            ranks = gr.CheckboxGroup(list(SWEEP_RANK_CHOICES), value=list(DEFAULT_RANKS), label="Ranks", elem_id="sweep-ranks", scale=3)
            start = gr.Button("Start the sweep", variant="primary", elem_id="sweep-start", scale=1)
            stop = gr.Button("Stop the sweep", variant="stop", elem_id="sweep-stop", scale=1)
        status = gr.Textbox(label="Sweep", interactive=False, elem_id="sweep-status")
        with gr.Row():
            accuracy_axis = dict(y="test accuracy (%)", color="rank", y_lim=[0, 105], height=280)
            by_params = gr.ScatterPlot(x="trainable parameters", title="Test accuracy vs trainable parameters", elem_id="sweep-params", **accuracy_axis)
            by_time = gr.ScatterPlot(x="training time (s)", title="Test accuracy vs training time", elem_id="sweep-time", **accuracy_axis)
        table = gr.Dataframe(
            headers=["rank", "trainable parameters", "test accuracy (%)", "training time (s)", "folder"],
            label="Sweep results",
            interactive=False,
            elem_id="sweep-table",
        )
        timer = gr.Timer(1.0, active=False)
    sweep_view = [status, table, by_params, by_time, timer]
    gr.on([tab.select, refresh.click], runs.history, None, history, api_name="run_history", show_progress="hidden").then(
        runs.overlay_choices, None, chosen, api_name="overlay_runs", show_progress="hidden"
    )
    chosen.change(runs.overlay, chosen, overlay, api_name="overlay", show_progress="hidden").then(
        runs.overlay_colors, chosen, overlay, api_name="overlay_colors", show_progress="hidden"
    )
    start.click(runs.start_sweep, inputs_kwargs={"ranks": ranks, **controls.by_name()}, outputs=sweep_view, api_name="start_sweep", show_progress="hidden")
    timer.tick(runs.poll_sweep, None, sweep_view, api_name="poll_sweep", show_progress="hidden", concurrency_limit=None)
    stop.click(runs.stop_sweep, None, status, api_name="stop_sweep", concurrency_limit=None)
    gr.on([demo.load, tab.select], runs.poll_sweep, None, sweep_view, api_name="attach_sweep", show_progress="hidden", concurrency_limit=None)
