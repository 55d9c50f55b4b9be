"""The Evaluate tab: a finished run on every message of the validation (or test) set.

The run is chosen from the same list as Classify's (ui.answering), with the same default, and
choosing on one tab chooses on the other; so is which of its adapters (its best by default, or its last).

Its confusion matrix, precision/recall/F1 at a chosen threshold, the ROC curve and the misclassified
messages, one class against the rest (spam by default; any class, so three or more classes too),
all from the per-message scores the run kept in run.json for that adapter.
"""

from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import pandas as pd

from engine.errors import LoRALabError
from engine.evaluate import POSITIVE_CLASS, Scores, at_threshold, mistakes, positive_class, roc_curve
from engine.runs.adapters import KeptAdapter, kept_adapter
from engine.runs.history import RunSummary, read_scores
from ui.answering import adapter_choice, adapter_picker, choice_label, default_run
from ui.errors_view import CELL_SCRIPT, CLASSES_TABLE, THRESHOLD_TABLE, CellSource, build_reasons
from ui.lab import Lab
from ui.views import HALF_ROW_PX, confusion_html, plural, text_last

SPLITS = ("validation", "test")
ROC_COLORS = {"ROC curve": "#d62728", "chance": "#aaaaaa"}
EvaluateViews = tuple[str, str, pd.DataFrame | None, pd.DataFrame | None, pd.DataFrame | None]  # summary, confusion, metrics, ROC, mistakes


@dataclass(frozen=True)
class RunEvaluation:
    """A finished run's per-message scores on one split, with the message texts when still available."""

    name: str
    split: str
    adapter: KeptAdapter
    class_names: tuple[str, ...]
    scores: Scores
    texts: list[str] | None  # None: the data folder was prepared again since (or is gone)
    confusion: list[list[int]] | None  # the run's own confusion matrix (argmax), from run.json

    def default_positive(self) -> str:
        """The positive class of two (spam, as the book); the first class for more."""
        return self.class_names[positive_class(self.class_names) or 0]

    def rest_name(self, positive: int) -> str:
        """What "not the positive class" is called: the other class, or "not X" for three or more."""
        names = self.class_names
        return names[1 - positive] if len(names) == 2 else f"not {names[positive]}"


def read_evaluation(summary: RunSummary, name: str, split: str, which: str = "best") -> RunEvaluation:
    """The scores run.json keeps for `split` of the run's `which` adapter, and the split's texts when the data folder still matches them."""
    kept = kept_adapter(summary, which)
    try:
        found = read_scores(summary.folder, split, kept.adapter)
    except LoRALabError as error:
        raise gr.Error(f"the record of run {name} is unreadable ({error}): choose another run") from None
    if found is None:
        raise gr.Error(f"run {name} has no per-message scores (stopped before its final evaluation, or trained by an older version): choose a finished run")
    return RunEvaluation(name, split, kept, found.class_names, found.scores, found.texts, found.confusion)


def threshold_frame(evaluation: RunEvaluation, threshold: float, positive: int = POSITIVE_CLASS) -> pd.DataFrame:
    name = evaluation.class_names[positive]
    metrics = at_threshold(evaluation.scores, threshold, positive)
    return pd.DataFrame(
        [
            ("accuracy (%)", round(100 * metrics.accuracy, 2)),
            (f"precision ({name})", round(metrics.precision, 3)),
            (f"recall ({name})", round(metrics.recall, 3)),
            ("F1", round(metrics.f1, 3)),
            ("messages", metrics.count),
        ],
        columns=["", f"threshold {threshold:.2f}"],
    )


def roc_frame(evaluation: RunEvaluation, positive: int = POSITIVE_CLASS) -> tuple[pd.DataFrame | None, float | None]:
    try:
        curve = roc_curve(evaluation.scores, positive)
    except ValueError:
        return None, None  # the chosen class, or every other, is missing from this split
    name = "ROC curve"
    rows = [
        {"false positive rate": x, "true positive rate": y, "curve": name} for x, y in zip(curve.false_positive_rate, curve.true_positive_rate, strict=True)
    ]
    rows += [{"false positive rate": v, "true positive rate": v, "curve": "chance"} for v in (0.0, 1.0)]
    return pd.DataFrame(rows), curve.auc


def mistakes_frame(evaluation: RunEvaluation, threshold: float, positive: int = POSITIVE_CLASS) -> pd.DataFrame | None:
    """The misclassified messages, most confident first: the answers first, the (wrapping) message last."""
    if evaluation.texts is None:
        return None
    names = evaluation.class_names
    score = f"P({names[positive]})"
    rows = [
        {"true": names[m.label], "predicted": names[m.predicted], score: round(m.p_positive, 3), "message": m.text}
        for m in mistakes(evaluation.scores, evaluation.texts, threshold, positive)
    ]
    return pd.DataFrame(rows, columns=["true", "predicted", score, "message"])


