"""The Train tab: start a run, watch one run live, stop it.

Runs belong to the app's queue, not to a page: a timer (POLL_SECONDS) polls the run this page follows (the
newest run to have started, or in a room the visitor's own latest run, or one picked from the list),
so a reloaded page or a second visitor re-attaches to it, and a run started from the Runs tab shows
here too. Anyone can stop it, except in a room, where a visitor stops only their own runs (the
presenter any). A poll that finds nothing new sends nothing, so idle pages cost little.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from engine.config import LABELS, TrainConfig
from engine.errors import LoRALabError
from engine.evaluate import Metrics
from engine.params import param_summary
from engine.runs.history import split_texts
from engine.runs.record import ADAPTER_DIR
from engine.runs.recorder import RunProgress
from engine.runs.run import BASELINE_BATCHES
from engine.runs.scheduler import RunView
from ui.controls import Controls, ControlWidgets, run_config
from ui.cost_view import CostView, build_cost_line
from ui.errors_view import CELL_SCRIPT, CLASSES_TABLE, CellSource, build_reasons
from ui.guards import user_error
from ui.lab import Lab
from ui.live_axes import AXIS_SERIES, BELOW, WHOLE_NUMBERS, LiveAxes, live_axes
from ui.room import EVERYONE, Visitor, refusal, whose
from ui.run_words import STATES, format_seconds, queued_words, run_header, status_line
from ui.views import HALF_ROW_PX, TOAST_SECONDS, confusion_html, plural

POLL_SECONDS = 1.0
MAX_BATCH_POINTS = 400  # each poll re-sends the whole plot frame: thin the per-step series of long runs
MAX_FOLLOW_CHOICES = 60  # newest runs offered in the "follow" list
NEWEST = ""  # the follow list's value for "the newest run"
LOSS_COLORS = {"training batch": "#c7c7c7", "train": "#1f77b4", "validation": "#ff7f0e"}
SCORE_COLORS = {"accuracy": "#1f77b4", "precision": "#ff7f0e", "recall": "#d62728", "F1": "#2ca02c"}
ACCURACY_COLORS = {"train": "#1f77b4", "validation": "#ff7f0e"}
FINAL_COLUMNS = ["split", "accuracy (%)", "precision", "recall", "F1", "loss", "messages"]
BASELINE_COLUMNS = ["split", "accuracy before training (%)"]


@dataclass(frozen=True)
class TrainingView:
    """What the Train tab shows of a run; `values` orders it for the outputs."""

    header: str
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
    axes: LiveAxes | None = None  # the rows that stretch the plots' axes; None while no run exists (the plots then get None)

    def values(self) -> tuple[Any, ...]:
        # The loss frame feeds two plots (against steps, against examples seen).
        axes = self.axes
        loss = axes.loss(self.loss) if axes else self.loss
        return (
            self.header,
            self.status,
            self.progress,
            loss,
            loss,
            self.live_confusion,
            axes.points(self.live_scores, "score (%)", "metric") if axes else self.live_scores,
            axes.points(self.accuracy, "accuracy (%)", "split") if axes else self.accuracy,
            self.baseline,
            self.final,
            self.book_plot,
            self.files,
        )


def loss_frame(progress: RunProgress) -> pd.DataFrame | None:
    """The loss plots' frame: every training batch (thinned in long runs) and the train/validation estimates.

    A Gradio plot takes its colours and legend from the series of the first frame it draws, then
    updates the data in place: a series missing from that frame is never drawn. The estimates come
    after the first batch, so every frame names all three series from the start, a series without a
    point yet by one row without a loss, which draws nothing.
    """
    batch = list(progress.batch_losses)
    if not batch and not progress.estimates:
        return None
    stride = max(1, -(-len(batch) // MAX_BATCH_POINTS))
    shown = batch[::stride] + (batch[-1:] if batch and (len(batch) - 1) % stride else [])
    rows = [(point.step, point.examples_seen, point.loss, "training batch") for point in shown]
    for estimate in progress.estimates:
        steps_taken = estimate.step + 1  # the book counts from 0; the plot counts steps taken, like the batches
        rows += [
            (steps_taken, estimate.examples_seen, estimate.train_loss, "train"),
            (steps_taken, estimate.examples_seen, estimate.validation_loss, "validation"),
        ]
    first = rows[0]
    rows += [(first[0], first[1], math.nan, split) for split in LOSS_COLORS if split not in {row[3] for row in rows}]
    rows.sort(key=lambda row: list(LOSS_COLORS).index(row[3]))  # the legend's order
    return pd.DataFrame(rows, columns=["step", "examples seen", "loss", "split"])


def class_names(progress: RunProgress | None) -> tuple[str, ...]:
    """The run's class names, in class-index order (ham, spam until the data says otherwise)."""
    return progress.data.labels if progress is not None and progress.data is not None else LABELS


