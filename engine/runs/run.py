"""One fine-tuning run end to end: data, model, LoRA, baseline, training, final metrics, saved outputs.

`fine_tune` yields the training loop's events plus its own (engine/runs/events.py); the CLI prints them,
a worker process sends them to the app, tests collect them. The run record is what its
`RunRecorder` made of them.
"""

import platform
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Protocol

import torch

from engine.adapter import AdapterConfig, adapter_tensors, save_adapter
from engine.anatomy import frozen_weight_norms, growth_point
from engine.best import BestSoFar
from engine.checkpoint import CHECKPOINT_FILE, Checkpoint, LoopTracker, load_trainable, read_checkpoint, save_checkpoint
from engine.classifier import build_classifier
from engine.config import METHODS, RunConfig
from engine.data.download import DownloadProgress, ProgressCallback
from engine.data.prepared import PreparedData, is_prepared_folder, prepare
from engine.device import Resolved, dtype_of, pick_device, precision_for, prepare_device
from engine.draws import RunDraws
from engine.errors import Cancelled, ConfigError
from engine.evaluate import LossMean, Metrics, Scores, evaluate, evaluate_with_scores
from engine.loaders import Loaders, make_loaders
from engine.lora import count_parameters
from engine.methods import method_precision
from engine.runs.cost import check_fits
from engine.runs.events import AdapterMeasured, BaselineEvaluated, BestKept, DataReady, FinalEvaluated, ModelReady, RunEvent, RunSaved
from engine.runs.plot import save_loss_plot
from engine.runs.record import ADAPTER_DIR, BEST_ADAPTER_DIR, PLOT_FILE, RunRecord, remove_best_adapter
from engine.runs.recorder import RunProgress, RunRecorder
from engine.runs.resume import check_resumable, resume_problem
from engine.train import EpochDone, LossEvaluated, TrainEnded, ValidationEvaluated, train
from engine.weights import load_model

BASELINE_BATCHES = 10  # the book estimates accuracy before training on 10 batches per split
DATA_DIR = "data"  # a prepared folder prepared again for this run (another parse, or de-duplicated)


class StopFlag(Protocol):
    """A threading.Event in-process, a multiprocessing Event in a worker process: anything with is_set()."""

    def is_set(self) -> bool: ...


def fine_tune(
    cfg: RunConfig,
    stop: StopFlag | None = None,
    on_download: ProgressCallback | None = None,
    weights_at: str | None = None,
    resume: bool = False,
) -> Iterator[RunEvent]:
    """Run `cfg` to the end (or until `stop` is set) and save the adapter, run record and loss plot.

    With `resume`, go on from the checkpoint in `cfg.out_dir` (engine/runs/resume.py made `cfg`): the
    events so far come first, then training from where it was, as if it had never stopped.

    A stopped run still saves the adapter of its last completed step, and skips the final evaluation.
    Every run also keeps its best weights (lowest validation loss at an estimate, engine.best) beside its
    last, measured on the validation and test sets as the last are (`BestKept`).
    `weights_at` is a copy of `cfg.model` (a folder) on a machine that lacks the original, e.g. a
    Ray worker: the run reads it, and still records the model by its own name.

    The run's record (run.json) is written when it starts and closed however it ends (engine/runs/record.py).

    Raises:
        Cancelled: stopped while the data downloaded (nothing was kept).
    """
    started = time.perf_counter()
    stop = stop or threading.Event()
    device = pick_device(cfg.device)
    precision = precision_for(cfg.train.precision, device)  # bf16 asked of a GPU without it is refused before anything is written
    if cfg.method not in METHODS:
        raise ConfigError(f"method {cfg.method!r} is not trained by `train`: the classical baseline is `python -m engine baseline`")
    precision = method_precision(cfg.method, precision)
    checkpoint = None
    if resume:
        if problem := resume_problem(Path(cfg.out_dir), further=True):  # check_resumable then checks there are steps left
            raise ConfigError(problem)
        checkpoint = read_checkpoint(Path(cfg.out_dir) / CHECKPOINT_FILE)
        check_resumable(cfg, checkpoint)
    # From here the run leaves a trace, however it ends.
    record = RunRecord.resume(cfg, checkpoint.position.step) if checkpoint else RunRecord.begin(cfg)
    with record.closed_on_failure():
        yield from _run(cfg, stop, on_download, weights_at, device, precision, record, started, checkpoint)


