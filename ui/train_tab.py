"""The Train tab: start, watch and stop the app's one training job, live.

The job belongs to the app, not to a page: a 1 s timer polls it, so a reloaded page or a second
visitor re-attaches to the same run, and anyone can stop it.
"""

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from engine.errors import LoRALabError
from engine.job import JobSnapshot, LossRow, format_seconds
from engine.params import param_summary
from ui.controls import Controls, run_config
from ui.guards import user_error
from ui.lab import Lab
from ui.model_tab import ControlWidgets
from ui.views import TOAST_SECONDS, confusion_html

POLL_SECONDS = 1.0
MAX_BATCH_POINTS = 400  # each poll re-sends the whole plot frame: thin the per-step series of long runs
LOSS_COLORS = {"training batch": "#c7c7c7", "train": "#1f77b4", "validation": "#ff7f0e"}
SPLIT_NAMES = {"batch": "training batch", "train": "train", "validation": "validation"}
SCORE_COLORS = {"accuracy": "#1f77b4", "precision": "#ff7f0e", "recall": "#d62728", "F1": "#2ca02c"}
ACCURACY_COLORS = {"train": "#1f77b4", "validation": "#ff7f0e"}
BEFORE_TRAINING = "before training"
MAX_EPOCH_LABELS = 100  # the accuracy plot's categories in order (before training, epoch 1, ...); later ones follow


@dataclass(frozen=True)
class TrainingView:
    """What the Train tab shows of a job; `view_values` orders it for the outputs."""

    status: str
    progress: str  # HTML progress bar
    loss: pd.DataFrame | None  # None, never an empty frame: an empty first value breaks a LinePlot's axes
    live_confusion: str  # HTML: the full validation set's confusion matrix at the latest loss estimate
    live_scores: pd.DataFrame | None  # accuracy, precision, recall, F1 on the full validation set, by step
    accuracy: pd.DataFrame | None
    baseline: pd.DataFrame | None
    final: pd.DataFrame | None
    book_plot: str | None
    files: list[str] | None