def live_views(view: RunView | None) -> tuple[str, pd.DataFrame | None]:
    """The full validation set at the latest loss estimate (confusion matrix), and its scores at every estimate so far."""
    progress = view.progress if view else None
    if progress is None or not progress.live:
        off = view is not None and not view.run.config.train.live_metrics
        note = "Scoring the full validation set at each estimate is off for this run." if off else "The full validation set is scored at each loss estimate."
        return f"<div id='live-note'>{note}</div>", None
    names = class_names(progress)
    latest = progress.live[-1]
    m = latest.metrics
    which = f"of {names[1]}" if len(names) == 2 else "macro-averaged over the classes"
    caption = (
        f"Full validation set ({m.count} messages) after step {latest.step + 1}, the latest estimate: accuracy {100 * m.accuracy:.1f}%; "
        f"precision {m.precision:.3f}, recall {m.recall:.3f}, F1 {m.f1:.3f} ({which}). "
        "The final table below scores the model once more after its last step, so its validation figures can differ."
    )
    scores = pd.DataFrame(
        [
            {"step": point.step + 1, "score (%)": round(100 * value, 2), "metric": name}  # steps taken, as the loss plots
            for point in progress.live
            for name, value in (
                ("accuracy", point.metrics.accuracy),
                ("precision", point.metrics.precision),
                ("recall", point.metrics.recall),
                ("F1", point.metrics.f1),
            )
        ]
    )
    return confusion_html(m.confusion, names, caption, CLASSES_TABLE), scores


def accuracy_frames(view: RunView | None) -> tuple[pd.DataFrame | None, pd.DataFrame | None, pd.DataFrame | None]:
    """Accuracy before training (step 0) and at the end of each epoch, the baseline, and the final metrics on the full splits."""
    progress = view.progress if view else None
    if progress is None:
        return None, None, None
    rows = []
    b = progress.baseline
    if b is not None:
        rows += [(0, b.train_accuracy, "train"), (0, b.validation_accuracy, "validation")]
    for epoch in progress.epoch_accuracies:
        rows += [(epoch.step, epoch.train_accuracy, "train"), (epoch.step, epoch.validation_accuracy, "validation")]
    accuracy = pd.DataFrame([(x, round(100 * a, 2), split) for x, a, split in rows], columns=["step", "accuracy (%)", "split"]) if rows else None
    baseline = None
    if b is not None:
        accuracies = (b.train_accuracy, b.validation_accuracy, b.test_accuracy)
        baseline = pd.DataFrame({"split": ["train", "validation", "test"], "accuracy before training (%)": [round(100 * a, 2) for a in accuracies]})
    final = None
    if progress.final:
        final = pd.DataFrame(
            [
                {
                    "split": name,
                    "accuracy (%)": round(100 * m.accuracy, 2),
                    "precision": round(m.precision, 3),
                    "recall": round(m.recall, 3),
                    "F1": round(m.f1, 3),
                    "loss": round(m.loss, 4),
                    "messages": messages_scored(progress, name, m.count),
                }
                for name, m in [*progress.final.items(), *best_metrics(progress)]
            ],
            columns=FINAL_COLUMNS,
        )
    elif view.run.ended:
        final = pd.DataFrame(
            {"": [f"No final accuracies: the run {STATES[view.run.state]} before its final evaluation, so it is not offered on Evaluate either."]}
        )
    return accuracy, baseline, final


def best_metrics(progress: RunProgress) -> list[tuple[str, Metrics]]:
    """The best adapter's final metrics, named for the final table, when it is not the last: ("test, best adapter (step 11)", metrics)."""
    best = progress.best
    if best is None:
        return []
    return [(f"{name}, best adapter (step {best.step:,})", metrics) for name, metrics in best.metrics.items()]


def messages_scored(progress: RunProgress, split: str, count: int) -> str:
    """How many messages a final figure covers: for train, out of how many (the table's label says why fewer)."""
    size = getattr(progress.data, split, None) if progress.data is not None else None
    return f"{count:,} of {size:,}" if split == "train" and size is not None and count < size else f"{count:,}"