def _run(
    cfg: RunConfig,
    stop: StopFlag,
    on_download: ProgressCallback | None,
    weights_at: str | None,
    device: torch.device,
    precision: Resolved,
    record: RunRecord,
    started: float,
    checkpoint: Checkpoint | None,
) -> Iterator[RunEvent]:
    recorder = RunRecorder(cfg.train.eval_freq)
    events: list[RunEvent] = []  # what a checkpoint replays to whoever follows the run once resumed

    def emit(event: RunEvent) -> RunEvent:
        recorder.record(event)
        events.append(event)
        return event

    if checkpoint is not None:
        for event in replayed(checkpoint):
            yield emit(event)

    data = run_data(cfg, stoppable(on_download, stop))
    cfg = replace(cfg, data=str(data.folder))  # the record names the splits the run read
    if checkpoint is None:
        yield emit(DataReady(data.summary))

    loading = time.perf_counter()
    labels = data.splits.labels
    prepare_device(device)
    check_fits(replace(cfg, model=weights_at or cfg.model), str(device), precision)  # refused with what to change, before the model takes the memory
    base = load_model(weights_at or cfg.model, device, products_dtype=dtype_of(precision))
    base.cfg = replace(base.cfg, name=cfg.model)
    loaders = make_loaders(data.splits, cfg.train, base.cfg.context_length, book_draws=cfg.draws == "book", pin_memory=device.type == "cuda")
    draws = RunDraws(cfg.train.seed, loaders)
    model = build_classifier(base, cfg.lora, n_classes=len(labels), draws=draws, method=cfg.method)
    loss_mean: LossMean = "batch" if cfg.draws == "book" else "message"
    if checkpoint is None:
        yield emit(ModelReady(cfg.model, str(device), count_parameters(model), time.perf_counter() - loading, precision))
        draws.before_baseline()
        accuracy = lambda loader: evaluate(model, loader, device, cfg.train.pooling, BASELINE_BATCHES, stop.is_set).accuracy
        baseline = BaselineEvaluated(accuracy(loaders.train_sample), accuracy(loaders.validation), accuracy(loaders.test))
        if not stop.is_set():  # cut short by Stop, its accuracies would cover too few batches to mean anything
            yield emit(baseline)

    out = Path(cfg.out_dir)
    adapter_dir = out / ADAPTER_DIR
    adapter_config = AdapterConfig(cfg.model, model.cfg, cfg.lora, cfg.train.pooling, cfg.train.padding, loaders.max_length, labels, method=cfg.method)
    lora = cfg.method == "lora"  # only LoRA has an adapter anatomy to measure
    draws.before_training()
    frozen_norms = frozen_weight_norms(model)  # ‖W‖ under each LoRA layer, for its anatomy: the frozen weights never change
    tracker = LoopTracker(checkpoint)

    def save_all() -> None:
        save_adapter(model, adapter_dir, adapter_config)
        save_checkpoint(out / CHECKPOINT_FILE, model, tracker, kept_events(events))

    estimate_ends = ValidationEvaluated if cfg.train.live_metrics else LossEvaluated
    for event in train(model, loaders, cfg.train, device, stop, loss_mean, tracker=tracker):
        if isinstance(event, LossEvaluated) and lora:
            yield emit(measured(model, cfg, frozen_norms, event.step + 1))
        if isinstance(event, TrainEnded) and tracker.position is not None:
            save_checkpoint(out / CHECKPOINT_FILE, model, tracker, kept_events(events))  # where training ended, to go on from
        yield emit(event)
        if isinstance(event, estimate_ends):  # each estimate's losses are finite (train raises otherwise): a checkpoint a killed run keeps
            progress = recorder.progress()
            record.checkpoint(save_all, progress.step, **record_fields(cfg, progress, str(device), precision))
    steps, anatomy = recorder.progress().step, recorder.progress().anatomy
    if lora and steps and (not anatomy or anatomy[-1].steps != steps):
        yield emit(measured(model, cfg, frozen_norms, steps))  # the adapter as it is saved

    measure = lambda names: final_metrics(model, loaders, names, device, cfg.train.pooling, stop, loss_mean)
    if not recorder.progress().stopped:
        final, scores = measure(("train", "validation", "test"))
        if not stop.is_set():  # stopped mid-evaluation: partial figures would mislead, so none are kept
            yield emit(FinalEvaluated(final, scores))

    save_adapter(model, adapter_dir, adapter_config)
    if tracker.best is not None:
        yield emit(kept_best(model, tracker.best, recorder.progress(), out, adapter_config, lambda: measure(("validation", "test")), stop))
    progress = recorder.progress()
    record.adapter_saved(progress.step)
    plot = save_loss_plot(progress.estimates, out / PLOT_FILE) if progress.estimates else None
    stopped = progress.final is None
    path = record.finish(record_fields(cfg, progress, str(device), precision, time.perf_counter() - started))
    yield RunSaved(out, adapter_dir, path, plot, stopped)


def final_metrics(
    model: torch.nn.Module, loaders: Loaders, names: tuple[str, ...], device: torch.device, pooling: str, stop: StopFlag, loss_mean: LossMean
) -> tuple[dict[str, Metrics], dict[str, Scores]]:
    """The model's metrics on the full splits `names` (train, validation, test), and the per-message scores of validation and test."""
    loaders_by_name = {"train": loaders.train_sample, "validation": loaders.validation, "test": loaders.test}
    metrics, scores = {}, {}
    for name in names:
        metrics[name], split_scores = evaluate_with_scores(model, loaders_by_name[name], device, pooling, should_stop=stop.is_set, loss_mean=loss_mean)
        if name != "train":  # the training loader is shuffled: its order means nothing
            scores[name] = split_scores
    return metrics, scores


