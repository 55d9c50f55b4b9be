"""One run's events folded into what a viewer shows and what the run record keeps.

Whoever consumes a run's events (the run itself for its run.json, the app's scheduler for the live
views, the CLI for its summary) feeds them to a `RunRecorder` and reads `progress()`: a new event is
taught here, once.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal, get_args

from engine.best import early_stop_words
from engine.data.download import DownloadProgress
from engine.data.prepared import DataSummary
from engine.evaluate import Metrics, Scores
from engine.lora import ParamCounts
from engine.runs.events import AdapterMeasured, BaselineEvaluated, BestKept, DataReady, FinalEvaluated, ModelReady, RunEvent, RunSaved
from engine.runs.time_left import TimeLeft
from engine.train import EpochDone, LossEvaluated, StepDone, TrainEnded, TrainStarted, ValidationEvaluated

Phase = Literal["starting", "preparing data", "loading model", "measuring baseline", "training", "final evaluation", "saving", "saved"]
# What a run does in each phase, in the words every message about it uses ("... ran out of memory while
# training", "Running: loading the model"): the one list of phases, so no reader can miss one.
PHASE_WORDS: dict[Phase, str] = {
    "starting": "starting",
    "preparing data": "getting the data",
    "loading model": "loading the model",
    "measuring baseline": "measuring the accuracy before training",
    "training": "training",
    "final evaluation": "measuring the final accuracy on every message",
    "saving": "saving the adapter",
    "saved": "saved",
}
assert set(PHASE_WORDS) == set(get_args(Phase)), "every phase needs its words"


@dataclass(frozen=True)
class BatchLoss:
    """One optimiser step's training-batch loss."""

    step: int  # 1-based steps taken
    examples_seen: int
    loss: float


@dataclass(frozen=True)
class RunProgress:
    """Everything known about a run so far; a copy, safe to hand to another thread."""

    phase: Phase = "starting"
    download: DownloadProgress | None = None  # the data download, while (or after) the run fetched it
    data: DataSummary | None = None
    model: ModelReady | None = None  # the loaded model: its device and parameter counts
    baseline: BaselineEvaluated | None = None
    total_steps: int = 0
    steps_per_epoch: int = 0
    epochs: int = 0  # epochs this run trains (fewer than configured when max_steps ends it early)
    step: int = 0
    epoch: int = 0
    examples_seen: int = 0
    loss: float | None = None  # the last training batch's loss
    eta_s: float | None = None  # training time left, while steps run, from the steps and evaluations measured (engine.runs.time_left)
    batch_losses: tuple[BatchLoss, ...] = ()
    estimates: tuple[LossEvaluated, ...] = ()  # train and validation loss every eval_freq steps
    live: tuple[ValidationEvaluated, ...] = ()  # the full validation set at each estimate (its metrics: per-message scores only in live_scores)
    live_scores: Scores | None = None  # every validation message's scores at the latest estimate: which messages each cell holds
    epoch_accuracies: tuple[EpochDone, ...] = ()
    anatomy: tuple[AdapterMeasured, ...] = ()  # the adapter's updates at each loss estimate and at the end
    final: Mapping[str, Metrics] | None = None  # full splits, after training; None when stopped
    scores: Mapping[str, Scores] = field(default_factory=dict)
    stopped: bool = False  # training was cut short by Stop
    early_stopped: str | None = None  # why early stopping ended the training before its last step (engine.best), None if it did not
    best: BestKept | None = None  # the weights with the lowest validation loss, kept beside the last
    train_seconds: float = 0.0
    saved: RunSaved | None = None

    @property
    def trainable(self) -> int | None:
        return self.model.counts.trainable if self.model else None

    @property
    def counts(self) -> ParamCounts | None:
        return self.model.counts if self.model else None


class RunRecorder:
    """Folds a run's events, in order, into its `RunProgress`. Not thread-safe: the owner locks.

    `eval_freq` (the run's steps between loss estimates) lets the time left count the estimates to come
    from the first step; without it they are counted once two have come.
    """

    def __init__(self, eval_freq: int | None = None) -> None:
        self._time_left = TimeLeft(eval_freq)
        self._fields: dict[str, object] = {}
        self._batch_losses: list[BatchLoss] = []
        self._estimates: list[LossEvaluated] = []
        self._live: list[ValidationEvaluated] = []
        self._epochs: list[EpochDone] = []
        self._anatomy: list[AdapterMeasured] = []

    def record(self, event: RunEvent) -> None:
        change = self._fields
        match event:
            case DownloadProgress():
                change.update(download=event, phase="preparing data")
            case DataReady():
                change.update(data=event.summary, phase="loading model")
            case ModelReady():
                change.update(model=event, phase="measuring baseline")
            case BaselineEvaluated():
                change.update(baseline=event, phase="training")
            case TrainStarted():
                change.update(total_steps=event.total_steps, steps_per_epoch=event.steps_per_epoch, epochs=-(-event.total_steps // event.steps_per_epoch))
                self._time_left.started(event.total_steps, event.steps_per_epoch)
            case StepDone():
                eta_s = self._time_left.step_done(event.step, event.elapsed_s)
                change.update(step=event.step, epoch=event.epoch, examples_seen=event.examples_seen, loss=event.loss, eta_s=eta_s)
                self._batch_losses.append(BatchLoss(event.step, event.examples_seen, event.loss))
            case LossEvaluated():
                self._estimates.append(event)
                self._time_left.estimated(event.step + 1)  # the book's 0-based step: after step + 1 steps taken
            case ValidationEvaluated():
                self._live.append(replace(event, scores=None))  # one set of per-message scores is kept, the latest
                change.update(live_scores=event.scores)
            case EpochDone():
                self._epochs.append(event)
                self._time_left.epoch_ended()
            case AdapterMeasured():
                self._anatomy.append(event)
            case TrainEnded():
                change.update(stopped=event.stopped, train_seconds=event.elapsed_s, eta_s=None, phase="saving" if event.stopped else "final evaluation")
                if event.early_stop and event.best_step is not None:
                    change.update(early_stopped=early_stop_words(event.steps, event.early_stop, event.best_step))
            case BestKept():
                change.update(best=event)
            case FinalEvaluated():
                change.update(final=dict(event.metrics), scores=dict(event.scores), phase="saving")
            case RunSaved():
                change.update(saved=event, phase="saved")

    def progress(self) -> RunProgress:
        return RunProgress(
            **self._fields,  # type: ignore[arg-type]
            batch_losses=tuple(self._batch_losses),
            estimates=tuple(self._estimates),
            live=tuple(self._live),
            epoch_accuracies=tuple(self._epochs),
            anatomy=tuple(self._anatomy),
        )
