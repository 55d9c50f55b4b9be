"""One fine-tuning run end to end: data, model, LoRA, baseline, training, final metrics, saved outputs.

`fine_tune` yields the training loop's events plus its own (data ready, model ready, baseline,
final metrics, saved); the CLI prints them, the app draws them, tests collect them.
"""

import platform
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from engine.adapter import AdapterConfig, save_adapter
from engine.classifier import build_classifier
from engine.config import RunConfig
from engine.data import DataSummary, prepare
from engine.device import pick_device
from engine.download import ProgressCallback
from engine.evaluate import Metrics, Scores, evaluate, evaluate_with_scores
from engine.loaders import make_loaders
from engine.lora import ParamCounts, count_parameters
from engine.plot import save_loss_plot
from engine.record import ADAPTER_DIR, PLOT_FILE, RECORD_FILE, RunRecord  # noqa: F401 - RECORD_FILE: its readers import it from here
from engine.train import EpochDone, LossEvaluated, StepDone, TrainEnded, TrainEvent, ValidationEvaluated, train
from engine.weights import load_model

BASELINE_BATCHES = 10  # the book estimates accuracy before training on 10 batches per split


@dataclass(frozen=True)
class DataReady:
    summary: DataSummary


@dataclass(frozen=True)
class ModelReady:
    model: str
    device: str
    counts: ParamCounts
    seconds: float


@dataclass(frozen=True)
class BaselineEvaluated:
    train_accuracy: float
    validation_accuracy: float
    test_accuracy: float


@dataclass(frozen=True)
class FinalEvaluated:
    metrics: dict[str, Metrics]  # "train", "validation", "test" on the full loaders
    scores: dict[str, Scores] = field(default_factory=dict)  # per-message class probabilities: "validation", "test"


@dataclass(frozen=True)
class RunSaved:
    out_dir: Path
    adapter_dir: Path
    record: Path
    plot: Path | None
    stopped: bool


RunEvent = DataReady | ModelReady | BaselineEvaluated | TrainEvent | FinalEvaluated | RunSaved


@dataclass
class History:
    """Everything a run record keeps; filled from the events as they pass."""

    losses: list[LossEvaluated] = field(default_factory=list)
    live: list[ValidationEvaluated] = field(default_factory=list)  # the full validation set at each loss estimate
    epochs: list[EpochDone] = field(default_factory=list)
    baseline: BaselineEvaluated | None = None
    final: dict[str, Metrics] | None = None
    scores: dict[str, Scores] = field(default_factory=dict)
    trainable: int = 0
    steps: int = 0
    examples_seen: int = 0
    train_seconds: float = 0.0


def fine_tune(
    cfg: RunConfig,
    stop: threading.Event | None = None,
    on_download: ProgressCallback | None = None,
) -> Iterator[RunEvent]:
    """Run `cfg` to the end (or until `stop` is set) and save the adapter, run record and loss plot.

    A stopped run still saves the adapter of its last completed step, and skips the final evaluation.
    """
    started = time.perf_counter()
    stop = stop or threading.Event()
    device = pick_device(cfg.device)
    record = RunRecord.begin(cfg)  # from here the run leaves a trace, however it ends
    with record.closed_on_failure():
        yield from _run(cfg, stop, on_download, device, record, started)


def _run(
    cfg: RunConfig, stop: threading.Event, on_download: ProgressCallback | None, device: torch.device, record: RunRecord, started: float
) -> Iterator[RunEvent]:
    data = prepare(cfg.data, cfg.data_cache, on_download, seed=cfg.train.seed, urls=cfg.data_urls, deduplicate=cfg.deduplicate)
    yield DataReady(data.summary)

    loading = time.perf_counter()
    labels = data.splits.labels
    model = build_classifier(load_model(cfg.model, device), cfg.lora, n_classes=len(labels), seed=cfg.train.seed)
    counts = count_parameters(model)
    yield ModelReady(cfg.model, str(device), counts, time.perf_counter() - loading)

    loaders = make_loaders(data.splits, cfg.train, model.cfg.context_length)
    history = History(trainable=counts.trainable)
    accuracy = lambda loader, batches=BASELINE_BATCHES: evaluate(model, loader, device, cfg.train.pooling, batches, stop.is_set).accuracy  # noqa: E731
    history.baseline = BaselineEvaluated(accuracy(loaders.train), accuracy(loaders.validation), accuracy(loaders.test))
    yield history.baseline

    out = Path(cfg.out_dir)
    adapter_dir = out / ADAPTER_DIR
    adapter_config = AdapterConfig(cfg.model, model.cfg, cfg.lora, cfg.train.pooling, cfg.train.padding, loaders.max_length, labels)
    stopped = False
    for event in train(model, loaders, cfg.train, device, stop):
        if isinstance(event, LossEvaluated):
            history.losses.append(event)
            # Each estimate's losses are finite (train raises otherwise): a checkpoint a killed run keeps.
            record.checkpoint(
                lambda: save_adapter(model, adapter_dir, adapter_config),
                history.steps,
                device=str(device),
                trainable=history.trainable,
                steps=history.steps,
                examples_seen=history.examples_seen,
                data=data.summary.to_dict(),
                losses=[asdict(p) for p in history.losses],
            )
        elif isinstance(event, ValidationEvaluated):
            history.live.append(event)
        elif isinstance(event, EpochDone):
            history.epochs.append(event)
        elif isinstance(event, StepDone):
            history.steps, history.examples_seen = event.step, event.examples_seen
        elif isinstance(event, TrainEnded):
            stopped, history.train_seconds = event.stopped, event.elapsed_s
        yield event

    if not stopped:
        final, scores = {}, {}
        for name, loader in (("train", loaders.train), ("validation", loaders.validation), ("test", loaders.test)):
            final[name], split_scores = evaluate_with_scores(model, loader, device, cfg.train.pooling, should_stop=stop.is_set)
            if name != "train":  # the training loader is shuffled: its order means nothing
                scores[name] = split_scores
        stopped = stop.is_set()  # stopped mid-evaluation: partial figures would mislead, so none are kept
        if not stopped:
            history.final, history.scores = final, scores
            yield FinalEvaluated(final, scores)

    save_adapter(model, adapter_dir, adapter_config)
    record.adapter_saved(history.steps)
    plot = save_loss_plot(history.losses, out / PLOT_FILE) if history.losses else None
    path = write_record(record, cfg, data.summary, history, stopped, str(device), time.perf_counter() - started)
    yield RunSaved(out, adapter_dir, path, plot, stopped)


def write_record(record: RunRecord, cfg: RunConfig, summary: DataSummary, history: History, stopped: bool, device: str, seconds: float) -> Path:
    """Close the run record: config, data, curves, metrics and timings, as JSON."""
    fields = {
        "config": asdict(cfg),
        "data": summary.to_dict(),
        "device": device,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "stopped": stopped,
        "trainable": history.trainable,
        "steps": history.steps,
        "examples_seen": history.examples_seen,
        "baseline": asdict(history.baseline) if history.baseline else None,
        "losses": [asdict(p) for p in history.losses],
        "validation_history": [asdict(p) for p in history.live],
        "epochs": [asdict(e) for e in history.epochs],
        "final": {name: asdict(m) for name, m in history.final.items()} if history.final else None,
        "scores": {name: asdict(s) for name, s in history.scores.items()},
        "timings": {"train_seconds": round(history.train_seconds, 2), "total_seconds": round(seconds, 2)},
    }
    return record.finish(fields, stopped)