def evaluation_views(evaluation: RunEvaluation, chosen: str, threshold: float) -> EvaluateViews:
    """What the tab shows of `evaluation` with `chosen` as the positive class at `threshold`."""
    run, split, names = evaluation.name, evaluation.split, evaluation.class_names
    index = names.index(chosen)
    metrics = at_threshold(evaluation.scores, threshold, index)
    roc, auc = roc_frame(evaluation, index)
    wrong = mistakes_frame(evaluation, threshold, index)
    texts = (
        ""
        if evaluation.texts is not None
        else " The message texts are not shown: the data was prepared again since this run (download or upload it as before to see them)."
    )
    auc_text = f" Area under the ROC curve (AUC): **{auc:.3f}** (1 is perfect, 0.5 is chance)." if auc is not None else ""
    rest = evaluation.rest_name(index)
    mistakes_count = metrics.count - metrics.confusion[0][0] - metrics.confusion[1][1]
    rule = f"A message counts as **{chosen}** when P({chosen}) ≥ **{threshold:.2f}**" + (
        "" if len(names) == 2 else f", else as one of the other {len(names) - 1} classes (one vs rest)"
    )
    result = f"{plural(mistakes_count, 'mistake')}, accuracy {100 * metrics.accuracy:.1f}%.{auc_text}{texts}"
    summary = f"Run **{run}**, {evaluation.adapter.words()}; full {split} set: {metrics.count} messages. {rule}: {result}"
    table = confusion_html(metrics.confusion, (rest, chosen), f"{split} set at threshold {threshold:.2f}, {chosen} vs the rest", THRESHOLD_TABLE)
    if len(names) > 2:  # the threshold view is one class against the rest: show every class's answers too
        every = confusion_html(evaluation.confusion or [], names, f"{split} set, each message given its most likely class", CLASSES_TABLE)
        table = every + "<br>" + table
    return summary, table, threshold_frame(evaluation, threshold, index), roc, wrong


class EvaluateTab:
    """The Evaluate tab's handlers over the app's Lab (its runs folder)."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab

    @property
    def out(self) -> Path:
        return Path(self.lab.settings.out)

    def evaluated_runs(self) -> list[tuple[str, RunSummary]]:
        """The finished runs, newest first: Classify's list (ui.answering)."""
        return [(run.name, run.summary) for run in self.lab.finished_runs()]

    def evaluation_choices(self, current: str | None = None, request: gr.Request | None = None) -> gr.Dropdown:
        """The finished runs to evaluate, newest first (the picker's choices, so not a plain value); the current choice
        stays while it is in the list, else the visitor's default (as on Classify)."""
        lab = self.lab
        visitor = lab.room.visitor(request)
        runs = lab.finished_runs()
        default = default_run(runs, visitor, lab.room.on)
        value = current if current in {run.name for run in runs} else default.name if default else None
        return gr.Dropdown(choices=[(choice_label(run, visitor, lab.room.on), run.name) for run in runs], value=value)

    def positive_choices(self, run: str | None, current: str | None = None) -> gr.Dropdown:
        """The run's classes to pick the positive one from; the current choice stays when the run has it."""
        found = dict(self.evaluated_runs()).get(run) if run else None
        if found is None:
            return gr.Dropdown(choices=[], value=None)
        evaluation = read_evaluation(found, run, "validation")
        names = list(evaluation.class_names)
        return gr.Dropdown(choices=names, value=current if current in names else evaluation.default_positive())

    def evaluate(self, run: str | None, split: str, threshold: float, positive: str | None = None, which: str | None = "best") -> EvaluateViews:
        """Confusion matrix, metrics at `threshold`, ROC and the misclassified messages of one finished run's `which` adapter (best or last).

        The threshold, ROC and mistakes are one-vs-rest for the `positive` class (spam by default):
        it is predicted when its probability reaches the threshold, any other class otherwise.
        """
        if not run:
            if self.lab.finished_runs():  # none is chosen silently for this visitor (ui.answering)
                return "No run chosen: choose a finished run from the list above.", "", None, None, None
            return "No finished run yet: train one on the Train tab (or run a sweep on Runs), then come back.", "", None, None, None
        if split not in SPLITS:
            raise gr.Error(f"unknown split {str(split)[:40]!r}: choose validation or test")
        if not isinstance(threshold, int | float) or not 0 <= threshold <= 1:
            raise gr.Error("the threshold must be a number from 0 to 1")
        found = dict(self.evaluated_runs()).get(run)
        if found is None:
            raise gr.Error(f"no finished run called {str(run)[:80]!r} in {self.out}: press Refresh and choose one from the list")
        evaluation = read_evaluation(found, run, split, adapter_choice(which))
        chosen = positive or evaluation.default_positive()
        if chosen not in evaluation.class_names:
            raise gr.Error(f"run {run} has no class {str(chosen)[:40]!r}: choose one of {', '.join(evaluation.class_names)}")
        return evaluation_views(evaluation, chosen, float(threshold))

    def cell_source(self, run: str | None, split: str, threshold: float, positive: str | None = None, which: str | None = "best") -> CellSource:
        """Where the confusion matrices' answers come from: for listing a clicked cell's messages and explaining them."""
        self.evaluate(run, split, threshold, positive, which)  # the same checks, each with its message
        found = dict(self.evaluated_runs())[run]
        evaluation = read_evaluation(found, run, split, adapter_choice(which))
        chosen = positive or evaluation.default_positive()
        return CellSource(
            evaluation.scores, evaluation.texts, evaluation.class_names, evaluation.adapter.folder, float(threshold), evaluation.class_names.index(chosen)
        )