def loss_frame(rows: Sequence[LossRow]) -> pd.DataFrame | None:
    """The loss plots' frame: every training batch (thinned in long runs) and the estimates.

    A Gradio plot takes its colours and legend from the series of the first frame it draws, then
    updates the data in place: a series missing from that frame is never drawn. The estimates come
    after the first batch, so every frame names all three series from the start, a series without a
    point yet by one row without a loss, which draws nothing.
    """
    if not rows:
        return None
    batch = [r for r in rows if r.split == "batch"]
    stride = max(1, -(-len(batch) // MAX_BATCH_POINTS))
    kept = set(batch[::stride] + batch[-1:])
    shown = [r for r in rows if r.split != "batch" or r in kept]
    present = {r.split for r in shown}
    missing = [LossRow(rows[0].step, rows[0].examples_seen, math.nan, split) for split in SPLIT_NAMES if split not in present]
    ordered = sorted([*shown, *missing], key=lambda r: list(SPLIT_NAMES).index(r.split))  # the legend's order
    return pd.DataFrame(
        {
            "step": [r.step for r in ordered],
            "examples seen": [r.examples_seen for r in ordered],
            "loss": [r.loss for r in ordered],
            "split": [SPLIT_NAMES[r.split] for r in ordered],
        }
    )


def live_views(snapshot: JobSnapshot) -> tuple[str, pd.DataFrame | None]:
    """The full validation set at the latest loss estimate (confusion matrix), and its scores at every estimate so far."""
    if not snapshot.live:
        off = snapshot.config is not None and not snapshot.config.train.live_metrics
        note = "Scoring the full validation set at each estimate is off for this run." if off else "The full validation set is scored at each loss estimate."
        return f"<div id='live-note'>{note}</div>", None
    names = snapshot.class_names
    latest = snapshot.live[-1]
    m = latest.metrics
    which = f"of {names[1]}" if len(names) == 2 else "macro-averaged over the classes"
    caption = (
        f"Full validation set ({m.count} messages) after step {latest.step + 1}: accuracy {100 * m.accuracy:.1f}%; "
        f"precision {m.precision:.3f}, recall {m.recall:.3f}, F1 {m.f1:.3f} ({which})"
    )
    scores = pd.DataFrame(
        [
            {"step": point.step + 1, "score (%)": round(100 * value, 2), "metric": name}  # steps taken, as the loss plots
            for point in snapshot.live
            for name, value in (
                ("accuracy", point.metrics.accuracy),
                ("precision", point.metrics.precision),
                ("recall", point.metrics.recall),
                ("F1", point.metrics.f1),
            )
        ]
    )
    return confusion_html(m.confusion, names, caption), scores


def accuracy_frames(snapshot: JobSnapshot) -> tuple[pd.DataFrame | None, pd.DataFrame | None, pd.DataFrame | None]:
    """Accuracy by epoch, the baseline before training, and the final metrics on the full splits."""
    accuracy = None
    if snapshot.accuracies:
        accuracy = pd.DataFrame(
            {
                "epoch": [epoch_label(r.epoch) for r in snapshot.accuracies],
                "accuracy (%)": [round(100 * r.accuracy, 2) for r in snapshot.accuracies],
                "split": [r.split for r in snapshot.accuracies],
            }
        )
    baseline = None
    if snapshot.baseline is not None:
        b = snapshot.baseline
        baseline = pd.DataFrame(
            {
                "split": ["train", "validation", "test"],
                "accuracy before training (%)": [round(100 * a, 2) for a in (b.train_accuracy, b.validation_accuracy, b.test_accuracy)],
            }
        )
    final = None
    if snapshot.final:
        final = pd.DataFrame(
            [
                {
                    "split": name,
                    "accuracy (%)": round(100 * m.accuracy, 2),
                    "precision": round(m.precision, 3),
                    "recall": round(m.recall, 3),
                    "F1": round(m.f1, 3),
                    "loss": round(m.loss, 4),
                    "messages": messages_scored(snapshot, name, m.count),
                }
                for name, m in snapshot.final.items()
            ],
            columns=FINAL_COLUMNS,
        )
    return accuracy, baseline, final


def epoch_label(epoch: int) -> str:
    return BEFORE_TRAINING if epoch == 0 else f"epoch {epoch}"


def messages_scored(snapshot: JobSnapshot, split: str, count: int) -> str:
    """How many messages a final figure covers: for train, out of how many (the table's label says why fewer)."""
    size = getattr(snapshot.data, split, None) if snapshot.data is not None else None
    return f"{count:,} of {size:,}" if split == "train" and size is not None and count < size else f"{count:,}"


def training_view(snapshot: JobSnapshot) -> TrainingView:
    saved = snapshot.saved
    files = [str(saved.adapter_dir / "adapter.safetensors"), str(saved.record)] if saved else None
    return TrainingView(
        snapshot.status,
        progress_html(snapshot),
        loss_frame(snapshot.losses),
        *live_views(snapshot),
        *accuracy_frames(snapshot),
        str(saved.plot) if saved and saved.plot else None,
        files,
    )


FINAL_COLUMNS = ["split", "accuracy (%)", "precision", "recall", "F1", "loss", "messages"]
BASELINE_COLUMNS = ["split", "accuracy before training (%)"]


def progress_html(snapshot: JobSnapshot) -> str:
    if not snapshot.total_steps:
        return f"<div id='progress-text'>{snapshot.phase if snapshot.running else ''}</div>"
    eta = f" · ETA {format_seconds(snapshot.eta_s)}" if snapshot.eta_s is not None else ""
    return (
        f"<progress value='{snapshot.step}' max='{snapshot.total_steps}' style='width:100%'></progress>"
        f"<div id='progress-text'>step {snapshot.step} of {snapshot.total_steps} · {snapshot.examples_seen:,} examples seen · "
        f"{format_seconds(snapshot.elapsed_s)} elapsed{eta}</div>"
    )


def view_values(view: TrainingView) -> tuple[Any, ...]:
    # The loss frame feeds two plots (against steps, against examples seen).
    return (
        view.status,
        view.progress,
        view.loss,
        view.loss,
        view.live_confusion,
        view.live_scores,
        view.accuracy,
        view.baseline,
        view.final,
        view.book_plot,
        view.files,
    )


def new_run_dir(root: Path) -> Path:
    """runs/<date-time>, with a suffix when a run already started in the same second."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    candidates = (root / (stamp if n == 1 else f"{stamp}-{n}") for n in range(1, 1000))
    return next(path for path in candidates if not path.exists())


class TrainTab:
    """The Train tab's handlers over the app's Lab."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab

    def start_training(self, controls: Controls) -> tuple[Any, ...]:
        """Start a run with these settings; if one is running already, say so and show that one."""
        lab = self.lab
        lab.check_model(controls.model)
        try:
            cfg = run_config(lab.settings, controls, new_run_dir(lab.settings.out))
            param_summary(cfg.model, cfg.lora)  # builds the model on the meta device: a rank wider than a layer fails here, at once
        except LoRALabError as error:
            raise user_error(error) from None
        lab.check_batch_size(cfg.train.batch_size)
        if not lab.job.start(cfg):
            gr.Info("A training run is already going: showing it. Stop it first to start another.", duration=TOAST_SECONDS)
        return self.poll()

    def start(self, **controls: Any) -> tuple[Any, ...]:
        """Start a run with these settings; if one is running already, say so and show that one."""
        return self.start_training(Controls(**controls))  # Gradio sends the controls by name: they name the API's parameters

    def poll(self) -> tuple[Any, ...]:
        """The running (or last) job's state; the timer keeps ticking only while it runs."""
        snapshot = self.lab.job.snapshot()
        view = training_view(snapshot)
        return (*view_values(view), gr.Timer(active=snapshot.running))

    def attach(self) -> tuple[Any, ...]:
        """On page load: re-attach to a job started by any session, before or after a reload."""
        return self.poll()

    def stop_training(self) -> str:
        if not self.lab.job.stop():
            return self.lab.job.snapshot().status
        return "stopping after the current step..."


def loss_plot(x: str, title: str, elem_id: str) -> gr.LinePlot:
    """A loss plot: each training batch in grey, the train and validation estimates in colour."""
    return gr.LinePlot(x=x, y="loss", color="split", color_map=LOSS_COLORS, title=title, height=280, elem_id=elem_id)


def scores_plot() -> gr.ScatterPlot:
    """The full validation set's scores at each estimate: points, so the first estimate shows at once."""
    return gr.ScatterPlot(
        x="step",
        y="score (%)",
        color="metric",
        color_map=SCORE_COLORS,
        title="Full validation set at each estimate",
        x_lim=[0, None],
        y_lim=[0, 100],
        height=240,
        elem_id="live-scores",
    )


def accuracy_plot() -> gr.ScatterPlot:
    """Accuracy before training and after each epoch: one point per split and epoch."""
    return gr.ScatterPlot(
        x="epoch",
        y="accuracy (%)",
        color="split",
        color_map=ACCURACY_COLORS,
        sort=[BEFORE_TRAINING] + [epoch_label(e) for e in range(1, MAX_EPOCH_LABELS)],
        title="Accuracy on 5 batches, before training and after each epoch",
        x_title="",
        y_lim=[0, 100],
        height=240,
        elem_id="accuracy",
    )


def build_train_tab(train: TrainTab, demo: gr.Blocks, controls: ControlWidgets) -> gr.Timer:
    """The Train tab, wired to start a run of `controls`; returns the timer that ticks while a run goes."""
    with gr.Tab("Train"):
        with gr.Row():
            start_button = gr.Button("Start training", variant="primary", elem_id="start")
            stop_button = gr.Button("Stop", variant="stop", elem_id="stop")
        train_status = gr.Textbox(label="Status", interactive=False, elem_id="train-status")
        progress = gr.HTML(elem_id="train-progress")
        with gr.Row():
            loss_steps = loss_plot("step", "Loss by optimiser step", "loss-steps")
            loss_examples = loss_plot("examples seen", "Loss by examples seen", "loss-examples")
        with gr.Row():
            live_confusion = gr.HTML(elem_id="live-confusion")
            live_scores = scores_plot()
        with gr.Row():
            accuracy = accuracy_plot()
            baseline = gr.Dataframe(headers=BASELINE_COLUMNS, label="Baseline: accuracy before training", interactive=False, elem_id="baseline")
        final = gr.Dataframe(
            headers=FINAL_COLUMNS,
            label="Final accuracy on the full splits (train: whole batches only, as in the book, so its last few messages are left out)",
            interactive=False,
            elem_id="final",
        )
        with gr.Row():
            book_plot = gr.Image(label="Loss plot (book style)", type="filepath", interactive=False, elem_id="book-plot")
            files = gr.File(label="Download the adapter and the run record", file_count="multiple", interactive=False, elem_id="run-files")
        timer = gr.Timer(POLL_SECONDS, active=False)

    view = [train_status, progress, loss_steps, loss_examples, live_confusion, live_scores, accuracy, baseline, final, book_plot, files, timer]
    start_button.click(train.start, inputs_kwargs=controls.by_name(), outputs=view, api_name="start", show_progress="hidden")
    timer.tick(train.poll, None, view, api_name="poll", show_progress="hidden", concurrency_limit=None)
    stop_button.click(train.stop_training, None, train_status, api_name="stop", concurrency_limit=None)
    demo.load(train.attach, None, view, api_name="attach", show_progress="hidden")
    return timer