def progress_html(view: RunView | None) -> str:
    progress = view.progress if view else None
    if progress is None or not progress.total_steps:
        return "<div id='progress-text'></div>"
    eta = f" · about {format_seconds(progress.eta_s)} left" if progress.eta_s is not None else ""
    return (
        f"<progress value='{progress.step}' max='{progress.total_steps}' style='width:100%'></progress>"
        f"<div id='progress-text'>step {progress.step:,} of {progress.total_steps:,} · {progress.examples_seen:,} examples seen{eta}</div>"
    )


def placeholder(point: dict[str, float], series: str, names: Sequence[str]) -> pd.DataFrame:
    """A frame for a run with nothing to plot yet: every series named, nothing drawn.

    A plot that has drawn must never get None again (taking its chart down leaves the browser erring),
    and the series it draws first are the only ones it ever shows: so a run without points yet (a new
    run followed after an earlier one) gets one row per series, at `point`. That point lies below the
    plot's axes (see ui/live_axes.py), so it is cut away; a point of NaNs would leave the browser
    warning of an "Infinite extent" for every field.
    """
    return pd.DataFrame([{**point, series: name} for name in names])


EMPTY_LOSS = placeholder({"step": 0, "examples seen": 0, "loss": BELOW}, "split", list(LOSS_COLORS))
EMPTY_SCORES = placeholder({"step": 0, "score (%)": BELOW}, "metric", list(SCORE_COLORS))
EMPTY_ACCURACY = placeholder({"step": 0, "accuracy (%)": BELOW}, "split", list(ACCURACY_COLORS))


def training_view(view: RunView | None) -> TrainingView:
    """What the tab shows of `view`; plots get None only while no run exists at all (see `placeholder`)."""
    progress = view.progress if view else None
    saved = progress.saved if progress else None
    files = [str(saved.adapter_dir / "adapter.safetensors"), str(saved.record)] if saved else None
    confusion, scores = live_views(view)
    accuracy, baseline, final = accuracy_frames(view)
    loss = loss_frame(progress) if progress else None
    if view is not None:
        loss = EMPTY_LOSS if loss is None else loss
        scores = EMPTY_SCORES if scores is None else scores
        accuracy = EMPTY_ACCURACY if accuracy is None else accuracy
    return TrainingView(
        run_header(view),
        status_line(view),
        progress_html(view),
        loss,
        confusion,
        scores,
        accuracy,
        baseline,
        final,
        str(saved.plot) if saved and saved.plot else None,
        files,
        live_axes(view) if view is not None else None,
    )


def view_key(view: RunView | None) -> tuple:
    """Changes whenever anything the tab shows of `view` changes (the status's clock aside)."""
    if view is None:
        return (None,)
    p = view.progress
    shown = (
        (p.phase, p.step, len(p.estimates), len(p.live), len(p.epoch_accuracies), p.baseline is not None, p.final is not None, p.saved is not None) if p else ()
    )
    download = p.download.received if p and p.download else None
    return (view.run.id, view.run.state, view.position, download, *shown)


def follow_choices(views: Sequence[RunView], visitor: Visitor = EVERYONE, room_on: bool = False) -> list[tuple[str, str]]:
    """The follow list: the default (in a room, the visitor's own latest run; else the newest run), then each run, newest first."""
    newest_first = sorted(views, key=lambda v: v.run.queued_at, reverse=True)[:MAX_FOLLOW_CHOICES]
    default = "Your latest run (else the newest)" if room_on else "The newest run"
    return [(default, NEWEST)] + [
        (" · ".join(filter(None, (v.run.id, v.run.state, v.run.config.owner, whose(v.run, visitor, room_on)))), v.run.id) for v in newest_first
    ]


