"""LoRA Lab's web app: `python app.py` opens http://127.0.0.1:7860.

Five tabs over `engine`: Data, Model & LoRA, Train, Parameters, Classify. Training runs in one
TrainingJob owned by the app, not by a browser session: a reloaded page or a second visitor
re-attaches to it through a 1 s timer. The app does no tensor math; every event has an api_name,
so `gradio_client` can script it. Nothing loads at import: `build_ui()` builds, `main()` launches.

What a visitor can reach is fenced: models are the four sizes plus the `--model` given at start,
uploads are read only from Gradio's own temporary copies (never a typed path or a URL), served files
are the runs folder's, and every bad input ends in a message naming the problem and the fix.
"""

import argparse
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # read when gradio is imported: no usage pings leave the machine

import gradio as gr  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from app_guards import exposure_warnings, memory_error, message_problem, parse_auth, uploaded_file, uploaded_path  # noqa: E402
from engine.adapter import read_adapter  # noqa: E402
from engine.classifier import Classifier  # noqa: E402
from engine.config import GPT2_SIZES, LORA_TARGETS, PADDINGS, POOLINGS, PRESETS, SCALINGS, LoRAConfig, RunConfig, TrainConfig, preset  # noqa: E402
from engine.data import SOURCES, PreparedData, load_summary, prepare  # noqa: E402
from engine.device import pick_device  # noqa: E402
from engine.download import DownloadProgress  # noqa: E402
from engine.errors import Cancelled, LoRALabError  # noqa: E402
from engine.job import JobSnapshot, LossRow, TrainingJob, format_seconds  # noqa: E402
from engine.memory import is_out_of_memory  # noqa: E402
from engine.model import generate_greedy  # noqa: E402
from engine.params import param_summary  # noqa: E402
from engine.tokenizer import decode, encode  # noqa: E402
from engine.weights import fetch, load_model, resolve  # noqa: E402
from insight_ui import Insight, build_classify_extras, build_evaluate_tab, build_quality, build_runs_tab, confusion_html  # noqa: E402

log = logging.getLogger("lora_lab.app")

SANITY_PROMPT = "Every effort moves you"
SANITY_TOKENS = 15
POLL_SECONDS = 1.0
MAX_BATCH_POINTS = 400  # each poll re-sends the whole plot frame: thin the per-step series of long runs
PREVIEW_PER_CLASS = 3
LOSS_COLORS = {"training batch": "#c7c7c7", "train": "#1f77b4", "validation": "#ff7f0e"}
SPLIT_NAMES = {"batch": "training batch", "train": "train", "validation": "validation"}
EXAMPLE_MESSAGES = (
    "You are a winner you have been specially selected to receive $1000 cash or a $2000 award.",
    "Hey, just wanted to check if we're still on for dinner tonight? Let me know!",
    "URGENT! Your mobile number has won a £2,000 prize. Call 09061701461 to claim, T&C apply.",
    "Sorry I'm running late, the bus broke down. Be there in 20 min.",
)
THEME = gr.themes.Soft()  # a built-in theme ships its fonts; GoogleFont themes fetch from the internet
# Gradio refuses bigger uploads. The largest adapter the controls can make (gpt2-xl, rank 64, every
# layer) is 354 MB; the data files are held to the engine's own, smaller limit.
MAX_UPLOAD_MB = 400
MAX_BATCH_MESSAGES = 500  # lines per "classify many" request


@dataclass(frozen=True)
class AppSettings:
    """What the command line decides; the UI never changes these."""

    model: str = "gpt2-small"  # the model selected at start: a size name or a local folder
    device: str = "auto"
    out: Path = Path("runs")  # each run writes into out/<date-time>
    cache: Path = Path("data_cache")  # downloaded zip and the prepared train/validation/test CSVs
    data_urls: tuple[str, ...] = SOURCES  # where Download fetches the SMS data from, in order
    max_upload_mb: int = MAX_UPLOAD_MB  # Gradio refuses larger uploads

    @property
    def models(self) -> tuple[str, ...]:
        """The models a visitor may choose: the four sizes, plus the folder given with --model."""
        return tuple(GPT2_SIZES) + (() if self.model in GPT2_SIZES else (self.model,))


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


