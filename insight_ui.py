"""LoRA Lab's insight views (issue 6): what LoRA learned and why the model decides as it does.

The Gradio side of the engine's evaluation, explanation, history, sweep, batch and data-quality
features: an Evaluate tab (confusion matrix, precision/recall/F1 at a chosen threshold, ROC, the
misclassified messages; one class against the rest when there are more than two), a Runs tab (history, loss overlay, rank sweep), and sections that app.py
places on the Data tab (duplicates) and the Classify tab (why this answer, classify a file).

Like app.py it does no tensor math: it turns the engine's results into tables, plots and HTML, and
its handlers return plain values. It does not import app.py (app.py imports it); what it needs of
the app arrives as the `Lab` it is given and app.py's widgets-to-config function (see `Insight`).
"""

import html
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import gradio as gr
import pandas as pd

from app_guards import uploaded_file, uploaded_path
from engine.batch import classify_file
from engine.classifier import Classifier
from engine.config import RunConfig
from engine.data import DataSummary, load_summary
from engine.errors import LoRALabError
from engine.evaluate import Scores, at_threshold, mistakes, roc_curve
from engine.explain import TokenScore, WordInfluence, spam_index, token_scores, word_influence
from engine.history import RunSummary, list_runs
from engine.job import JobSnapshot, TrainingJob
from engine.run import RECORD_FILE
from engine.sweep import DEFAULT_RANKS, SweepPoint

SWEEP_RANK_CHOICES = (1, 2, 4, 8, 16, 32, 64)
MAX_INFLUENCE_BARS = 15
SPLITS = ("validation", "test")
# A Gradio plot keeps the colour legend of the first value it draws: later values with new series
# (other runs, more ranks) would be drawn without lines or legend. Such plots are cleared (None)
# before they get a value with other series, which makes Gradio draw them afresh.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
ROC_COLORS = {"ROC curve": "#d62728", "chance": "#aaaaaa"}
HAM_RGB, SPAM_RGB = (31, 119, 180), (214, 39, 40)  # the Data tab's histogram colours


class LabLike(Protocol):
    """What the insight views use of app.Lab (its shared job, settings and classifier cache)."""

    settings: Any  # app.AppSettings: out, cache, models
    job: TrainingJob

    def check_model(self, model: str) -> str: ...

    def check_batch_size(self, batch_size: int) -> None: ...

    def _classifier_for(self, adapter_file: str | None) -> tuple[Path, Classifier]: ...  # call under _classify_lock


def user_error(error: Exception) -> gr.Error:
    return gr.Error(" ".join(str(error).split()), duration=None)


# --- plain helpers: runs and records --------------------------------------------------------------


def all_runs(root: Path) -> list[tuple[str, RunSummary]]:
    """(shown name, summary) of every run under `root`: runs/<date-time> and the runs of each sweep folder."""
    root = Path(root)
    found = [(run.name, run) for run in list_runs(root)]
    if root.is_dir():
        for folder in sorted(root.iterdir()):
            if folder.is_dir() and not (folder / RECORD_FILE).exists():
                found += [(f"{folder.name}/{run.name}", run) for run in list_runs(folder)]
    return sorted(found, key=lambda item: (item[1].created, item[0]), reverse=True)


def history_frame(runs: Sequence[tuple[str, RunSummary]]) -> pd.DataFrame | None:
    if not runs:
        return None
    rows = [
        {
            "run": name,
            "created": run.created.replace("T", " ").split("+")[0],
            "model": Path(run.model).name,
            "preset": run.preset or "",
            "rank": run.rank,
            "alpha": run.alpha,
            "trainable": f"{run.trainable:,}" if run.trainable else "",
            "steps": run.steps,
            "train time (s)": round(run.train_seconds, 1),
            "device": run.device,
            "validation acc. (%)": percent(run.validation_accuracy),
            "test acc. (%)": percent(run.test_accuracy),
            "stopped": "yes" if run.stopped else "",
        }
        for name, run in runs
    ]
    return pd.DataFrame(rows)


def percent(value: float | None) -> float | None:
    return None if value is None else round(100 * value, 2)


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