class TrainTab:
    """The Train tab's handlers over the app's Lab."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab

    def start_training(self, controls: Controls, owner: str = "", request: gr.Request | None = None) -> tuple[Any, ...]:
        """Queue a run with these settings for the visitor and follow it; the handler returns the tab's new view."""
        lab = self.lab
        lab.check_model(controls.model)
        visitor = lab.room.visitor(request)
        try:
            cfg = run_config(lab.settings, controls, owner)
            param_summary(cfg.model, cfg.lora)  # builds the model on the meta device: a rank wider than a layer fails here, at once
            lab.check_batch_size(cfg.train.batch_size)
            (run,) = lab.scheduler.submit([cfg], visitor=visitor.key, max_waiting_per_visitor=lab.room.limit_for(visitor))
        except LoRALabError as error:
            raise user_error(error) from None
        if lab.room.on:
            gr.Info(self.place_words(run.id), duration=TOAST_SECONDS)
        else:
            others = [v for v in lab.scheduler.views() if v.run.id != run.id and not v.run.ended]
            if len(others) >= len(lab.scheduler.workers.slots):
                gr.Info(f"Run {run.id} waits in the queue behind {plural(len(others), 'other run')}; this page follows it.", duration=TOAST_SECONDS)
        return self._view(run.id, None, request, point_at_followed=True)

    def place_words(self, run_id: str) -> str:
        """A new run's place in the queue and its expected wait, in one sentence."""
        views = self.lab.scheduler.views()
        mine = next((view for view in views if view.run.id == run_id), None)
        running = sum(view.run.state == "running" for view in views)
        free = len(self.lab.scheduler.workers.slots) - running
        if mine is None or mine.position is None or mine.position <= free:
            return f"Run {run_id} starts now; this page follows it."
        return queued_words(run_id, mine.position, running, self.lab.expected_wait_s(run_id))

    def start(self, owner: str = "", request: gr.Request | None = None, **controls: Any) -> tuple[Any, ...]:
        """Queue a run with these settings and follow it."""
        return self.start_training(Controls(**controls), owner, request)  # Gradio sends the controls by name: they name the API's parameters

    def poll(self, followed: str | None, last: tuple | None, request: gr.Request | None = None) -> tuple[Any, ...]:
        """The followed run's view, or nothing new (gr.skip) when nothing changed since `last`."""
        return self._view(followed, last, request, point_at_followed=False)

    def _view(self, followed: str | None, last: tuple | None, request: gr.Request | None, point_at_followed: bool) -> tuple[Any, ...]:
        """The Train tab's outputs for `followed`; the follow list is set to it only when `point_at_followed` (a new run)."""
        lab = self.lab
        visitor = lab.room.visitor(request)
        views = lab.scheduler.views()
        view = lab.followed(followed or None, visitor)
        choices = follow_choices(views, visitor, lab.room.on)
        allowed = view is None or visitor.may_act_on(view.run)
        resumable = view is not None and lab.can_resume(view.run, visitor)
        key = (view_key(view), tuple(choices), followed or NEWEST, allowed, resumable)
        # The value is sent only to fall back to the newest run: a poll in flight while the visitor picks a run
        # (or the Runs tab's Watch points here) would otherwise put back the run it was asked about.
        listed = followed in {value for _, value in choices}
        if point_at_followed and listed:
            dropdown = gr.Dropdown(choices=choices, value=followed)
        else:
            dropdown = gr.Dropdown(choices=choices) if listed or not followed else gr.Dropdown(choices=choices, value=NEWEST)
        if last is not None and key == last:
            running_status = status_line(view) if view is not None and view.run.state in ("running", "queued") else gr.skip()
            return (gr.skip(), running_status, *[gr.skip()] * 10, gr.skip(), gr.skip(), gr.skip(), last)
        shown = training_view(view)
        if not allowed:
            shown = replace(shown, header=f"{shown.header}  \n*{refusal(view.run, 'stop')}.*")
        return (*shown.values(), dropdown, gr.Button(interactive=allowed), gr.Button(visible=resumable), key)

    def run_info(self, run_id: str = "", request: gr.Request | None = None) -> dict[str, Any]:
        """A run as plain values, for scripts: `run_id`, or "" for the caller's latest run (in a room; else the newest run).

        Raises:
            gr.Error: no such run.
        """
        visitor = self.lab.room.visitor(request)
        view = self.lab.followed(run_id if isinstance(run_id, str) else None, visitor)
        if view is None:
            raise gr.Error(f"no run {str(run_id)[:80]!r} in the queue" if run_id else "no run yet: start one first", duration=8)
        run, progress = view.run, view.progress
        final = progress.final if progress and progress.final else {}
        return {
            "id": run.id,
            "state": run.state,
            "place": view.position,  # 1-based among the waiting runs; None once it started
            "step": progress.step if progress else 0,
            "total_steps": progress.total_steps if progress else 0,
            "test_accuracy": final["test"].accuracy if "test" in final else None,
            "reason": run.reason,
            "yours": self.lab.room.on and visitor.key == run.visitor,
        }

    def attach(self, request: gr.Request | None = None) -> tuple[Any, ...]:
        """On page load: follow the visitor's own latest run in a room, else the newest run, before or after a reload."""
        return self.poll(None, None, request)

    def cell_source(self, followed: str | None, request: gr.Request | None = None) -> CellSource:
        """Where the live confusion matrix's answers come from: the followed run's latest estimate."""
        view = self.lab.followed(followed or None, self.lab.room.visitor(request))
        scores = view.progress.live_scores if view is not None and view.progress is not None else None
        if view is None or scores is None:
            raise gr.Error("no live confusion matrix yet: it comes with the run's first loss estimate", duration=5)
        folder = Path(view.run.config.out_dir)
        return CellSource(scores, split_texts(folder, "validation", scores.labels), class_names(view.progress), folder / ADAPTER_DIR)

    def resume_training(self, followed: str | None, request: gr.Request | None = None) -> str:
        """Queue the followed run again to go on from its last checkpoint (in a room, only the visitor's own runs)."""
        visitor = self.lab.room.visitor(request)
        view = self.lab.followed(followed or None, visitor)
        if view is None:
            raise gr.Error("no run to resume: follow a stopped run first", duration=5)
        run = self.lab.resume(view.run.id, visitor)
        return f"Run {run.id} is queued to go on from its last checkpoint; this page follows it."

    def stop_training(self, followed: str | None, request: gr.Request | None = None) -> str:
        """Stop the followed run after its current step (or take it out of the queue if it has not started)."""
        visitor = self.lab.room.visitor(request)
        view = self.lab.followed(followed or None, visitor)
        if view is None or view.run.ended:
            return status_line(view)
        self.lab.room.check(visitor, view.run, "stop")
        try:
            self.lab.scheduler.stop(view.run.id)
        except LoRALabError as error:
            raise user_error(error) from None
        return "Stopping after the current step..." if view.run.state == "running" else "Cancelled: the run left the queue before it started."