@dataclass(frozen=True)
class Controls:
    """The Model & LoRA widgets' values, in the order the Start button sends them."""

    model: str
    preset_name: str
    rank: int
    alpha: float
    scaling: str
    targets: tuple[str, ...]
    train_head: bool
    pooling: str
    padding: str
    lr: float
    epochs: int
    batch_size: int
    max_steps: int  # 0: no limit
    eval_freq: int
    live_metrics: bool

    @classmethod
    def of(cls, cfg: RunConfig) -> "Controls":
        lora, train = cfg.lora, cfg.train
        return cls(
            cfg.model,
            cfg.preset or "recommended",
            lora.rank,
            float(lora.alpha),
            lora.scaling,
            lora.targets,
            lora.train_head,
            train.pooling,
            train.padding,
            train.lr,
            train.epochs,
            train.batch_size,
            train.max_steps or 0,
            train.eval_freq,
            train.live_metrics,
        )

    def values(self) -> tuple[Any, ...]:
        return tuple(list(value) if isinstance(value, tuple) else value for value in astuple(self))


def as_int(value: Any) -> Any:
    """Widgets send whole numbers as floats; pass anything else on so the engine's validation names it."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def run_config(
    settings: AppSettings,
    model: str,
    preset_name: str,
    rank: float,
    alpha: float,
    scaling: str,
    targets: Sequence[str],
    train_head: bool,
    pooling: str,
    padding: str,
    lr: float,
    epochs: float,
    batch_size: float,
    max_steps: float | None,
    eval_freq: float,
    live_metrics: bool,
    out_dir: Path,
) -> RunConfig:
    """Turn the widgets' values into a validated RunConfig (ConfigError names the bad field)."""
    base = preset(preset_name)
    lora = LoRAConfig(rank=as_int(rank), alpha=alpha, scaling=scaling, targets=tuple(targets or ()), train_head=bool(train_head))
    train = TrainConfig(
        lr=lr,
        weight_decay=base.train.weight_decay,
        epochs=as_int(epochs),
        batch_size=as_int(batch_size),
        eval_freq=as_int(eval_freq),
        eval_iter=base.train.eval_iter,
        seed=base.train.seed,
        max_steps=as_int(max_steps) or None,  # 0 or empty: train every epoch to the end
        pooling=pooling,
        padding=padding,
        group_by_length=padding == "batch",
        bf16_autocast=base.train.bf16_autocast,
        live_metrics=bool(live_metrics),
    )
    data = settings.cache if (settings.cache / "train.csv").is_file() else None  # None: the job downloads first
    return RunConfig(
        model=model,
        lora=lora,
        train=train,
        data=str(data) if data else None,
        data_cache=str(settings.cache),
        out_dir=str(out_dir),
        device=settings.device,
        preset=preset_name,
    )


def user_error(error: Exception) -> gr.Error:
    """A toast with the engine's own message; the app keeps running."""
    return gr.Error(" ".join(str(error).split()), duration=None)


def counts_frame(prepared: PreparedData) -> pd.DataFrame:
    s = prepared.summary
    per_class = list(s.class_counts.items()) or [("ham", s.ham), ("spam", s.spam)]  # your own data: its own labels
    rows = [
        ("messages", s.messages),
        *per_class,
        ("balanced", s.balanced),
        ("train", s.train),
        ("validation", s.validation),
        ("test", s.test),
    ]
    return pd.DataFrame(rows, columns=["", "messages"])


def preview_frame(prepared: PreparedData) -> pd.DataFrame:
    train = prepared.splits.train
    parts = [train[train["Label"] == index].head(PREVIEW_PER_CLASS).assign(Label=name) for index, name in enumerate(prepared.splits.labels)]
    return pd.concat(parts).rename(columns={"Label": "class", "Text": "message"}).reset_index(drop=True)