@dataclass(frozen=True)
class RunEvaluation:
    """A finished run's per-message scores on one split, with the message texts when still available."""

    name: str
    split: str
    class_names: tuple[str, ...]
    scores: Scores
    texts: list[str] | None  # None: the data folder was prepared again since (or is gone)
    confusion: list[list[int]] | None  # the run's own confusion matrix (argmax), from run.json

    def default_positive(self) -> str:
        """Spam (class 1) for two classes, as the book; the first class for more."""
        return self.class_names[1] if len(self.class_names) == 2 else self.class_names[0]

    def rest_name(self, positive: int) -> str:
        """What "not the positive class" is called: the other class, or "not X" for three or more."""
        names = self.class_names
        return names[1 - positive] if len(names) == 2 else f"not {names[positive]}"


def read_evaluation(folder: Path, name: str, split: str) -> RunEvaluation:
    """The scores run.json keeps for `split`, and the split's texts when the data folder still matches them."""
    try:
        record = json.loads((Path(folder) / RECORD_FILE).read_text(encoding="utf-8"))
        raw = record.get("scores", {}).get(split)
        class_names = tuple(record.get("data", {}).get("labels") or ("ham", "spam"))
    except (OSError, ValueError, AttributeError) as error:
        raise gr.Error(f"the record of run {name} is unreadable ({error}): choose another run") from None
    if not raw:
        raise gr.Error(f"run {name} has no per-message scores (stopped before its final evaluation, or trained by an older version): choose a finished run")
    labels = [int(v) for v in raw["labels"]]
    full = "probabilities" in raw  # records of older versions kept P(class 1) only
    scores = Scores(labels, [[float(p) for p in row] for row in raw["probabilities"]]) if full else Scores.binary(labels, raw["p_positive"])
    final = (record.get("final") or {}).get(split) or {}
    return RunEvaluation(name, split, class_names, scores, split_texts(record, split, scores.labels), final.get("confusion"))


def split_texts(record: dict, split: str, labels: list[int]) -> list[str] | None:
    """The split's messages from the run's data folder, if its rows still carry exactly these labels."""
    folder = (record.get("config") or {}).get("data")
    if not folder:
        return None
    try:
        frame = pd.read_csv(Path(folder) / f"{split}.csv", dtype={"Label": int, "Text": str}, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError):
        return None
    if len(frame) != len(labels) or frame["Label"].tolist() != labels:
        return None
    return frame["Text"].tolist()


def confusion_html(confusion: list[list[int]], class_names: Sequence[str], caption: str) -> str:
    """A confusion matrix as an HTML table, cells shaded by their share of the row (the true class)."""
    head = "".join(f"<th>predicted {html.escape(name)}</th>" for name in class_names)
    body = []
    for true_index, row in enumerate(confusion):
        total = sum(row) or 1
        cells = []
        for predicted_index, count in enumerate(row):
            rgb = (44, 160, 44) if predicted_index == true_index else SPAM_RGB
            alpha = 0.12 + 0.6 * count / total
            cells.append(f"<td style='background:rgba({rgb[0]},{rgb[1]},{rgb[2]},{alpha:.2f});text-align:center;padding:8px 18px'>{count}</td>")
        body.append(f"<tr><th style='text-align:right;padding-right:10px'>true {html.escape(class_names[true_index])}</th>{''.join(cells)}</tr>")
    return (
        "<table class='confusion' style='border-collapse:collapse;font-size:1.05em'>"
        f"<caption style='caption-side:top;text-align:left'>{html.escape(caption)}</caption>"
        f"<tr><th></th>{head}</tr>{''.join(body)}</table>"
    )


def threshold_frame(evaluation: RunEvaluation, threshold: float, positive: int = 1) -> pd.DataFrame:
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


def roc_frame(evaluation: RunEvaluation, positive: int = 1) -> tuple[pd.DataFrame | None, float | None]:
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


def mistakes_frame(evaluation: RunEvaluation, threshold: float, positive: int = 1) -> pd.DataFrame | None:
    if evaluation.texts is None:
        return None
    names = evaluation.class_names
    score = f"P({names[positive]})"
    rows = [
        {"message": m.text, "true": names[m.label], "predicted": names[m.predicted], score: round(m.p_positive, 3)}
        for m in mistakes(evaluation.scores, evaluation.texts, threshold, positive)
    ]
    return pd.DataFrame(rows, columns=["message", "true", "predicted", score])