def loss_plot(x: str, title: str, elem_id: str) -> gr.LinePlot:
    """A loss plot: each training batch in grey, the train and validation estimates in colour."""
    return gr.LinePlot(
        x=x,
        y="loss",
        color="split",
        color_map={**LOSS_COLORS, **AXIS_SERIES},
        colors_in_legend=list(LOSS_COLORS),
        title=title,
        x_axis_format=WHOLE_NUMBERS,
        x_lim=[0, None],  # the rows that stretch the axes lie left of 0 and under 0 (ui/live_axes.py)
        y_lim=[0, None],
        height=280,
        min_width=HALF_ROW_PX,
        elem_id=elem_id,
    )


def scores_plot() -> gr.ScatterPlot:
    """The full validation set's scores at each estimate: points, so the first estimate shows at once."""
    return gr.ScatterPlot(
        x="step",
        y="score (%)",
        color="metric",
        color_map={**SCORE_COLORS, **AXIS_SERIES},
        colors_in_legend=list(SCORE_COLORS),
        title="Full validation set at each estimate",
        x_axis_format=WHOLE_NUMBERS,
        x_lim=[0, None],
        y_lim=[0, 100],
        height=240,
        min_width=HALF_ROW_PX,
        elem_id="live-scores",
    )


def accuracy_plot() -> gr.ScatterPlot:
    """Accuracy before training and after each epoch, on the loss plots' step axis: one point per split and epoch."""
    return gr.ScatterPlot(
        x="step",
        y="accuracy (%)",
        color="split",
        color_map={**ACCURACY_COLORS, **AXIS_SERIES},
        colors_in_legend=list(ACCURACY_COLORS),
        title="Accuracy after each epoch",  # short: a title wider than a phone squeezes the chart to nothing
        x_title="step (0: before training)",
        x_lim=[0, None],
        y_title=f"accuracy (%) on {TrainConfig().eval_iter} batches",
        x_axis_format=WHOLE_NUMBERS,
        y_lim=[0, 100],
        height=280,  # the y title's length: a shorter plot pushes the title above its edge
        min_width=HALF_ROW_PX,
        elem_id="accuracy",
    )


