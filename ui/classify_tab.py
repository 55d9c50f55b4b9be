"""The Classify tab: one message (fine-tuned next to untrained), many lines, why this answer, a whole file.

The model that answers is chosen from one list of finished runs, the same as Evaluate's (ui.answering:
by default the visitor's own latest finished run, else the presenter's); an uploaded adapter
replaces it, and the header above always names what answers (a run answers with its best adapter, lowest
validation loss, unless its last is chosen). Classification has its own queue
("classify", one at a time), never behind training or a download: visitors can classify while a run goes.
"""

import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from engine.batch import classify_file
from engine.classifier import Classifier, Prediction
from engine.explain import TokenScore, WordInfluence, explained_class, token_scores, word_influence
from engine.runs.adapters import kept_adapter
from ui.answering import adapter_choice, adapter_picker, choice_label, default_run
from ui.guards import deleted_if_refused, engine_errors_as_toasts, message_problem, output_path, uploaded_file, uploaded_path, written_output
from ui.lab import Lab, no_run_words
from ui.views import AWAY_RGB, TOWARDS_RGB, plural, rgba, text_last

EXAMPLE_MESSAGES = (
    "You are a winner you have been specially selected to receive $1000 cash or a $2000 award.",
    "Hey, just wanted to check if we're still on for dinner tonight? Let me know!",
    "URGENT! Your mobile number has won a £2,000 prize. Call 09061701461 to claim, T&C apply.",
    "Sorry I'm running late, the bus broke down. Be there in 20 min.",
)
MAX_BATCH_MESSAGES = 500  # lines per "classify many" request
MAX_INFLUENCE_BARS = 15
MANY_COLUMNS = ["line", "label", "probability", "note", "message"]  # the answer first: long messages wrap at the end
PREVIEW_ROWS = 20


def direction_legend(towards: str, away: str) -> str:
    """A legend in the one colour code of "Why this answer?" (red for the positive class, blue against it);
    each view names its own quantity: the heat map a probability, the bars a change in it."""
    swatch = "display:inline-block;width:0.9em;height:0.9em;border-radius:2px;vertical-align:-0.1em;margin:0 4px 0 10px"
    return (
        "<span class='direction-legend'>"
        f"<span class='swatch towards' style='{swatch};background:{rgba(TOWARDS_RGB, 0.85)}'></span>{towards}"
        f"<span class='swatch away' style='{swatch};background:{rgba(AWAY_RGB, 0.85)}'></span>{away}</span>"
    )


def token_heatmap_html(tokens: Sequence[TokenScore], positive: str) -> str:
    """Each token shaded by P(positive) after reading up to it: red above 0.5, blue below."""
    p_name = f"P({html.escape(positive)})"
    spans = []
    for token in tokens:
        p = token.probability
        rgb, strength, direction = (TOWARDS_RGB, p - 0.5, "towards") if p >= 0.5 else (AWAY_RGB, 0.5 - p, "away")
        spans.append(
            f"<span class='token {direction}' title='{p_name} = {p:.3f}' data-p='{p:.4f}' "
            f"style='background:{rgba(rgb, 0.08 + 1.6 * strength)};border-radius:3px;padding:1px 0'>{html.escape(token.token)}</span>"
        )
    final = tokens[-1].probability if tokens else float("nan")
    legend = (
        f"<div class='heat-legend' style='font-size:0.85em;margin-top:6px'><strong>Reading along:</strong> {p_name} after reading up to each token"
        f"{direction_legend(f'{p_name} above 0.5', f'{p_name} below 0.5')}. "
        f"Hover a token for its value. After the last token, the answer: {final:.3f}.</div>"
    )
    return f"<div id='token-heat' style='white-space:pre-wrap;line-height:1.9;font-family:monospace'>{''.join(spans)}</div>{legend}"