def token_histogram(prepared: PreparedData) -> Figure:
    """Token counts of every balanced message by class, with the book's padding length marked."""
    figure = Figure(figsize=(7, 3.6), layout="tight")  # no pyplot: no global state shared between sessions
    axis = figure.subplots()
    frames = [part for _, part in prepared.splits.items()]
    everything = pd.concat(frames)
    labels = prepared.splits.labels
    lengths = [[len(encode(text)) for text in everything[everything["Label"] == index]["Text"]] for index in range(len(labels))]
    colors = ["#1f77b4", "#d62728"] if len(labels) == 2 else None
    axis.hist(lengths, bins=40, stacked=True, label=list(labels), color=colors)
    cutoff = prepared.summary.longest_train_tokens
    axis.axvline(cutoff, color="black", linestyle="--", label=f"padding cut-off (book): {cutoff} tokens")
    axis.set_title("Tokens per message; the book pads every message to the longest training one", fontsize=10)
    axis.set_xlabel("tokens per message")
    axis.set_ylabel("messages")
    axis.legend(loc="upper right")
    return figure


def data_outputs(prepared: PreparedData, status: str) -> tuple[str, pd.DataFrame, pd.DataFrame, Figure]:
    return status, counts_frame(prepared), preview_frame(prepared), token_histogram(prepared)


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