def build_train_tab(train: TrainTab, demo: gr.Blocks, controls: ControlWidgets) -> tuple[gr.Timer, gr.Dropdown]:
    """The Train tab, wired to queue runs of `controls`; returns its timer and its follow list (the Runs tab points it at a run)."""
    with gr.Tab("Train", id="train"):
        with gr.Row():
            start_button = gr.Button("Start training", variant="primary", elem_id="start", scale=2)
            stop_button = gr.Button("Stop", variant="stop", elem_id="stop", scale=1)
            # Shown for a run that ended before its end (stopped, interrupted, out of memory) and kept a checkpoint.
            resume_button = gr.Button("Resume", elem_id="resume", visible=False, scale=1)
            owner = gr.Textbox("", label="Your name (optional)", placeholder="shown beside your runs", max_lines=1, elem_id="owner", scale=2)
            # Any run id is accepted (a script may follow or stop any run of the queue); poll checks it.
            followed = gr.Dropdown(
                follow_choices([], room_on=train.lab.room.on), value=NEWEST, label="Watching", allow_custom_value=True, elem_id="follow", scale=3
            )
        cost_line = gr.Markdown(elem_id="run-cost")  # what the settings will cost: ui/cost_view.py
        header = gr.Markdown(elem_id="run-header")
        train_status = gr.Textbox(label="Status", interactive=False, elem_id="train-status")
        progress = gr.HTML(elem_id="train-progress")
        with gr.Row():
            loss_steps = loss_plot("step", "Loss by optimiser step", "loss-steps")
            loss_examples = loss_plot("examples seen", "Loss by examples seen", "loss-examples")
        with gr.Row():
            live_confusion = gr.HTML(min_width=HALF_ROW_PX, elem_id="live-confusion", js_on_load=CELL_SCRIPT)  # a click on a cell lists its messages
            live_scores = scores_plot()
        build_reasons(train.lab, "live", live_confusion, train.cell_source, [followed])
        with gr.Row():
            accuracy = accuracy_plot()
            baseline = gr.Dataframe(
                headers=BASELINE_COLUMNS,
                label=f"Baseline: accuracy before training ({BASELINE_BATCHES} batches a split)",
                interactive=False,
                min_width=HALF_ROW_PX,
                elem_id="baseline",
            )
        final = gr.Dataframe(
            headers=FINAL_COLUMNS,
            label="Final accuracy on the full splits, after the last step (train: whole batches only, as in the book, so its last few messages are left out)",
            interactive=False,
            elem_id="final",
        )
        with gr.Row():
            book_plot = gr.Image(label="Loss plot (book style)", type="filepath", interactive=False, min_width=HALF_ROW_PX, elem_id="book-plot")
            files = gr.File(
                label="Download the adapter and the run record", file_count="multiple", interactive=False, min_width=HALF_ROW_PX, elem_id="run-files"
            )
        last_shown = gr.State(None)  # what this page shows, so a poll with nothing new sends nothing
        nothing_shown = gr.State(None)  # (created in the tab: a component made in gr.Tabs but outside a tab upsets the tab bar)
        timer = gr.Timer(POLL_SECONDS, active=True)

    view = [
        header,
        train_status,
        progress,
        loss_steps,
        loss_examples,
        live_confusion,
        live_scores,
        accuracy,
        baseline,
        final,
        book_plot,
        files,
        followed,
        stop_button,
        resume_button,
        last_shown,
    ]
    start_button.click(train.start, inputs_kwargs={"owner": owner, **controls.by_name()}, outputs=view, api_name="start", show_progress="hidden")
    timer.tick(train.poll, [followed, last_shown], view, api_name="poll", show_progress="hidden", concurrency_limit=None)
    followed.input(train.poll, [followed, nothing_shown], view, api_name="follow", show_progress="hidden", concurrency_limit=None)
    stop_button.click(train.stop_training, followed, train_status, api_name="stop", concurrency_limit=None)
    resume_button.click(train.resume_training, followed, train_status, api_name="resume", concurrency_limit=None)
    demo.load(train.attach, None, view, api_name="attach", show_progress="hidden")
    build_cost_line(CostView(train.lab), demo, controls, cost_line)
    return timer, followed


def build_run_info(train: TrainTab) -> None:
    """/run_info, for scripts (no widget shows it): call it outside gr.Tabs, whose children must all be tabs."""

    def run_info(run: str = "", request: gr.Request = None) -> dict:  # type: ignore[assignment]  # Gradio passes the request
        """A run's id, state ("queued", "running", "done", ...), place in the queue, step, total steps, test accuracy and reason; "" for your latest run."""
        return train.run_info(run, request)

    gr.api(run_info, api_name="run_info", concurrency_limit=None)
