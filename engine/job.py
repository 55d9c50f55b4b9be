"""One fine-tuning run in a background thread that any number of viewers can watch and anyone can stop.

The app owns one TrainingJob rather than a browser session owning the run: a reloaded page, a
second visitor or a script polls `snapshot()` and sees the same progress; `stop()` ends the run
within one training step (the engine checks the event before every step), within one batch
while it evaluates, and at the next received chunk while it downloads the data. The same job can
run a rank sweep (one run per LoRA rank, one after another), so a sweep and a training run never
overlap and Stop ends either. A run that runs out
of memory fails with advice instead of taking the app down. No UI code here.
"""

import logging
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from engine.config import LABELS, RunConfig
from engine.data import SOURCES, DataSummary, prepare
from engine.download import DownloadProgress
from engine.errors import Cancelled, LoRALabError
from engine.evaluate import Metrics
from engine.events import BaselineEvaluated, DataReady, FinalEvaluated, ModelReady, RunSaved
from engine.memory import is_out_of_memory, out_of_memory_message, release_memory
from engine.run import fine_tune
from engine.sweep import SweepEvent, SweepPoint, SweepRunStarted, rank_sweep
from engine.train import EpochDone, LossEvaluated, StepDone, TrainEnded, TrainStarted, ValidationEvaluated

log = logging.getLogger(__name__)

JobState = Literal["idle", "running", "done", "stopped", "failed"]


@dataclass(frozen=True)
class LossRow:
    """One point of the live loss plot, in long format (one row per split)."""

    step: int  # optimiser steps taken (1-based)
    examples_seen: int
    loss: float
    split: str  # "batch": each step's training batch; "train", "validation": estimates every eval_freq steps


@dataclass(frozen=True)
class AccuracyRow:
    """One point of the live accuracy plot; epoch 0 is the baseline before training."""

    epoch: int
    examples_seen: int
    accuracy: float
    split: str  # "train" or "validation"


@dataclass(frozen=True)
class JobSnapshot:
    """Everything a viewer shows, copied under the job's lock."""

    state: JobState
    phase: str  # what a running job is doing: "downloading data", "loading model", "training", ...
    config: RunConfig | None
    step: int
    total_steps: int
    epoch: int
    epochs: int  # epochs this run will train (fewer than configured when max_steps ends it early)
    examples_seen: int
    loss: float | None  # the last training batch's loss
    elapsed_s: float  # since start()
    eta_s: float | None  # training time left, once steps run
    losses: tuple[LossRow, ...]
    accuracies: tuple[AccuracyRow, ...]
    data: DataSummary | None
    baseline: BaselineEvaluated | None
    final: Mapping[str, Metrics] | None
    saved: RunSaved | None
    download: DownloadProgress | None
    error: str | None  # why a failed run failed, in the engine's user-facing words
    sweep: tuple[SweepPoint, ...] = ()  # a rank sweep's finished runs, in order
    sweep_run: SweepRunStarted | None = None  # the sweep's current run; None for a single run
    sweep_ranks: tuple[int, ...] = ()  # every rank the sweep trains; () for a single run
    live: tuple[ValidationEvaluated, ...] = ()  # the full validation set at each loss estimate so far; the last is the latest

    @property
    def class_names(self) -> tuple[str, ...]:
        """The run's class names, in class-index order (ham, spam until the data says otherwise)."""
        return self.data.labels if self.data is not None else LABELS

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def status(self) -> str:
        """One line for a status box, e.g. "running: step 12/300 · epoch 1/5 · loss 0.532 · ETA 0:42"."""
        if self.state == "idle":
            return "ready: no run yet"
        if self.state == "failed":
            return f"failed: {self.error}"
        progress = f"step {self.step}/{self.total_steps}" if self.total_steps else (self.phase if self.running else "before training")
        if self.state == "running" and self.phase == "downloading data" and self.download is not None:
            return f"running: downloading data from {self.download.url} ({self.download.received / 1e6:.1f} MB)"
        if self.state == "running":
            details = [progress]
            if self.sweep_run is not None:
                details.insert(0, f"rank {self.sweep_run.rank} (run {self.sweep_run.index + 1} of {self.sweep_run.total})")
            if self.total_steps:
                details.append(f"epoch {max(self.epoch, 1)}/{self.epochs}")
            if self.loss is not None:
                details.append(f"loss {self.loss:.3f}")
            if self.eta_s is not None and self.phase == "training":
                details.append(f"ETA {format_seconds(self.eta_s)}")
            elif self.total_steps:
                details.append(self.phase)
            return "running: " + " · ".join(details)
        where = f"; saved to {self.saved.out_dir}" if self.saved else ""
        return f"{self.state}: {progress} in {format_seconds(self.elapsed_s)}{where}"