def token_heatmap_html(tokens: Sequence[TokenScore], positive: str) -> str:
    """Each token shaded by P(positive) after reading up to it: blue towards the other class, red towards `positive`."""
    spans = []
    for token in tokens:
        p = token.p_spam
        rgb, strength = (SPAM_RGB, p - 0.5) if p >= 0.5 else (HAM_RGB, 0.5 - p)
        spans.append(
            f"<span class='token' title='P({html.escape(positive)}) = {p:.3f}' data-p='{p:.4f}' "
            f"style='background:rgba({rgb[0]},{rgb[1]},{rgb[2]},{0.08 + 1.6 * strength:.2f});border-radius:3px;padding:1px 0'>{html.escape(token.token)}</span>"
        )
    final = tokens[-1].p_spam if tokens else float("nan")
    legend = (
        f"<div style='font-size:0.85em;margin-top:6px'>Colour: P({html.escape(positive)}) after reading up to that token "
        f"(<span style='background:rgba({SPAM_RGB[0]},{SPAM_RGB[1]},{SPAM_RGB[2]},0.7)'>&nbsp;towards {html.escape(positive)}&nbsp;</span> "
        f"<span style='background:rgba({HAM_RGB[0]},{HAM_RGB[1]},{HAM_RGB[2]},0.7)'>&nbsp;away from it&nbsp;</span>); "
        f"hover a token for its value. After the last token: {final:.3f}.</div>"
    )
    return f"<div id='token-heat' style='white-space:pre-wrap;line-height:1.9;font-family:monospace'>{''.join(spans)}</div>{legend}"


def influence_frame(influences: Sequence[WordInfluence], positive: str) -> pd.DataFrame | None:
    """The strongest words, labelled uniquely (a repeated word gets its occurrence number) for a bar chart."""
    if not influences:
        return None
    seen: dict[str, int] = {}
    rows = []
    for item in influences[:MAX_INFLUENCE_BARS]:
        seen[item.word] = seen.get(item.word, 0) + 1
        word = item.word if seen[item.word] == 1 else f"{item.word} ({seen[item.word]})"
        rows.append(
            {
                "word": word,
                "influence": round(item.influence, 4),
                "direction": f"towards {positive}" if item.influence > 0 else f"away from {positive}",
                f"P({positive}) without it": round(item.p_spam_without, 4),
            }
        )
    return pd.DataFrame(rows)


def quality_markdown(summary: DataSummary | None) -> str:
    if summary is None:
        return "Data quality: no data yet."
    d = summary.duplicates or {}
    if not d:
        return "Data quality: this data was prepared by an older version; prepare it again to see its duplicates."
    across = d.get("across_splits", {})
    shared = ", ".join(f"{pair}: {n}" for pair, n in across.items())
    state = (
        "**De-duplicated**: one copy of each (label, text) pair was kept before balancing and splitting."
        if summary.deduplicated
        else "Not de-duplicated: tick *De-duplicate before splitting* and prepare the data again to drop the extra copies."
    )
    return (
        f"### Data quality\n{d.get('messages', 0):,} messages, {d.get('distinct_texts', 0):,} distinct texts: "
        f"**{d.get('repeated_texts', 0):,} texts occur more than once** ({d.get('extra_copies', 0):,} extra copies); "
        f"{d.get('conflicting_labels', 0):,} texts carry two different labels.\n\n"
        f"Texts found in two splits (a test message also seen in training measures memory, not learning): {shared or 'none'}.\n\n{state}"
    )


def repeated_frame(summary: DataSummary | None) -> pd.DataFrame | None:
    rows = (summary.duplicates or {}).get("most_repeated") if summary else None
    return pd.DataFrame([(text, copies) for text, copies in rows], columns=["message", "copies"]) if rows else None


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


def series_colors(names: Sequence[str]) -> dict[str, str]:
    """A colour per series name, in order of first appearance (cycling through the palette)."""
    unique = list(dict.fromkeys(names))
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(unique)}


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


# --- handlers ------------------------------------------------------------------------------------