def training_view(snapshot: JobSnapshot) -> TrainingView:
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
    saved = snapshot.saved
    files = [str(saved.adapter_dir / "adapter.safetensors"), str(saved.record)] if saved else None
    return TrainingView(
        snapshot.status,
        progress_html(snapshot),
        loss_frame(snapshot.losses),
        *live_views(snapshot),
        accuracy,
        baseline,
        final,
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


def new_run_dir(root: Path) -> Path:
    """runs/<date-time>, with a suffix when a run already started in the same second."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    candidates = (root / (stamp if n == 1 else f"{stamp}-{n}") for n in range(1, 1000))
    return next(path for path in candidates if not path.exists())


class Lab:
    """The app's shared state and its event handlers: one training job, the data, the last classifier."""

    def __init__(self, settings: AppSettings) -> None:
        self.settings = settings
        self.job = TrainingJob(settings.data_urls)
        self._prepared: PreparedData | None = None
        self._classifier: tuple[tuple[str, int, str], Classifier] | None = None  # (path, mtime, device) -> loaded
        # Classify is its own concurrency group (limit 1); the lock also guards the cache and
        # compare_with_base's switching LoRA off and on should anyone raise that limit.
        self._classify_lock = threading.Lock()
        self._download_stop = threading.Event()

    def check_model(self, model: str) -> str:
        """`model` if the app offers it; a typed folder or anything else is refused (no path from a visitor reaches the disk)."""
        if model not in self.settings.models:
            raise gr.Error(
                f"unknown model {str(model)[:80]!r}: choose one of {', '.join(self.settings.models)}. "
                "A local model folder is chosen when starting the app: python app.py --model FOLDER",
                duration=None,
            )
        return model

    # Data tab

    def download_data(
        self,
        deduplicate: bool = False,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 - Gradio finds its progress tracker by this default
    ) -> tuple[str, pd.DataFrame, pd.DataFrame, Figure]:
        """Fetch the SMS data (primary URL, then backup), balance, split and describe it."""
        failures: list[str] = []
        self._download_stop.clear()

        def report(event: DownloadProgress) -> None:
            if self._download_stop.is_set():
                raise Cancelled("download stopped")  # the engine deletes the partial file
            if event.status.startswith("failed"):
                failures.append(f"{event.url}: {event.status}")
            progress((event.received, event.total), desc=f"downloading {event.url}", unit="bytes")

        try:
            prepared = prepare(None, self.settings.cache, report, urls=self.settings.data_urls, deduplicate=bool(deduplicate))
        except Cancelled:
            gr.Warning("Download stopped; nothing was kept. Press Download to start again.")
            status, *views = self.show_data()
            return "Download stopped; nothing was kept. Press Download to start again.\n\n" + status, *views
        except LoRALabError as error:
            raise user_error(error) from None
        self._prepared = prepared
        tried = "".join(f"\n- {failure}" for failure in failures)
        status = f"Data ready from {prepared.summary.source}" + (f"\n\nSources that failed first:{tried}" if failures else "")
        return data_outputs(prepared, status)

    def stop_download(self) -> str:
        """Ask a running Download to stop at its next chunk of data."""
        self._download_stop.set()
        return "Stopping the download..."

    def upload_data(self, path: str | None, deduplicate: bool = False) -> tuple[str, pd.DataFrame, pd.DataFrame, Figure]:
        """Use a local SMS Spam Collection zip or tab-separated file, or your own headered CSV/TSV of text and label."""
        source = uploaded_path(path, "the SMS Spam Collection zip or its tab-separated file, or a CSV/TSV with text and label columns")
        try:
            prepared = prepare(str(source), self.settings.cache, deduplicate=bool(deduplicate))
        except LoRALabError as error:
            raise user_error(error) from None
        self._prepared = prepared
        return data_outputs(prepared, f"Data ready from the uploaded file {source.name}")

    def show_data(self) -> tuple[str, pd.DataFrame | None, pd.DataFrame | None, Figure | None]:
        """What a (re)loaded page shows: the data prepared earlier, if any."""
        if self._prepared is None and (self.settings.cache / "train.csv").is_file():
            try:
                prepared = prepare(str(self.settings.cache), self.settings.cache)
            except LoRALabError as error:
                return f"The prepared data in {self.settings.cache} is unusable ({error}): download it again.", None, None, None
            return data_outputs(prepared, f"Data prepared earlier, read from {self.settings.cache}")
        if self._prepared is None:
            return "No data yet: download it, or upload the zip or tab-separated file.", None, None, None
        return data_outputs(self._prepared, f"Data ready from {self._prepared.summary.source}")

    # Model & LoRA tab

    def load_weights(
        self,
        model: str,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 - Gradio finds its progress tracker by this default
    ) -> tuple[str, str]:
        """Download (if needed) and load the weights, then run the "Every effort moves you" check."""
        started = time.perf_counter()
        self.check_model(model)
        device = pick_device(self.settings.device)
        try:
            source = resolve(model)
            path = fetch(source, lambda received, total: progress((received, total), desc="downloading model.safetensors", unit="bytes"))
            progress(None, desc="loading the weights")
            loaded = load_model(model, device)
            text = decode(generate_greedy(loaded, encode(SANITY_PROMPT), SANITY_TOKENS))
        except LoRALabError as error:
            message = " ".join(str(error).split())
            gr.Warning(message, duration=None)
            return f"Weights not available: {message}", ""
        except Exception as error:
            if is_out_of_memory(error):
                raise memory_error(str(device), f"loading {model}") from None
            raise
        shape = f"{source.config.n_layer} layers, width {source.config.n_embd}"
        seconds = time.perf_counter() - started
        return f"{model}: {shape}; weights {path.stat().st_size / 1e6:,.1f} MB at {path}; loaded on {device} in {seconds:.1f} s", text

    def apply_preset(self, name: str) -> tuple[int, float, str, str, str, float, int, int]:
        """The preset's values for the controls it sets; targets, model and the rest stay as they are."""
        try:
            chosen = preset(name)
        except LoRALabError as error:
            raise user_error(error) from None
        lora, train = chosen.lora, chosen.train
        return lora.rank, float(lora.alpha), lora.scaling, train.pooling, train.padding, train.lr, train.epochs, train.batch_size

    # Parameters tab

    def parameters(self, model: str, rank: float, targets: Sequence[str], train_head: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Frozen vs trainable counts for these settings, computed without weights."""
        self.check_model(model)
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

    # Train tab

    def start_training(
        self,
        model: str,
        preset_name: str,
        rank: float,
        alpha: float,
        scaling: str,
        targets: list[str],
        train_head: bool,
        pooling: str,
        padding: str,
        lr: float,
        epochs: float,
        batch_size: float,
        max_steps: float | None,
        eval_freq: float,
        live_metrics: bool = True,
    ) -> tuple[Any, ...]:
        """Start a run with these settings; if one is running already, say so and show that one."""
        self.check_model(model)
        out_dir = new_run_dir(self.settings.out)
        try:
            cfg = run_config(
                self.settings,
                model,
                preset_name,
                rank,
                alpha,
                scaling,
                targets,
                train_head,
                pooling,
                padding,
                lr,
                epochs,
                batch_size,
                max_steps,
                eval_freq,
                live_metrics,
                out_dir,
            )
            param_summary(cfg.model, cfg.lora)  # builds the model on the meta device: a rank wider than a layer fails here, at once
        except LoRALabError as error:
            raise user_error(error) from None
        self.check_batch_size(cfg.train.batch_size)
        if not self.job.start(cfg):
            gr.Info("A training run is already going: showing it. Stop it first to start another.")
        return self.poll()

    def check_batch_size(self, batch_size: int) -> None:
        """Refuse a batch larger than the training split, when the data is known already (else the run says so)."""
        summary = self._prepared.summary if self._prepared else load_summary(self.settings.cache)
        if summary is not None and batch_size > summary.train:
            raise gr.Error(f"batch size {batch_size} is larger than the {summary.train} training messages: choose at most {summary.train}", duration=None)

    def poll(self) -> tuple[Any, ...]:
        """The running (or last) job's state; the timer keeps ticking only while it runs."""
        snapshot = self.job.snapshot()
        view = training_view(snapshot)
        return (*view_values(view), gr.Timer(active=snapshot.running))

    def attach(self) -> tuple[Any, ...]:
        """On page load: re-attach to a job started by any session, before or after a reload."""
        return self.poll()

    def controls(self) -> tuple[Any, ...]:
        """On page load: the settings of the current (or last) run, so a reload loses none of them."""
        cfg = self.job.snapshot().config or RunConfig.from_preset("recommended", model=self.settings.model)
        return Controls.of(cfg).values()

    def stop_training(self) -> str:
        if not self.job.stop():
            return self.job.snapshot().status
        return "stopping after the current step..."

    # Classify tab

    def classify(self, message: str, adapter_file: str | None) -> tuple[dict[str, float], dict[str, float], str]:
        """The fine-tuned model's answer next to the untrained one's (the same model with LoRA off)."""
        problem = message_problem(message)
        if problem:
            raise gr.Error(problem)
        with self._classify_lock:
            adapter, classifier = self._classifier_for(adapter_file)
            try:
                before, after = classifier.compare_with_base(message)
            except LoRALabError as error:
                raise user_error(error) from None
            except Exception as error:
                if is_out_of_memory(error):
                    raise memory_error(str(classifier.device), "classifying") from None
                raise
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
        with self._classify_lock:
            adapter, classifier = self._classifier_for(adapter_file)
            try:
                predictions = dict(zip([n for n, _ in good], classifier.classify([line for _, line in good]) if good else [], strict=True))
            except LoRALabError as error:
                raise user_error(error) from None
            except Exception as error:
                if is_out_of_memory(error):
                    raise memory_error(str(classifier.device), "classifying") from None
                raise
        bad = [problem for problem in problems.values() if problem]
        if bad:
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            gr.Warning(f"{len(bad)} of {len(lines)} lines skipped: {bad[0]}{more}")
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

    def adapter_info(self) -> str:
        latest = self.latest_adapter()
        return f"Using the latest trained adapter: {latest}" if latest else "No trained adapter yet: train one, or load an adapter.safetensors file."

    def latest_adapter(self) -> Path | None:
        """The newest adapter saved under the runs folder (by this app or an earlier one)."""
        found = sorted(self.settings.out.glob("*/adapter/adapter.safetensors"), key=lambda p: p.stat().st_mtime)
        return found[-1].parent if found else None

    def _classifier_for(self, adapter_file: str | None) -> tuple[Path, Classifier]:
        """The adapter to use (an uploaded file, else the latest trained) and its loaded classifier; call under the lock."""
        if adapter_file:
            adapter = uploaded_path(adapter_file, "an adapter.safetensors file")
        else:
            adapter = self.latest_adapter()
            if adapter is None:
                raise gr.Error("No trained adapter yet: train one on the Train tab, or load an adapter.safetensors file above.")
        device = pick_device(self.settings.device)
        tensors = adapter / "adapter.safetensors" if adapter.is_dir() else adapter
        key = (str(tensors.resolve()), tensors.stat().st_mtime_ns if tensors.exists() else 0, str(device))
        if self._classifier is None or self._classifier[0] != key:
            self._classifier = None  # free the previous model before loading the next
            try:
                # The adapter names its base model; only a model this app offers is loaded (an uploaded
                # adapter must not point the app at an arbitrary folder or download).
                config, _ = read_adapter(adapter)
                if config.base_model not in self.settings.models:
                    raise gr.Error(
                        f"this adapter was trained on {config.base_model[:120]!r}, which this app does not offer "
                        f"({', '.join(self.settings.models)}): start LoRA Lab with --model pointing at that model",
                        duration=None,
                    )
                self._classifier = key, Classifier.load(adapter, device, model=config.base_model)
            except LoRALabError as error:
                raise user_error(error) from None
            except Exception as error:
                if is_out_of_memory(error):
                    raise memory_error(str(device), "loading the classifier") from None
                raise
        return adapter, self._classifier[1]


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


def build_ui(settings: AppSettings, lab: Lab | None = None) -> gr.Blocks:
    """The tabs, wired to one Lab; nothing heavy happens until an event fires."""
    lab = lab or Lab(settings)
    insight = Insight(lab, run_config)
    models = list(settings.models)
    initial = Controls.of(RunConfig.from_preset("recommended", model=settings.model))
    with gr.Blocks(title="LoRA Lab") as demo:
        gr.Markdown("# LoRA Lab\nFine-tune GPT-2 with LoRA to tell spam from ham, and watch it learn.")
        with gr.Tabs():
            with gr.Tab("Data"):
                with gr.Row():
                    with gr.Column():
                        download = gr.Button("Download the SMS Spam Collection", variant="primary")
                        stop_download = gr.Button("Stop the download", variant="stop", size="sm", elem_id="stop-download")
                    upload = uploaded_file(
                        label="...or upload its zip or tab-separated file (offline), or your own CSV/TSV with a header naming text and label columns",
                        file_count="single",
                        height=150,
                        elem_id="upload",
                    )
                deduplicate = gr.Checkbox(
                    False,
                    label="De-duplicate before splitting",
                    info="keep one copy of each repeated message (applies to the next download or upload)",
                    elem_id="deduplicate",
                )
                data_status = gr.Markdown(elem_id="data-status")
                with gr.Row():
                    counts = gr.Dataframe(label="Counts", interactive=False, elem_id="counts", scale=1)
                    histogram = gr.Plot(label="Tokens per message", show_label=False, elem_id="token-histogram", scale=2)
                preview = gr.Dataframe(label="A few training messages per class", interactive=False, wrap=True, elem_id="preview")
                quality, repeated = build_quality(insight)

            with gr.Tab("Model & LoRA"):
                with gr.Row():
                    model = gr.Dropdown(
                        models,
                        value=initial.model,
                        label="Model",
                        info="a GPT-2 size (a local folder is chosen when starting the app: --model FOLDER)",
                        elem_id="model",
                    )
                    load = gr.Button("Download / load weights and test them", elem_id="load-weights")
                weights_status = gr.Textbox(label="Weights", interactive=False, elem_id="weights-status")
                sanity = gr.Textbox(label=f'Sanity check: greedy continuation of "{SANITY_PROMPT}"', interactive=False, elem_id="sanity")
                preset_name = gr.Radio(
                    list(PRESETS), value=initial.preset_name, label="Preset", info="book: the book's appendix E exactly; recommended: as accurate, much faster"
                )
                with gr.Row():
                    rank = gr.Slider(1, 64, value=initial.rank, step=1, label="LoRA rank", elem_id="rank")
                    alpha = gr.Number(initial.alpha, label="LoRA alpha", minimum=0, elem_id="alpha")
                    scaling = gr.Radio(list(SCALINGS), value=initial.scaling, label="Scaling", info="alpha (book) or alpha / rank (Hu et al., PEFT)")
                with gr.Accordion("Advanced", open=False):
                    targets = gr.CheckboxGroup(list(LORA_TARGETS), value=list(initial.targets), label="Layers LoRA adapts", elem_id="targets")
                    train_head = gr.Checkbox(initial.train_head, label="Also train the class head's own weights")
                    with gr.Row():
                        pooling = gr.Radio(
                            list(POOLINGS),
                            value=initial.pooling,
                            label="Read the logits at",
                            info="last: the last position (book); last_token: the last real token",
                        )
                        padding = gr.Radio(
                            list(PADDINGS),
                            value=initial.padding,
                            label="Padding",
                            info="longest: every message to the longest training one (book); batch: per batch",
                        )
                    with gr.Row():
                        lr = gr.Number(initial.lr, label="Learning rate", elem_id="lr")
                        epochs = gr.Number(initial.epochs, label="Epochs", precision=0, minimum=1, elem_id="epochs")
                        batch_size = gr.Number(initial.batch_size, label="Batch size", precision=0, minimum=1, elem_id="batch-size")
                        max_steps = gr.Number(initial.max_steps, label="Stop after steps (0: all)", precision=0, minimum=0, elem_id="max-steps")
                        eval_freq = gr.Number(initial.eval_freq, label="Estimate loss every N steps", precision=0, minimum=1, elem_id="eval-freq")
                    live_metrics = gr.Checkbox(
                        initial.live_metrics,
                        label="At each estimate, score the full validation set (live confusion matrix on Train)",
                        info="one pass over the validation set; its first batches still give the book's validation loss",
                        elem_id="live-metrics",
                    )

            with gr.Tab("Train"):
                with gr.Row():
                    start_button = gr.Button("Start training", variant="primary", elem_id="start")
                    stop_button = gr.Button("Stop", variant="stop", elem_id="stop")
                train_status = gr.Textbox(label="Status", interactive=False, elem_id="train-status")
                progress = gr.HTML(elem_id="train-progress")
                with gr.Row():
                    loss_steps = gr.LinePlot(
                        x="step", y="loss", color="split", color_map=LOSS_COLORS, title="Loss by optimiser step", height=280, elem_id="loss-steps"
                    )
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
                build_classify_extras(insight, message, adapter_file)

            train_inputs = [
                model,
                preset_name,
                rank,
                alpha,
                scaling,
                targets,
                train_head,
                pooling,
                padding,
                lr,
                epochs,
                batch_size,
                max_steps,
                eval_freq,
                live_metrics,
            ]
            build_evaluate_tab(insight, demo)
            build_runs_tab(insight, demo, train_inputs)  # its rank sweep trains the Model & LoRA settings

        data_views = [data_status, counts, preview, histogram]
        quality_views = [quality, repeated]
        download.click(lab.download_data, deduplicate, data_views, api_name="download_data").then(
            insight.data_quality, None, quality_views, api_name="data_quality_downloaded"
        )
        stop_download.click(lab.stop_download, None, data_status, api_name="stop_download", concurrency_limit=None)
        upload.upload(lab.upload_data, [upload, deduplicate], data_views, api_name="upload_data").then(
            insight.data_quality, None, quality_views, api_name="data_quality_uploaded"
        )

        load.click(lab.load_weights, model, [weights_status, sanity], api_name="load_weights")
        preset_name.input(lab.apply_preset, preset_name, [rank, alpha, scaling, pooling, padding, lr, epochs, batch_size], api_name="apply_preset")

        param_inputs = [model, rank, targets, train_head]
        gr.on(
            [demo.load] + [c.change for c in param_inputs],
            lab.parameters,
            param_inputs,
            [param_chart, param_table],
            api_name="parameters",
            show_progress="hidden",
        )

        view = [train_status, progress, loss_steps, loss_examples, live_confusion, live_scores, accuracy, baseline, final, book_plot, files, timer]
        start_button.click(lab.start_training, train_inputs, view, api_name="start", show_progress="hidden")
        timer.tick(lab.poll, None, view, api_name="poll", show_progress="hidden", concurrency_limit=None)
        stop_button.click(lab.stop_training, None, train_status, api_name="stop", concurrency_limit=None)

        # Classification has its own queue, never behind training or a download: visitors can classify while a run goes.
        gr.on(
            [classify_button.click, message.submit],
            lab.classify,
            [message, adapter_file],
            [after, before, details],
            api_name="classify",
            concurrency_id="classify",
            concurrency_limit=1,
        )
        classify_many_button.click(
            lab.classify_many, [many, adapter_file], many_results, api_name="classify_many", concurrency_id="classify", concurrency_limit=1
        )

        demo.load(lab.attach, None, view, api_name="attach", show_progress="hidden")
        demo.load(lab.controls, None, train_inputs, api_name="controls", show_progress="hidden")
        demo.load(lab.show_data, None, data_views, api_name="show_data").then(insight.data_quality, None, quality_views, api_name="data_quality")
        # A finished run's adapter becomes the Classify tab's default: refresh on the ticks that watch the run.
        gr.on([demo.load, timer.tick], lab.adapter_info, None, adapter_status, api_name="adapter_info", show_progress="hidden", concurrency_limit=None)
    return demo


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python app.py", description="LoRA Lab: fine-tune GPT-2 with LoRA to classify SMS spam, in your browser.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 exposes it to your network)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--share", action="store_true", help="also publish a public gradio.live link (off by default: sends traffic through Gradio's servers)")
    parser.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, mps")
    parser.add_argument("--model", default="gpt2-small", help=f"{', '.join(GPT2_SIZES)}, or a folder with config.json + model.safetensors (default gpt2-small)")
    parser.add_argument("--out", type=Path, default=Path("runs"), help="folder for training runs (default runs)")
    parser.add_argument("--cache", type=Path, default=Path("data_cache"), help="folder for the downloaded data (default data_cache)")
    parser.add_argument(
        "--data-urls",
        nargs="+",
        default=list(SOURCES),
        metavar="URL",
        help="where Download fetches the SMS zip from, tried in order (default: UCI, then the book's backup)",
    )
    parser.add_argument(
        "--auth",
        type=parse_auth,
        default=os.environ.get("LORA_LAB_AUTH") or None,
        metavar="USER:PASSWORD",
        help="ask for this login before showing the app (Gradio's auth), for shared machines; "
        "LORA_LAB_AUTH=USER:PASSWORD does the same without showing the password in the process list",
    )
    parser.add_argument("--max-upload-mb", type=int, default=MAX_UPLOAD_MB, help=f"largest file a visitor may upload, in MB (default {MAX_UPLOAD_MB})")
    args = parser.parse_args(argv)
    if args.max_upload_mb < 1:
        parser.error("--max-upload-mb must be at least 1")
    try:
        resolve(args.model)
        pick_device(args.device)
    except LoRALabError as error:
        parser.error(str(error))
    return args


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    args = parse_args(argv)
    for warning in exposure_warnings(args.host, args.share, args.auth):
        log.warning(warning)
    settings = AppSettings(
        model=args.model, device=args.device, out=args.out, cache=args.cache, data_urls=tuple(args.data_urls), max_upload_mb=args.max_upload_mb
    )
    launch(build_ui(settings), settings, args.host, args.port, args.share, auth=args.auth)


def launch(
    demo: gr.Blocks,
    settings: AppSettings,
    host: str,
    port: int,
    share: bool = False,
    block: bool = True,
    auth: tuple[str, str] | None = None,
) -> str:
    """Queue and serve `demo`; returns its local URL (at once when `block` is False, as tests want)."""
    _, url, _ = demo.queue(max_size=64).launch(
        server_name=host,
        server_port=port,
        share=share,
        auth=auth,
        theme=THEME,
        allowed_paths=[str(settings.out)],  # the only files served besides Gradio's own copies: the runs
        max_file_size=settings.max_upload_mb * 1024 * 1024,
        footer_links=["api", "settings"],  # no link to gradio.app
        prevent_thread_lock=not block,
        quiet=not block,
    )
    return url


if __name__ == "__main__":
    main()
