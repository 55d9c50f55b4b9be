"""The Classify tab: one message (fine-tuned next to untrained), many lines, why this answer, a whole file.

Classification has its own queue ("classify", one at a time), never behind training or a download:
visitors can classify while a run goes.
"""

import html
import tempfile
from collections.abc import Sequence
from pathlib import Path

import gradio as gr
import pandas as pd

from engine.batch import classify_file
from engine.explain import TokenScore, WordInfluence, explained_class, token_scores, word_influence
from ui.guards import engine_errors_as_toasts, message_problem, uploaded_file, uploaded_path
from ui.lab import Lab
from ui.views import HAM_RGB, SPAM_RGB

EXAMPLE_MESSAGES = (
    "You are a winner you have been specially selected to receive $1000 cash or a $2000 award.",
    "Hey, just wanted to check if we're still on for dinner tonight? Let me know!",
    "URGENT! Your mobile number has won a £2,000 prize. Call 09061701461 to claim, T&C apply.",
    "Sorry I'm running late, the bus broke down. Be there in 20 min.",
)
MAX_BATCH_MESSAGES = 500  # lines per "classify many" request
MAX_INFLUENCE_BARS = 15


def token_heatmap_html(tokens: Sequence[TokenScore], positive: str) -> str:
    """Each token shaded by P(positive) after reading up to it: blue towards the other class, red towards `positive`."""
    spans = []
    for token in tokens:
        p = token.probability
        rgb, strength = (SPAM_RGB, p - 0.5) if p >= 0.5 else (HAM_RGB, 0.5 - p)
        spans.append(
            f"<span class='token' title='P({html.escape(positive)}) = {p:.3f}' data-p='{p:.4f}' "
            f"style='background:rgba({rgb[0]},{rgb[1]},{rgb[2]},{0.08 + 1.6 * strength:.2f});border-radius:3px;padding:1px 0'>{html.escape(token.token)}</span>"
        )
    final = tokens[-1].probability if tokens else float("nan")
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
                f"P({positive}) without it": round(item.probability_without, 4),
            }
        )
    return pd.DataFrame(rows)


def answers_frame(lines: Sequence[tuple[int, str]], predictions: dict, problems: dict[int, str | None]) -> pd.DataFrame:
    """One row per line: its answer, or why it was skipped."""
    rows = []
    for number, line in lines:
        prediction = predictions.get(number)
        shown = line if len(line) <= 200 else line[:200] + "…"
        if prediction is None:
            rows.append((number, shown, "", None, f"skipped: {problems[number]}"))
        else:
            note = "cut to the length limit" if prediction.truncated else ""
            rows.append((number, shown, prediction.label, round(prediction.probabilities[prediction.label], 4), note))
    return pd.DataFrame(rows, columns=["line", "message", "label", "probability", "note"])