class Insight:
    """The insight views' handlers over one app Lab.

    Args:
        lab: the app's Lab (shared training job, settings, classifier cache and its lock).
        make_config: the app's widgets-to-RunConfig function: (settings, *control values, out_dir) -> RunConfig.
    """

    def __init__(self, lab: LabLike, make_config: Callable[..., RunConfig]) -> None:
        self.lab = lab
        self.make_config = make_config

    @property
    def out(self) -> Path:
        return Path(self.lab.settings.out)

    # Evaluate tab

    def evaluated_runs(self) -> list[tuple[str, RunSummary]]:
        return [(name, run) for name, run in all_runs(self.out) if run.validation_accuracy is not None]

    def evaluation_choices(self) -> gr.Dropdown:
        """The finished runs to evaluate, newest first (the picker's choices, so not a plain value)."""
        names = [name for name, _ in self.evaluated_runs()]
        return gr.Dropdown(choices=names, value=names[0] if names else None, allow_custom_value=True)

    def positive_choices(self, run: str | None, current: str | None = None) -> gr.Dropdown:
        """The run's classes to pick the positive one from; the current choice stays when the run has it."""
        found = dict(self.evaluated_runs()).get(run) if run else None
        if found is None:
            return gr.Dropdown(choices=[], value=None)
        evaluation = read_evaluation(found.folder, run, "validation")
        names = list(evaluation.class_names)
        return gr.Dropdown(choices=names, value=current if current in names else evaluation.default_positive())

    def evaluate(
        self, run: str | None, split: str, threshold: float, positive: str | None = None
    ) -> tuple[str, str, pd.DataFrame | None, pd.DataFrame | None, pd.DataFrame | None]:
        """Confusion matrix, metrics at `threshold`, ROC and the misclassified messages of one finished run.

        The threshold, ROC and mistakes are one-vs-rest for the `positive` class (spam by default):
        it is predicted when its probability reaches the threshold, any other class otherwise.
        """
        if not run:
            return "No finished run yet: train one on the Train tab (or run a sweep on Runs), then come back.", "", None, None, None
        if split not in SPLITS:
            raise gr.Error(f"unknown split {str(split)[:40]!r}: choose validation or test")
        if not isinstance(threshold, int | float) or not 0 <= threshold <= 1:
            raise gr.Error("the threshold must be a number from 0 to 1")
        found = dict(self.evaluated_runs()).get(run)
        if found is None:
            raise gr.Error(f"no finished run called {str(run)[:80]!r} in {self.out}: press Refresh and choose one from the list")
        evaluation = read_evaluation(found.folder, run, split)
        names = evaluation.class_names
        chosen = positive or evaluation.default_positive()
        if chosen not in names:
            raise gr.Error(f"run {run} has no class {str(chosen)[:40]!r}: choose one of {', '.join(names)}")
        index, threshold = names.index(chosen), float(threshold)
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
        result = f"{mistakes_count} mistakes, accuracy {100 * metrics.accuracy:.1f}%.{auc_text}{texts}"
        summary = f"Run **{run}**, full {split} set: {metrics.count} messages. {rule}: {result}"
        table = confusion_html(metrics.confusion, (rest, chosen), f"{split} set at threshold {threshold:.2f}, {chosen} vs the rest")
        if len(names) > 2:  # the threshold view is one class against the rest: show every class's answers too
            table = confusion_html(evaluation.confusion or [], names, f"{split} set, each message given its most likely class") + "<br>" + table
        return summary, table, threshold_frame(evaluation, threshold, index), roc, wrong

    # Classify tab: why this answer, classify a file

    def explain(self, message: str, adapter_file: str | None) -> tuple[str, pd.DataFrame | None, pd.DataFrame | None]:
        """P(spam) token by token (one causal pass) and the words whose removal moves it most."""
        if not isinstance(message, str) or not message.strip():
            raise gr.Error("the message is empty: type a message to explain, then press Explain")
        with self.lab._classify_lock:
            _, classifier = self.lab._classifier_for(adapter_file)
            try:
                tokens = token_scores(classifier, message)
                influences = word_influence(classifier, message)
            except LoRALabError as error:
                raise user_error(error) from None
            positive = classifier.config.labels[spam_index(classifier)]
        words = influence_frame(influences, positive)
        return token_heatmap_html(tokens, positive), words, words

    def classify_upload(self, path: str | None, adapter_file: str | None) -> tuple[str, pd.DataFrame]:
        """Classify every message of an uploaded file; a CSV of label and probabilities to download."""
        source = uploaded_path(path, "a file of messages (one per line, or a CSV/TSV with a text column)")
        destination = Path(tempfile.mkdtemp(prefix="lora-lab-predictions-")) / f"{source.stem}-predictions.csv"
        with self.lab._classify_lock:
            _, classifier = self.lab._classifier_for(adapter_file)
            try:
                table = classify_file(classifier, source, destination)
            except LoRALabError as error:
                raise user_error(error) from None
        return str(destination), table.head(20)

    # Data tab

    def data_quality(self) -> tuple[str, pd.DataFrame | None]:
        summary = load_summary(Path(self.lab.settings.cache))
        return quality_markdown(summary), repeated_frame(summary)

    # Runs tab

    def history(self) -> pd.DataFrame | None:
        return history_frame(all_runs(self.out))

    def overlay_choices(self) -> gr.Dropdown:
        """Runs with loss curves; the newest two chosen (the picker's choices, so not a plain value)."""
        names = [name for name, run in all_runs(self.out) if run.losses]
        return gr.Dropdown(choices=names, value=names[:2], multiselect=True, allow_custom_value=True)

    def overlay(self, chosen: Sequence[str] | None) -> pd.DataFrame | None:
        if chosen is not None and not isinstance(chosen, list | tuple):
            raise gr.Error("choose runs from the list")
        return overlay_frame(all_runs(self.out), list(chosen or ()))

    def clear_overlay(self) -> None:
        """Empties a plot before it shows other series: other runs, other words (see PALETTE's note)."""
        return None

    def overlay_plot(self, chosen: Sequence[str] | None) -> gr.LinePlot:
        """The overlay for the page: the frame plus a colour per series, so the legend follows the chosen runs."""
        frame = self.overlay(chosen)
        return gr.LinePlot(value=frame, color_map=series_colors(frame["run"]) if frame is not None else None)

    def start_sweep(self, ranks: Sequence[Any], *controls: Any) -> tuple[Any, ...]:
        """Train the Model & LoRA settings once per chosen rank, one after another, in the app's job."""
        try:
            chosen = sorted({int(rank) for rank in ranks or ()})
        except (TypeError, ValueError):
            raise gr.Error("ranks must be whole numbers: tick them in the list") from None
        if not chosen:
            raise gr.Error("tick at least one rank for the sweep")
        model = self.lab.check_model(controls[0])
        try:
            cfg = self.make_config(self.lab.settings, model, *controls[1:], sweep_dir(self.out))
        except LoRALabError as error:
            raise user_error(error) from None
        self.lab.check_batch_size(cfg.train.batch_size)
        if not self.lab.job.start(cfg, chosen):
            gr.Info("A training run or sweep is already going: showing it. Stop it first to start a sweep.")
        return self.poll_sweep()

    def poll_sweep(self) -> tuple[Any, ...]:
        snapshot = self.lab.job.snapshot()
        table = sweep_frame(snapshot.sweep)
        done = None if snapshot.running else table  # the plots show a finished (or stopped) sweep: see PALETTE's note
        colors = series_colors(done["rank"]) if done is not None else None

        def plot(x: str) -> gr.ScatterPlot:  # axes from 0 with some room, so no point sits on an edge
            return gr.ScatterPlot(value=done, color_map=colors, x_lim=[0, 1.1 * float(done[x].max()) or 1] if done is not None else None)

        return sweep_status(snapshot), table, plot("trainable parameters"), plot("training time (s)"), gr.Timer(active=snapshot.running)

    def stop_sweep(self) -> str:
        return "stopping after the current step..." if self.lab.job.stop() else self.lab.job.snapshot().status


