"""The Train tab: start, watch and stop the app's one training job, live.

The job belongs to the app, not to a page: a 1 s timer polls it, so a reloaded page or a second
visitor re-attaches to the same run, and anyone can stop it.
"""

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
from ui.views import confusion_html

POLL_SECONDS = 1.0
MAX_BATCH_POINTS = 400  # each poll re-sends the whole plot frame: thin the per-step series of long runs
LOSS_COLORS = {"training batch": "#c7c7c7", "train": "#1f77b4", "validation": "#ff7f0e"}
SPLIT_NAMES = {"batch": "training batch", "train": "train", "validation": "validation"}


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
    if not rows:
        return None
    batch = [r for r in rows if r.split == "batch"]
    stride = max(1, -(-len(batch) // MAX_BATCH_POINTS))
    kept = set(batch[::stride] + batch[-1:])
    shown = [r for r in rows if r.split != "batch" or r in kept]
    return pd.DataFrame(
        {
            "step": [r.step for r in shown],
            "examples seen": [r.examples_seen for r in shown],
            "loss": [r.loss for r in shown],
            "split": [SPLIT_NAMES[r.split] for r in shown],
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
                "epoch": [r.epoch for r in snapshot.accuracies],
                "accuracy (%)": [100 * r.accuracy for r in snapshot.accuracies],
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
                    "messages": m.count,
                }
                for name, m in snapshot.final.items()
            ]
        )
    return accuracy, baseline, final


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
            gr.Info("A training run is already going: showing it. Stop it first to start another.")
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


def build_train_tab(train: TrainTab, demo: gr.Blocks, controls: ControlWidgets) -> gr.Timer:
    """The Train tab, wired to start a run of `controls`; returns the timer that ticks while a run goes."""
    with gr.Tab("Train"):
        with gr.Row():
            start_button = gr.Button("Start training", variant="primary", elem_id="start")
            stop_button = gr.Button("Stop", variant="stop", elem_id="stop")
        train_status = gr.Textbox(label="Status", interactive=False, elem_id="train-status")
        progress = gr.HTML(elem_id="train-progress")
        with gr.Row():
            loss_steps = gr.LinePlot(x="step", y="loss", color="split", color_map=LOSS_COLORS, title="Loss by optimiser step", height=280, elem_id="loss-steps")
            loss_examples = gr.LinePlot(
                x="examples seen", y="loss", color="split", color_map=LOSS_COLORS, title="Loss by examples seen", height=280, elem_id="loss-examples"
            )
        with gr.Row():
            live_confusion = gr.HTML(elem_id="live-confusion")
            live_scores = gr.LinePlot(
                x="step",
                y="score (%)",
                color="metric",
                title="Full validation set at each estimate",
                y_lim=[0, 100],
                height=240,
                elem_id="live-scores",
            )
        with gr.Row():
            accuracy = gr.LinePlot(
                x="epoch", y="accuracy (%)", color="split", title="Accuracy (5 batches; epoch 0 = before training)", height=240, elem_id="accuracy"
            )
            baseline = gr.Dataframe(label="Baseline: accuracy before training", interactive=False, elem_id="baseline")
        final = gr.Dataframe(label="Final accuracy on the full splits", interactive=False, elem_id="final")
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