class ClassifyTab:
    """The Classify tab's handlers over the app's Lab (its classifier cache and lock)."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab

    def classify(self, message: str, adapter_file: str | None) -> tuple[dict[str, float], dict[str, float], str]:
        """The fine-tuned model's answer next to the untrained one's (the same model with LoRA off)."""
        problem = message_problem(message)
        if problem:
            raise gr.Error(problem)
        with self.lab.classify_lock:
            adapter, classifier = self.lab.classifier_for(adapter_file)
            with engine_errors_as_toasts(str(classifier.device), "classifying"):
                before, after = classifier.compare_with_base(message)
        cut = " (the message was cut to the model's length limit)" if after.truncated else ""
        details = f"{after.tokens} tokens read{cut}. Adapter: {adapter}; base model: {classifier.config.base_model}."
        return dict(after.probabilities), dict(before.probabilities), details

    def classify_many(self, messages: str, adapter_file: str | None) -> pd.DataFrame:
        """One message per line: a table of answers. A bad line is reported in its row; the others still get answers."""
        if not isinstance(messages, str):
            raise gr.Error("send the messages as text, one per line")
        lines = [(number, line.removesuffix("\r")) for number, line in enumerate(messages.split("\n"), start=1) if line.removesuffix("\r")]
        if not lines:
            raise gr.Error("no messages: type or paste one message per line")
        if len(lines) > MAX_BATCH_MESSAGES:
            raise gr.Error(f"{len(lines)} messages: classify at most {MAX_BATCH_MESSAGES} at a time, or use `python -m engine classify` for more")
        problems = {number: message_problem(line, number) for number, line in lines}
        good = [(number, line) for number, line in lines if problems[number] is None]
        with self.lab.classify_lock:
            _, classifier = self.lab.classifier_for(adapter_file)
            with engine_errors_as_toasts(str(classifier.device), "classifying"):
                predictions = dict(zip([n for n, _ in good], classifier.classify([line for _, line in good]) if good else [], strict=True))
        bad = [problem for problem in problems.values() if problem]
        if bad:
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            gr.Warning(f"{len(bad)} of {len(lines)} lines skipped: {bad[0]}{more}")
        return answers_frame(lines, predictions, problems)

    def adapter_info(self) -> str:
        latest = self.lab.latest_adapter()
        return f"Using the latest trained adapter: {latest}" if latest else "No trained adapter yet: train one, or load an adapter.safetensors file."

    def explain(self, message: str, adapter_file: str | None) -> tuple[str, pd.DataFrame | None, pd.DataFrame | None]:
        """P(the explained class) token by token (one causal pass) and the words whose removal moves it most."""
        if not isinstance(message, str) or not message.strip():
            raise gr.Error("the message is empty: type a message to explain, then press Explain")
        with self.lab.classify_lock:
            _, classifier = self.lab.classifier_for(adapter_file)
            with engine_errors_as_toasts(str(classifier.device), "explaining"):
                positive = explained_class(classifier, message)
                tokens = token_scores(classifier, message, positive)
                influences = word_influence(classifier, message, positive)
        words = influence_frame(influences, positive)
        return token_heatmap_html(tokens, positive), words, words

    def clear_explanation(self) -> None:
        """Empties a plot before it shows other series: other runs, other words (see PALETTE's note)."""
        return None

    def classify_upload(self, path: str | None, adapter_file: str | None) -> tuple[str, pd.DataFrame]:
        """Classify every message of an uploaded file; a CSV of label and probabilities to download."""
        source = uploaded_path(path, "a file of messages (one per line, or a CSV/TSV with a text column)")
        destination = Path(tempfile.mkdtemp(prefix="lora-lab-predictions-")) / f"{source.stem}-predictions.csv"
        with self.lab.classify_lock:
            _, classifier = self.lab.classifier_for(adapter_file)
            with engine_errors_as_toasts(str(classifier.device), "classifying the file"):
                table = classify_file(classifier, source, destination)
        return str(destination), table.head(20)


def build_classify_tab(classify: ClassifyTab, demo: gr.Blocks, train_timer: gr.Timer) -> None:
    """The Classify tab, wired; a finished run's adapter becomes its default (refreshed as the Train tab's timer ticks)."""
    with gr.Tab("Classify"):
        adapter_status = gr.Markdown(elem_id="adapter-status")
        adapter_file = uploaded_file(
            label="Optional: an adapter.safetensors file to use instead", file_types=[".safetensors"], height=150, elem_id="adapter-file"
        )
        message = gr.Textbox(label="Message", lines=3, placeholder="Type an SMS, or pick an example below", elem_id="message")
        gr.Examples([[m] for m in EXAMPLE_MESSAGES], inputs=[message], label="Examples")
        classify_button = gr.Button("Classify", variant="primary", elem_id="classify")
        with gr.Row():
            after = gr.Label(label="Fine-tuned model", elem_id="prediction-after")
            before = gr.Label(label="Untrained model (LoRA off)", elem_id="prediction-before")
        details = gr.Markdown(elem_id="classify-details")
        with gr.Accordion("Classify many messages at once", open=False):
            many = gr.Textbox(label="Messages, one per line", lines=6, elem_id="many")
            classify_many_button = gr.Button("Classify every line", elem_id="classify-many")
            many_results = gr.Dataframe(label="Answers of the fine-tuned model", interactive=False, wrap=True, elem_id="many-results")
        build_explain(classify, message, adapter_file)
        build_classify_file(classify, adapter_file)

    gr.on(
        [classify_button.click, message.submit],
        classify.classify,
        [message, adapter_file],
        [after, before, details],
        api_name="classify",
        concurrency_id="classify",
        concurrency_limit=1,
    )
    classify_many_button.click(
        classify.classify_many, [many, adapter_file], many_results, api_name="classify_many", concurrency_id="classify", concurrency_limit=1
    )
    gr.on([demo.load, train_timer.tick], classify.adapter_info, None, adapter_status, api_name="adapter_info", show_progress="hidden", concurrency_limit=None)


def build_explain(classify: ClassifyTab, message: gr.Textbox, adapter_file: gr.File) -> None:
    """Why this answer: P(spam), or of the predicted class for three or more, token by token, and the words that moved it."""
    with gr.Accordion("Why this answer?", open=True):
        explain_button = gr.Button("Explain this message", elem_id="explain")
        heat = gr.HTML(label="The answer as the model reads the message", elem_id="token-heatmap")
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
    # The bars are cleared first: a message whose words push both ways needs a fresh legend (see PALETTE's note).
    explain_button.click(classify.clear_explanation, None, bars, api_name="clear_explanation", show_progress="hidden").then(
        classify.explain, [message, adapter_file], [heat, bars, words], api_name="explain", concurrency_id="classify", concurrency_limit=1
    )


def build_classify_file(classify: ClassifyTab, adapter_file: gr.File) -> None:
    """Classify a file: upload messages, download a CSV of label and probabilities."""
    with gr.Accordion("Classify a file", open=False):
        source = uploaded_file(
            label="A text file (one message per line) or a CSV/TSV with a text column", file_types=[".txt", ".csv", ".tsv"], height=130, elem_id="batch-file"
        )
        batch_button = gr.Button("Classify the file", elem_id="classify-file")
        result = gr.File(label="Download: label and probabilities per message (CSV)", interactive=False, elem_id="batch-result")
        preview = gr.Dataframe(label="First answers", interactive=False, wrap=True, elem_id="batch-preview")
    batch_button.click(
        classify.classify_upload, [source, adapter_file], [result, preview], api_name="classify_file", concurrency_id="classify", concurrency_limit=1
    )