# --- builders ---------------------------------------------------------------------------------------


def build_quality(insight: Insight) -> tuple[gr.Markdown, gr.Dataframe]:
    """The Data tab's duplicates section; app.py refreshes it after each download or upload."""
    with gr.Accordion("Data quality: repeated messages", open=True):
        quality = gr.Markdown(elem_id="data-quality")
        repeated = gr.Dataframe(label="Most repeated messages", interactive=False, wrap=True, max_height=260, elem_id="repeated")
    return quality, repeated


def build_classify_extras(insight: Insight, message: gr.Textbox, adapter_file: gr.File) -> None:
    """Why this answer, and classify a file, under the Classify tab's own controls."""
    with gr.Accordion("Why this answer?", open=True):
        explain_button = gr.Button("Explain this message", elem_id="explain")
        heat = gr.HTML(label="P(spam) as the model reads the message", elem_id="token-heatmap")
        with gr.Row():
            bars = gr.BarPlot(
                x="word",
                y="influence",
                color="direction",
                sort="-y",
                title="Leave one word out: how much each word moves the answer",
                height=300,
                elem_id="word-influence",
                scale=2,
            )
            words = gr.Dataframe(label="Words that moved the decision most", interactive=False, elem_id="word-table", scale=1)
    with gr.Accordion("Classify a file", open=False):
        source = uploaded_file(
            label="A text file (one message per line) or a CSV/TSV with a text column", file_types=[".txt", ".csv", ".tsv"], height=130, elem_id="batch-file"
        )
        batch_button = gr.Button("Classify the file", elem_id="classify-file")
        result = gr.File(label="Download: label and probabilities per message (CSV)", interactive=False, elem_id="batch-result")
        preview = gr.Dataframe(label="First answers", interactive=False, wrap=True, elem_id="batch-preview")
    # The bars are cleared first: a message whose words push both ways needs a fresh legend (see PALETTE's note).
    explain_button.click(insight.clear_overlay, None, bars, api_name="clear_explanation", show_progress="hidden").then(
        insight.explain, [message, adapter_file], [heat, bars, words], api_name="explain", concurrency_id="classify", concurrency_limit=1
    )
    batch_button.click(
        insight.classify_upload, [source, adapter_file], [result, preview], api_name="classify_file", concurrency_id="classify", concurrency_limit=1
    )