def kept_best(
    model: torch.nn.Module,
    best: BestSoFar,
    progress: RunProgress,
    out: Path,
    adapter_config: AdapterConfig,
    measure: Callable[[], tuple[dict[str, Metrics], dict[str, Scores]]],
    stop: StopFlag,
) -> BestKept:
    """Save the best weights beside the last (their adapter saved already): nothing more when the last step was
    the best; else into adapter-best, measured on validation and test unless the run was stopped. Leaves the
    model holding the best weights."""
    if best.step == progress.step:
        remove_best_adapter(out)  # an earlier stretch's best, when the run was resumed
        return BestKept(best.step, best.validation_loss, ADAPTER_DIR)
    load_trainable(model, best.tensors)
    metrics, scores = measure() if progress.final is not None else ({}, {})
    if stop.is_set():  # stopped mid-evaluation: partial figures would mislead
        metrics, scores = {}, {}
    save_adapter(model, out / BEST_ADAPTER_DIR, adapter_config)
    return BestKept(best.step, best.validation_loss, BEST_ADAPTER_DIR, metrics, scores)


def run_data(cfg: RunConfig, on_download: ProgressCallback | None) -> PreparedData:
    """The splits `cfg` trains on: its data prepared as it asks. A folder prepared otherwise than this run asks
    is prepared again into the run's own folder, never over it."""
    cache = Path(cfg.out_dir) / DATA_DIR if is_prepared_folder(cfg.data) else cfg.data_cache
    return prepare(cfg.data, cache, on_download, seed=cfg.train.seed, urls=cfg.data_urls, deduplicate=cfg.deduplicate, parse=cfg.parse)


def replayed(checkpoint: Checkpoint) -> list[RunEvent]:
    """A checkpoint's events as the resumed run tells them again: without an epoch's accuracies taken where
    the run stopped mid-epoch at its step limit (the run never stopping takes none there)."""
    step = checkpoint.position.step
    return [event for event in checkpoint.events if not (isinstance(event, EpochDone) and event.step >= step)]


def kept_events(events: list[RunEvent]) -> list[RunEvent]:
    """`events` as a checkpoint keeps them: per-message scores only at the latest estimate (as the recorder keeps them)."""
    latest = max((i for i, event in enumerate(events) if isinstance(event, ValidationEvaluated)), default=-1)
    return [replace(event, scores=None) if isinstance(event, ValidationEvaluated) and i != latest else event for i, event in enumerate(events)]


def stoppable(on_download: ProgressCallback | None, stop: StopFlag) -> ProgressCallback:
    """`on_download`, made to end the download (the engine removes the partial file) once `stop` is set."""

    def report(progress: DownloadProgress) -> None:
        if stop.is_set():
            raise Cancelled("the download was stopped; nothing was kept")
        if on_download is not None:
            on_download(progress)

    return report


def measured(model: torch.nn.Module, cfg: RunConfig, frozen_norms: dict[str, float], steps: int) -> AdapterMeasured:
    """The anatomy of the adapter being trained, after `steps` steps: how its updates grow, for the record."""
    return AdapterMeasured(steps, growth_point(adapter_tensors(model), cfg.lora, frozen_norms))


def record_fields(cfg: RunConfig, progress: RunProgress, device: str, precision: str, seconds: float | None = None) -> dict[str, Any]:
    """What the run record says of the run so far: config, data, curves, metrics and timings; `precision`
    is what the config's (perhaps "auto") became on `device`."""
    return {
        "config": asdict(cfg),
        "data": progress.data.to_dict() if progress.data else None,
        "device": device,
        "precision": precision,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "stopped": progress.final is None,
        "trainable": progress.trainable,
        "steps": progress.step,
        "examples_seen": progress.examples_seen,
        "baseline": asdict(progress.baseline) if progress.baseline else None,
        "losses": [asdict(p) for p in progress.estimates],
        "validation_history": [asdict(p) for p in progress.live],
        "epochs": [asdict(e) for e in progress.epoch_accuracies],
        "anatomy": [asdict(point) for point in progress.anatomy],
        "final": {name: asdict(m) for name, m in progress.final.items()} if progress.final else None,
        "best": best_fields(progress.best),
        "early_stopped": progress.early_stopped,
        "scores": {name: asdict(s) for name, s in progress.scores.items()},
        "timings": {"train_seconds": round(progress.train_seconds, 2), "total_seconds": round(seconds, 2) if seconds is not None else None},
    }


def best_fields(best: BestKept | None) -> dict[str, Any] | None:
    """What the record says of the best weights: their step, validation loss, adapter folder, and their figures when not the last's."""
    if best is None:
        return None
    return {
        "step": best.step,
        "validation_loss": best.validation_loss,
        "adapter": best.adapter,
        "final": {name: asdict(m) for name, m in best.metrics.items()} or None,
        "scores": {name: asdict(s) for name, s in best.scores.items()},
    }