def influence_html(influences: Sequence[WordInfluence], positive: str) -> str:
    """The strongest words as bars either side of zero, in the heat map's colours, with their numbers."""
    if not influences:
        return ""
    shown = influences[:MAX_INFLUENCE_BARS]
    largest = max(abs(item.influence) for item in shown) or 1.0
    p_name = f"P({html.escape(positive)})"
    word = "text-align:right;max-width:14em;overflow:hidden;text-overflow:ellipsis;white-space:nowrap"
    half = "height:1.1em;display:flex"
    axis = f"{half};justify-content:flex-end;border-right:1px solid #999"
    number = "text-align:right;font-variant-numeric:tabular-nums"
    head = "font-size:0.8em;opacity:0.75"
    rows = []
    for item in shown:
        towards = item.influence > 0
        width = 100 * abs(item.influence) / largest
        colour = rgba(TOWARDS_RGB if towards else AWAY_RGB, 0.85)
        bar = f"<div class='bar {'towards' if towards else 'away'}' style='width:{width:.1f}%;height:100%;border-radius:2px;background:{colour}'></div>"
        rows.append(
            f"<div class='word' title='{html.escape(item.word)}' style='{word}'>{html.escape(item.word)}</div>"
            f"<div style='{axis}'>{'' if towards else bar}</div><div style='{half}'>{bar if towards else ''}</div>"
            f"<div style='{number}'>{item.influence:+.3f}</div><div style='{number}'>{item.probability_without:.3f}</div>"
        )
    header = (
        f"<div style='{head};text-align:right'>word</div><div style='{head};text-align:right'>lowers {p_name}</div>"
        f"<div style='{head}'>raises {p_name}</div><div style='{head};{number}'>change in {p_name}</div><div style='{head};{number}'>{p_name} without it</div>"
    )
    grid = "display:grid;grid-template-columns:minmax(4em,max-content) 1fr 1fr max-content max-content;gap:3px 10px;align-items:center;min-width:30em"
    legend = (
        f"<div class='bars-legend' style='font-size:0.85em;margin:10px 0 6px'><strong>Word by word:</strong> how much each word changes the final {p_name} "
        f"(the message read again without it){direction_legend(f'the word raises {p_name}', f'the word lowers {p_name}')}</div>"
    )
    why = (
        "<div class='why-they-differ' style='font-size:0.85em;margin-top:8px;opacity:0.85'>The two views measure different things, so they can disagree: "
        f"the colours above follow {p_name} while the model is still reading (the start of a message is often blue, before the words that "
        "decide it arrive); the bars weigh each word within the whole message. A word read in blue can still raise the final answer.</div>"
    )
    # The grid keeps its columns on a phone and scrolls sideways instead.
    return f"{legend}<div style='overflow-x:auto'><div class='influence-bars' style='{grid}'>{header}{''.join(rows)}</div></div>{why}"


def explanation_html(classifier: Classifier, message: str) -> tuple[str, str]:
    """Why this answer: the token heat map and the words that moved it most (call under the Lab's classify lock)."""
    with engine_errors_as_toasts(str(classifier.device), "explaining"):
        positive = explained_class(classifier, message)
        tokens = token_scores(classifier, message, positive)
        influences = word_influence(classifier, message, positive)
    return token_heatmap_html(tokens, positive), influence_html(influences, positive)


def answers_frame(lines: Sequence[tuple[int, str]], predictions: dict[int, Prediction], problems: dict[int, str | None]) -> pd.DataFrame:
    """One row per line that holds something: its answer first, or why it was skipped, then the message."""
    rows = []
    for number, line in lines:
        prediction = predictions.get(number)
        shown = line if len(line) <= 200 else line[:200] + "…"
        if prediction is None:
            rows.append((number, "", None, f"skipped: {problems[number]}", shown))
        else:
            note = "cut to the length limit" if prediction.truncated else ""
            rows.append((number, prediction.label, round(prediction.probabilities[prediction.label], 4), note, shown))
    return pd.DataFrame(rows, columns=MANY_COLUMNS)


def many_summary(answered: int, skipped: Sequence[str], blank: int) -> str:
    """One line above the answers: how many were classified, what was skipped and why."""
    parts = [f"{plural(answered, 'message')} classified"]
    if skipped:
        more = f" (and {len(skipped) - 1} more)" if len(skipped) > 1 else ""
        parts.append(f"{len(skipped)} skipped: {skipped[0]}{more}")
    if blank:
        parts.append(f"{plural(blank, 'blank line')} ignored")
    return "; ".join(parts) + "."


def preview_frame(table: pd.DataFrame) -> pd.DataFrame:
    """The first answers of a classified file, answer first and the message last."""
    columns = [name for name in table.columns if name != "message"] + ["message"]
    return table[columns].head(PREVIEW_ROWS)