def build_evaluate_tab(evaluate: EvaluateTab, classify_run: gr.Dropdown, classify_which: gr.Radio) -> None:
    """The Evaluate tab, wired; opening it (or Refresh) lists the finished runs and shows the chosen one (or the default).
    Its choices of run and adapter and Classify's (`classify_run`, `classify_which`) follow each other."""
    with gr.Tab("Evaluate") as tab:
        gr.Markdown(
            "How a finished run does on every message of the validation (or test) set, and what changes when the chosen class "
            "needs more, or less, certainty before the model names it."
        )
        with gr.Row():
            run = gr.Dropdown(
                [], label="Run", info="finished runs, newest first (the same list as on Classify)", allow_custom_value=True, elem_id="eval-run", scale=2
            )  # the handler checks the name
            split = gr.Radio(list(SPLITS), value="validation", label="Messages", elem_id="eval-split", scale=1)
            refresh = gr.Button("Refresh", size="sm", elem_id="eval-refresh", scale=0)
        which = adapter_picker("eval-adapter")
        with gr.Row():
            positive = gr.Dropdown(
                [],
                label="Positive class",
                info="threshold, ROC and mistakes: this class against the rest",
                allow_custom_value=True,  # its choices come with the run; the handler checks the name
                elem_id="eval-positive",
                scale=1,
            )
            threshold = gr.Slider(
                0.0, 1.0, value=0.5, step=0.01, label="Decision threshold: the positive class when its probability is at least", elem_id="threshold", scale=3
            )
        summary = gr.Markdown(elem_id="eval-summary")
        with gr.Row():
            with gr.Column(scale=1):
                confusion = gr.HTML(elem_id="confusion", js_on_load=CELL_SCRIPT)  # a click on a cell lists its messages
                metrics = gr.Dataframe(headers=["", "threshold"], label="At this threshold", interactive=False, elem_id="eval-metrics")
            roc = gr.LinePlot(
                x="false positive rate",
                y="true positive rate",
                color="curve",
                color_map=ROC_COLORS,
                title="ROC curve: every threshold at once",
                x_lim=[0, 1],
                y_lim=[0, 1],
                height=320,
                min_width=HALF_ROW_PX,
                elem_id="roc",
                scale=1,
            )
        build_reasons(evaluate.lab, "eval", confusion, evaluate.cell_source, [run, split, threshold, positive, which])
        wrong = gr.Dataframe(
            headers=["true", "predicted", "P", "message"],
            label="Misclassified messages, most confident mistakes first",
            interactive=False,
            wrap=True,
            max_height=360,
            column_widths=text_last(4, "60%"),
            elem_id="mistakes",
        )
    views = [summary, confusion, metrics, roc, wrong]
    inputs = [run, split, threshold, positive, which]
    # A chosen run brings its own classes: the positive-class picker is refilled before evaluating.
    gr.on([tab.select, refresh.click], evaluate.evaluation_choices, run, run, api_name="evaluation_runs", show_progress="hidden").then(
        evaluate.positive_choices, [run, positive], positive, api_name="positive_classes_refreshed", show_progress="hidden"
    ).then(evaluate.evaluate, inputs, views, api_name="evaluate_refreshed", show_progress="hidden")
    run.input(evaluate.positive_choices, [run, positive], positive, api_name="positive_classes", show_progress="hidden").then(
        evaluate.evaluate, inputs, views, api_name="evaluate_run", show_progress="hidden"
    )
    gr.on([split.change, threshold.change, positive.input, which.change], evaluate.evaluate, inputs, views, api_name="evaluate", show_progress="hidden")
    # One choice for both tabs: a run chosen on either is chosen on the other (Evaluate redraws when opened).
    run.input(lambda chosen: chosen, run, classify_run, api_visibility="private", show_progress="hidden", queue=False)
    classify_run.input(lambda chosen: chosen, classify_run, run, api_visibility="private", show_progress="hidden", queue=False)
    which.input(lambda chosen: chosen, which, classify_which, api_visibility="private", show_progress="hidden", queue=False)
    classify_which.input(lambda chosen: chosen, classify_which, which, api_visibility="private", show_progress="hidden", queue=False)