def format_seconds(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class TrainingJob:
    """At most one `fine_tune` run at a time, in a daemon thread, with a shared, lock-protected record of it."""

    def __init__(self, data_urls: Sequence[str] = SOURCES) -> None:
        self._data_urls = tuple(data_urls)  # where a run without prepared data downloads it from
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reset(None, "idle")

    def start(self, cfg: RunConfig, ranks: Sequence[int] = ()) -> bool:
        """Start `cfg` in the background; False (and nothing changes) while another run is going.

        With `ranks`, run a rank sweep instead: `cfg` once per rank, into OUT/rank-R.
        """
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return False
            self._stop.clear()
            self._reset(cfg, "running")
            self._sweep_ranks = tuple(ranks)
            self._thread = threading.Thread(target=self._run, args=(cfg, self._sweep_ranks), name="lora-lab-training", daemon=True)
            self._thread.start()
            return True

    def stop(self) -> bool:
        """Ask the running job to stop after its current step; False when nothing runs."""
        with self._lock:
            running = self._state == "running"
        if running:
            self._stop.set()
        return running

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the run's thread ends (True) or `timeout` passes (False)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return thread is None or not thread.is_alive()

    def snapshot(self) -> JobSnapshot:
        with self._lock:
            return JobSnapshot(
                state=self._state,
                phase=self._phase,
                config=self._config,
                step=self._step,
                total_steps=self._total_steps,
                epoch=self._epoch,
                epochs=self._epochs,
                examples_seen=self._examples_seen,
                loss=self._loss,
                elapsed_s=(self._ended or time.perf_counter()) - self._started if self._config else 0.0,
                eta_s=self._eta_s,
                losses=tuple(self._losses),
                accuracies=tuple(self._accuracies),
                data=self._data,
                baseline=self._baseline,
                final=dict(self._final) if self._final is not None else None,
                saved=self._saved,
                download=self._download,
                error=self._error,
                sweep=tuple(self._sweep),
                sweep_run=self._sweep_run,
                sweep_ranks=self._sweep_ranks,
                live=tuple(self._live),
            )

    def _reset(self, cfg: RunConfig | None, state: JobState) -> None:
        self._config, self._state, self._phase = cfg, state, "starting"
        self._started, self._ended = time.perf_counter(), None
        self._sweep: list[SweepPoint] = []
        self._sweep_run: SweepRunStarted | None = None
        self._sweep_ranks: tuple[int, ...] = ()
        self._device = cfg.device if cfg and cfg.device != "auto" else "the device"  # the resolved one once the model is loaded
        self._error: str | None = None
        self._reset_run()

    def _reset_run(self) -> None:
        """Forget one run's progress and results (a sweep's next run starts from nothing)."""
        self._step = self._total_steps = self._epoch = self._epochs = self._examples_seen = 0
        self._loss: float | None = None
        self._eta_s: float | None = None
        self._losses: list[LossRow] = []
        self._accuracies: list[AccuracyRow] = []
        self._live: list[ValidationEvaluated] = []
        self._data: DataSummary | None = None
        self._baseline: BaselineEvaluated | None = None
        self._final: Mapping[str, Metrics] | None = None
        self._saved: RunSaved | None = None
        self._download: DownloadProgress | None = None

    def _run(self, cfg: RunConfig, ranks: tuple[int, ...] = ()) -> None:
        state: JobState = "done"
        error = None
        try:
            if cfg.data is None:
                # fine_tune would download from the built-in URLs; the job honours its own list.
                self._set_phase("downloading data")
                prepared = prepare(None, cfg.data_cache, self._on_download, seed=cfg.train.seed, urls=self._data_urls)
                cfg = replace(cfg, data=str(prepared.folder))
            self._set_phase("loading data")
            events: Iterator[SweepEvent] = rank_sweep(cfg, ranks, self._stop) if ranks else fine_tune(cfg, self._stop, self._on_download)
            for event in events:
                self._record(event)
            if self._stop.is_set():
                state = "stopped"
        except Cancelled:  # Stop while the data downloaded: the partial file is gone, nothing to save
            state = "stopped"
        except (LoRALabError, ValueError, FileNotFoundError) as problem:
            state, error = "failed", str(problem)
        except Exception as problem:  # a bug must still end the run visibly, not kill the thread silently
            if is_out_of_memory(problem):
                with self._lock:
                    device, phase = self._device, self._phase
                state, error = "failed", out_of_memory_message(device, phase)
                release_memory()
            else:
                log.exception("training run failed")
                state, error = "failed", f"{type(problem).__name__}: {problem}"
        with self._lock:
            self._state, self._error, self._ended = state, error, time.perf_counter()
            self._phase = state
            self._eta_s = None

    def _set_phase(self, phase: str) -> None:
        with self._lock:
            self._phase = phase

    def _on_download(self, progress: DownloadProgress) -> None:
        if self._stop.is_set():
            raise Cancelled("the download was stopped; nothing was kept")  # the engine removes the partial file
        with self._lock:
            self._download = progress

    def _record(self, event: SweepEvent) -> None:
        with self._lock:
            if isinstance(event, SweepRunStarted):
                self._reset_run()
                self._sweep_run, self._phase = event, "loading data"
            elif isinstance(event, SweepPoint):
                self._sweep.append(event)
            elif isinstance(event, DataReady):
                self._data, self._phase = event.summary, "loading model"
            elif isinstance(event, ModelReady):
                self._phase, self._device = "measuring baseline accuracy", event.device
            elif isinstance(event, BaselineEvaluated) and self._stop.is_set():
                self._phase = "stopping"  # cut short by Stop: its accuracies cover too few batches to show
            elif isinstance(event, BaselineEvaluated):
                self._baseline, self._phase = event, "training"
                self._accuracies += [AccuracyRow(0, 0, event.train_accuracy, "train"), AccuracyRow(0, 0, event.validation_accuracy, "validation")]
            elif isinstance(event, TrainStarted):
                self._total_steps = event.total_steps
                self._epochs = -(-event.total_steps // event.steps_per_epoch)  # ceiling division
            elif isinstance(event, StepDone):
                self._step, self._epoch, self._examples_seen = event.step, event.epoch, event.examples_seen
                self._loss, self._eta_s = event.loss, event.eta_s
                self._losses.append(LossRow(event.step, event.examples_seen, event.loss, "batch"))
            elif isinstance(event, LossEvaluated):
                steps_taken = event.step + 1  # the book counts from 0; the plot counts steps taken, like StepDone
                self._losses += [
                    LossRow(steps_taken, event.examples_seen, event.train_loss, "train"),
                    LossRow(steps_taken, event.examples_seen, event.validation_loss, "validation"),
                ]
            elif isinstance(event, ValidationEvaluated):
                self._live.append(event)
            elif isinstance(event, EpochDone):
                self._accuracies += [
                    AccuracyRow(event.epoch, event.examples_seen, event.train_accuracy, "train"),
                    AccuracyRow(event.epoch, event.examples_seen, event.validation_accuracy, "validation"),
                ]
            elif isinstance(event, TrainEnded):
                self._eta_s = None
                self._phase = "saving" if event.stopped else "final evaluation"
            elif isinstance(event, FinalEvaluated):
                # Stopped mid-evaluation, the metrics cover part of the splits: show none rather than those.
                self._final, self._phase = (None if self._stop.is_set() else event.metrics), "saving"
            elif isinstance(event, RunSaved):
                self._saved = event