class ClassifyTab:
    """The Classify tab's handlers over the app's Lab (its classifier cache and lock)."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab

    def classify(
        self, message: str, adapter_file: str | None, run: str | None = None, request: gr.Request | None = None, which: str | None = "best"
    ) -> tuple[dict[str, float], dict[str, float] | None, str]:
        """The fine-tuned model's answer next to the untrained one's (the same model with LoRA off); `run`
        (a finished run's name) answers unless an adapter is uploaded; neither: the visitor's default run."""
        problem = message_problem(message)
        if problem:
            raise gr.Error(problem)
        with self.lab.classify_lock:
            answering, classifier = self.lab.classifier_for(adapter_file, run, self.lab.room.visitor(request), adapter_choice(which))
            with engine_errors_as_toasts(str(classifier.device), "classifying"):
                before, after = classifier.compare_with_base(message)
        cut = " (the message was cut to the model's length limit)" if after.truncated else ""
        details = f"{after.tokens} tokens read{cut}. Answered by {answering}; base model: {Path(classifier.config.base_model).name}."
        if before is None:
            details += " This run retrained the model's own weights (no LoRA), so there is no untouched model to compare with."
        return dict(after.probabilities), dict(before.probabilities) if before else None, details

    def run_choices(self, current: str | None, request: gr.Request | None = None) -> gr.Dropdown:
        """The finished runs (the same list as Evaluate's), newest first; the current choice stays while it is in the list,
        else the visitor's default is chosen."""
        lab = self.lab
        visitor = lab.room.visitor(request)
        runs = lab.finished_runs()
        names = {run.name for run in runs}
        default = default_run(runs, visitor, lab.room.on)
        value = current if current in names else default.name if default else None
        return gr.Dropdown(choices=[(choice_label(run, visitor, lab.room.on), run.name) for run in runs], value=value)

    def refresh_runs(self, current: str | None, last: tuple | None, request: gr.Request | None = None) -> tuple[Any, tuple]:
        """The list again when a run of the queue finished since `last` (else nothing is sent), and the new key."""
        key = tuple(view.run.id for view in self.lab.scheduler.views() if view.run.state == "done")
        return (gr.skip() if key == last else self.run_choices(current, request)), key

    def classify_many(
        self, messages: str, adapter_file: str | None, run: str | None = None, request: gr.Request | None = None, which: str | None = "best"
    ) -> tuple[str, pd.DataFrame]:
        """One message per line: a summary and a table of answers. Lines are numbered as typed; blank
        lines are ignored, a line that cannot be classified is reported in its row."""
        if not isinstance(messages, str):
            raise gr.Error("send the messages as text, one per line")
        typed = [(number, line.removesuffix("\r")) for number, line in enumerate(messages.split("\n"), start=1)]
        lines = [(number, line) for number, line in typed if line.strip()]
        blank = len(typed) - len(lines) - int(messages.endswith("\n"))  # a final newline ends the last line: no blank line after it
        if not lines:
            raise gr.Error("no messages: type or paste one message per line")
        if len(lines) > MAX_BATCH_MESSAGES:
            raise gr.Error(f"{len(lines)} messages: classify at most {MAX_BATCH_MESSAGES} at a time, or use `python -m engine classify` for more")
        problems = {number: message_problem(line, number) for number, line in lines}
        good = [(number, line) for number, line in lines if problems[number] is None]
        with self.lab.classify_lock:
            _, classifier = self.lab.classifier_for(adapter_file, run, self.lab.room.visitor(request), adapter_choice(which))
            with engine_errors_as_toasts(str(classifier.device), "classifying"):
                predictions = dict(zip([n for n, _ in good], classifier.classify([line for _, line in good]) if good else [], strict=True))
        skipped = [problem for problem in problems.values() if problem]
        return many_summary(len(good), skipped, blank), answers_frame(lines, predictions, problems)

    def adapter_info(self, adapter_file: str | None = None, run: str | None = None, request: gr.Request | None = None, which: str | None = "best") -> str:
        """The header: what answers now (the uploaded adapter by its file name, else the chosen or default run, and which of its adapters)."""
        if adapter_file and isinstance(adapter_file, str):
            return f"**Answering: the uploaded adapter {Path(adapter_file).name}** (it replaces the run chosen below; remove it to use a run again)."
        visitor = self.lab.room.visitor(request)
        try:
            chosen = self.lab.answering_run(run, visitor)
            which = adapter_choice(which)
        except gr.Error as error:
            return f"**No model answers:** {error}"
        if chosen is None:
            return f"**{no_run_words(self.lab.room.on, bool(self.lab.finished_runs()))}**"
        label, kept = choice_label(chosen, visitor, self.lab.room.on, which), kept_adapter(chosen.summary, which)
        return f"**Answering: run {label} · {kept.words()}.** Choose another finished run or adapter below, or upload an adapter."

    def explain(
        self, message: str, adapter_file: str | None, run: str | None = None, request: gr.Request | None = None, which: str | None = "best"
    ) -> tuple[str, str]:
        """P(the explained class) token by token (one causal pass) and the words whose removal moves it most."""
        if not isinstance(message, str) or not message.strip():
            raise gr.Error("the message is empty: type a message to explain, then press Explain")
        with self.lab.classify_lock:
            _, classifier = self.lab.classifier_for(adapter_file, run, self.lab.room.visitor(request), adapter_choice(which))
            return explanation_html(classifier, message)

    def classify_upload(
        self, path: str | None, adapter_file: str | None, run: str | None = None, request: gr.Request | None = None, which: str | None = "best"
    ) -> tuple[str, pd.DataFrame]:
        """Classify every message of an uploaded file; a CSV of label and probabilities to download."""
        source = uploaded_path(path, "a file of messages (one per line, or a CSV/TSV with a text column)")
        destination = output_path(f"{source.stem}-predictions.csv")
        with self.lab.classify_lock:
            _, classifier = self.lab.classifier_for(adapter_file, run, self.lab.room.visitor(request), adapter_choice(which))
            with deleted_if_refused(source), deleted_if_refused(destination), engine_errors_as_toasts(str(classifier.device), "classifying the file"):
                table = classify_file(classifier, source, destination)
                preview = preview_frame(table)
        return str(written_output(destination)), preview


def clear_on_failure(event: gr.events.Dependency, outputs: list[Any]) -> None:
    """A failed event leaves its outputs empty: an error clears them, with no badge left over."""
    empty = (None,) * len(outputs) if len(outputs) > 1 else None
    event.failure(lambda: empty, None, outputs, show_progress="hidden", api_visibility="private")


def build_classify_tab(classify: ClassifyTab, demo: gr.Blocks, train_timer: gr.Timer) -> tuple[gr.Dropdown, gr.Radio]:
    """The Classify tab, wired; returns its list of runs and its choice of adapter (Evaluate's follow them). A run that finishes joins the list as
    the Train tab's timer ticks."""
    with gr.Tab("Classify") as tab:
        adapter_status = gr.Markdown(elem_id="adapter-status")
        with gr.Row(equal_height=True):
            with gr.Column(scale=2):
                run = gr.Dropdown(
                    [],
                    label="Run that answers",
                    info="finished runs, newest first (the same list as on Evaluate)",
                    allow_custom_value=True,  # a script may name any finished run; the handlers check it
                    elem_id="answering-run",
                )
                which = adapter_picker("answering-adapter")
            adapter_file = uploaded_file(
                label="Or upload an adapter (optional): an adapter.safetensors file replaces the run while it is here",
                file_types=[".safetensors"],
                height=130,
                elem_id="adapter-file",
                scale=3,
            )
        message = gr.Textbox(label="Message", lines=3, placeholder="Type an SMS, or pick an example below", elem_id="message")
        build_examples(message)
        classify_button = gr.Button("Classify", variant="primary", elem_id="classify")
        with gr.Row():
            after = gr.Label(label="Fine-tuned model", elem_id="prediction-after")
            before = gr.Label(label="Untrained model (LoRA off)", elem_id="prediction-before")
        details = gr.Markdown(elem_id="classify-details")
        with gr.Accordion("Classify many messages at once", open=False):
            many = gr.Textbox(label="Messages, one per line", lines=6, elem_id="many")
            classify_many_button = gr.Button("Classify every line", elem_id="classify-many")
            many_summary_line = gr.Markdown(elem_id="many-summary")
            many_results = gr.Dataframe(
                headers=MANY_COLUMNS,
                label="Answers of the fine-tuned model",
                interactive=False,
                wrap=True,
                column_widths=text_last(len(MANY_COLUMNS), "50%"),
                elem_id="many-results",
            )
        build_explain(classify, message, adapter_file, run, which)
        build_classify_file(classify, adapter_file, run, which)
        finished = gr.State(None)  # the finished runs the list last showed (created in the tab: see the Train tab's note)

    answers = [after, before, details]
    classified = gr.on(
        [classify_button.click, message.submit],
        classify.classify,
        [message, adapter_file, run, which],
        answers,
        api_name="classify",
        concurrency_id="classify",
        concurrency_limit=1,
    )
    clear_on_failure(classified, answers)
    many_answers = [many_summary_line, many_results]
    classified_many = classify_many_button.click(
        classify.classify_many,
        [many, adapter_file, run, which],
        many_answers,
        api_name="classify_many",
        concurrency_id="classify",
        concurrency_limit=1,
    )
    clear_on_failure(classified_many, many_answers)
    gr.on([demo.load, tab.select], classify.run_choices, run, run, api_name="answering_runs", show_progress="hidden", concurrency_limit=None).then(
        # named apart: left to Gradio, this private event would take the name "adapter_info" from the public one below
        classify.adapter_info,
        [adapter_file, run, which],
        adapter_status,
        api_name="adapter_info_on_open",
        show_progress="hidden",
        api_visibility="private",
    )
    train_timer.tick(classify.refresh_runs, [run, finished], [run, finished], api_visibility="private", show_progress="hidden", concurrency_limit=None)
    gr.on(
        [run.change, adapter_file.change, which.change],
        classify.adapter_info,
        [adapter_file, run, which],
        adapter_status,
        api_name="adapter_info",
        show_progress="hidden",
        concurrency_limit=None,
    )
    return run, which


def build_examples(message: gr.Textbox) -> None:
    """The example messages, whole (gr.Examples cuts a text at 60 characters): a press copies one into the message box."""
    gr.Markdown("Examples: press one to put it in the message box.", elem_id="examples-note")
    with gr.Row(elem_id="examples"):
        for number, text in enumerate(EXAMPLE_MESSAGES, start=1):
            example = gr.Button(text, size="sm", elem_classes="example-message", elem_id=f"example-{number}")
            example.click(None, None, message, js=f"() => {json.dumps(text)}", api_visibility="private")  # in the page: no round trip to the server


def build_explain(classify: ClassifyTab, message: gr.Textbox, adapter_file: gr.File, run: gr.Dropdown, which: gr.Radio) -> None:
    """Why this answer: P(spam), or of the predicted class for three or more, token by token, and the
    words that moved it, in one colour code."""
    with gr.Accordion("Why this answer?", open=True):
        explain_button = gr.Button("Explain this message", elem_id="explain")
        heat = gr.HTML(label="The answer as the model reads the message", elem_id="token-heatmap")
        bars = gr.HTML(elem_id="word-influence")
    explained = explain_button.click(
        classify.explain,
        [message, adapter_file, run, which],
        [heat, bars],
        api_name="explain",
        concurrency_id="classify",
        concurrency_limit=1,
    )
    clear_on_failure(explained, [heat, bars])
    # An explanation speaks of the message it was made for: a new message (typed, pasted or an example) clears it.
    message.change(lambda: ("", ""), None, [heat, bars], show_progress="hidden", api_visibility="private")


def build_classify_file(classify: ClassifyTab, adapter_file: gr.File, run: gr.Dropdown, which: gr.Radio) -> None:
    """Classify a file: upload messages, download a CSV of label and probabilities."""
    with gr.Accordion("Classify a file", open=False):
        source = uploaded_file(
            label="A text file (one message per line) or a CSV/TSV with a text column", file_types=[".txt", ".csv", ".tsv"], height=130, elem_id="batch-file"
        )
        batch_button = gr.Button("Classify the file", elem_id="classify-file")
        result = gr.File(label="Download: label and probabilities per message (CSV)", interactive=False, elem_id="batch-result")
        preview = gr.Dataframe(headers=["label", "message"], label="First answers", interactive=False, wrap=True, elem_id="batch-preview")
    classified = batch_button.click(
        classify.classify_upload,
        [source, adapter_file, run, which],
        [result, preview],
        api_name="classify_file",
        concurrency_id="classify",
        concurrency_limit=1,
    )
    clear_on_failure(classified, [result, preview])