def build_evaluate_tab(insight: Insight, demo: gr.Blocks) -> gr.Tab:
    with gr.Tab("Evaluate") as tab:
        gr.Markdown("How a finished run does on every message of the validation (or test) set, and what changes when spam needs more, or less, certainty.")
        with gr.Row():
            run = gr.Dropdown(
                [], label="Run", info="finished runs, newest first", allow_custom_value=True, elem_id="eval-run", scale=2
            )  # the handler checks the name
            split = gr.Radio(list(SPLITS), value="validation", label="Messages", elem_id="eval-split", scale=1)
            refresh = gr.Button("Refresh", size="sm", elem_id="eval-refresh", scale=0)
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
                confusion = gr.HTML(elem_id="confusion")
                metrics = gr.Dataframe(label="At this threshold", interactive=False, elem_id="eval-metrics")
            roc = gr.LinePlot(
                x="false positive rate",
                y="true positive rate",
                color="curve",
                color_map=ROC_COLORS,
                title="ROC curve: every threshold at once",
                x_lim=[0, 1],
                y_lim=[0, 1],
                height=320,
                elem_id="roc",
                scale=1,
            )
        wrong = gr.Dataframe(label="Misclassified messages, most confident mistakes first", interactive=False, wrap=True, max_height=360, elem_id="mistakes")
    views = [summary, confusion, metrics, roc, wrong]
    inputs = [run, split, threshold, positive]
    # A chosen run brings its own classes: the positive-class picker is refilled before evaluating.
    gr.on([tab.select, refresh.click], insight.evaluation_choices, None, run, api_name="evaluation_runs", show_progress="hidden").then(
        insight.positive_choices, [run, positive], positive, api_name="positive_classes_refreshed", show_progress="hidden"
    ).then(insight.evaluate, inputs, views, api_name="evaluate_refreshed", show_progress="hidden")
    run.input(insight.positive_choices, [run, positive], positive, api_name="positive_classes", show_progress="hidden").then(
        insight.evaluate, inputs, views, api_name="evaluate_run", show_progress="hidden"
    )
    gr.on([split.change, threshold.change, positive.input], insight.evaluate, inputs, views, api_name="evaluate", show_progress="hidden")
    return tab


def build_runs_tab(insight: Insight, demo: gr.Blocks, controls: Sequence[gr.components.Component]) -> gr.Tab:
    with gr.Tab("Runs") as tab:
        refresh = gr.Button("Refresh", size="sm", elem_id="runs-refresh")
        history = gr.Dataframe(label="Run history (each run's folder is under the runs folder)", interactive=False, max_height=300, elem_id="run-history")
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
        table = gr.Dataframe(label="Sweep results", interactive=False, elem_id="sweep-table")
        timer = gr.Timer(1.0, active=False)
    sweep_view = [status, table, by_params, by_time, timer]
    gr.on([tab.select, refresh.click], insight.history, None, history, api_name="run_history", show_progress="hidden").then(
        insight.overlay_choices, None, chosen, api_name="overlay_runs", show_progress="hidden"
    )
    chosen.change(insight.clear_overlay, None, overlay, api_name="clear_overlay", show_progress="hidden").then(
        insight.overlay_plot, chosen, overlay, api_name="overlay", show_progress="hidden"
    )
    start.click(insight.start_sweep, [ranks, *controls], sweep_view, api_name="start_sweep", show_progress="hidden")
    timer.tick(insight.poll_sweep, None, sweep_view, api_name="poll_sweep", show_progress="hidden", concurrency_limit=None)
    stop.click(insight.stop_sweep, None, status, api_name="stop_sweep", concurrency_limit=None)
    gr.on([demo.load, tab.select], insight.poll_sweep, None, sweep_view, api_name="attach_sweep", show_progress="hidden", concurrency_limit=None)
    return tab
