"""The training loop as an iterator of small events, with the book's evaluation schedule.

Every `eval_freq` optimiser steps (counting from the first, step 0) the train and validation
loss are estimated on `eval_iter` batches; after each epoch, train and validation accuracy on
`eval_iter` batches. With `live_metrics`, each loss estimate also scores the full validation set
(confusion matrix, precision/recall/F1) in the same pass that gives the validation loss. A stop
event is checked before every step and between the batches of that full pass. A loss that is not
finite (a batch's, whose step then leaves the weights as they were, or an estimate's) ends the run
with TrainingDiverged.

Each loss estimate's validation loss is compared with the lowest so far (engine.best): the weights of the
lowest are kept (`tracker.best`), and with `early_stop` N, N estimates in a row without a lower one end
the training (TrainEnded says so and where the best was).

The host never waits for the device within a step: the optimiser is AdamW's fused kernel where the
device has it, and the batches' losses stay on the device until read (`_StepLosses`).
"""

import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from engine.best import after_estimate, patience_spent
from engine.checkpoint import LoopPosition, LoopTracker, generator_states, load_trainable, loader_generators, resumed_epoch
from engine.config import TrainConfig
from engine.errors import TrainingDiverged
from engine.evaluate import LossMean, Metrics, Scores, batch_loss, evaluate, evaluate_whole_and_first
from engine.failure import divergence_cause
from engine.loaders import Loaders
from engine.lora import lora_layers
from engine.model import GPT

LOSS_READ_S = 0.5  # the training losses are read from the device at most this often (see _StepLosses)


@dataclass(frozen=True)
class TrainStarted:
    total_steps: int
    steps_per_epoch: int
    epochs: int
    train_examples: int


@dataclass(frozen=True)
class StepDone:
    step: int  # 1-based count of optimiser steps taken
    total_steps: int
    epoch: int  # 1-based
    examples_seen: int
    loss: float
    elapsed_s: float
    eta_s: float


@dataclass(frozen=True)
class LossEvaluated:
    step: int  # the book's 0-based global step
    epoch_progress: float  # epochs completed, fractional: the plot's x axis
    examples_seen: int
    train_loss: float
    validation_loss: float


@dataclass(frozen=True)
class ValidationEvaluated:
    """The full validation set at a loss estimate (right after its LossEvaluated): what the model gets right so far."""

    step: int  # the book's 0-based global step, as in LossEvaluated
    epoch_progress: float
    examples_seen: int
    metrics: Metrics  # every validation message: confusion matrix, accuracy, precision/recall/F1, loss
    scores: Scores | None = None  # every validation message's label and class probabilities, in the split's order


@dataclass(frozen=True)
class EpochDone:
    epoch: int
    step: int
    examples_seen: int
    train_accuracy: float
    validation_accuracy: float
    elapsed_s: float


@dataclass(frozen=True)
class TrainEnded:
    stopped: bool  # True when the stop event ended it early
    steps: int
    examples_seen: int
    elapsed_s: float
    early_stop: int = 0  # the patience that ended it (estimates without a lower validation loss); 0: it was not stopped early
    best_step: int | None = None  # steps taken at the estimate with the lowest validation loss (None: no estimate)
    best_validation_loss: float | None = None


TrainEvent = TrainStarted | StepDone | LossEvaluated | ValidationEvaluated | EpochDone | TrainEnded


def train(
    model: GPT,
    loaders: Loaders,
    cfg: TrainConfig,
    device: torch.device,
    stop: threading.Event | None = None,
    loss_mean: LossMean = "message",
    *,
    read_losses_every_s: float = LOSS_READ_S,
    tracker: LoopTracker | None = None,
) -> Iterator[TrainEvent]:
    """Fine-tune the trainable parameters of `model` in place, yielding progress as it goes.

    Draws nothing itself: the order of the batches is the loaders' (see engine.draws). The batches'
    losses are read from the device at most every `read_losses_every_s` (0: after every step, as a
    per-step timer needs), their StepDone events then leaving together.

    `tracker` is told the optimiser and, after every step (before a loss estimate's events leave),
    where the loop is and the best weights so far (engine.best), for checkpoints; with
    `tracker.resume_from` the loop starts where that checkpoint left it (engine.checkpoint).
    """
    parameters = [p for p in model.parameters() if p.requires_grad]
    if not parameters:
        raise ValueError("the model has no trainable parameters: apply LoRA before training")
    optimizer, fused = make_optimizer(parameters, cfg)
    tracker = tracker or LoopTracker()
    tracker.optimizer = optimizer
    resume = tracker.resume_from.position if tracker.resume_from is not None else None
    tracker.position = resume
    tracker.best = tracker.resume_from.best if tracker.resume_from is not None else None
    if tracker.resume_from is not None:
        load_trainable(model, tracker.resume_from.trainable)
        optimizer.load_state_dict(tracker.resume_from.optimizer)
    generators = loader_generators(loaders)
    lora_scale = max((layer.scale for layer in lora_layers(model)), default=None)  # named if the loss diverges
    steps_per_epoch = len(loaders.train)
    total = steps_per_epoch * cfg.epochs if cfg.max_steps is None else min(cfg.max_steps, steps_per_epoch * cfg.epochs)
    yield TrainStarted(total, steps_per_epoch, cfg.epochs, len(loaders.train.dataset))
    estimate = lambda loader: evaluate(model, loader, device, cfg.pooling, cfg.eval_iter, loss_mean=loss_mean)
    start = time.perf_counter() - (resume.elapsed_s if resume else 0.0)
    losses = _StepLosses(device, fused, cfg, lora_scale, total, start, read_losses_every_s)
    step, examples_seen = (resume.step, resume.examples_seen) if resume else (0, 0)
    stopped = early = False
    model.train()
    for epoch in range(resume.epoch if resume else 1, cfg.epochs + 1):
        if resume is not None and epoch == resume.epoch:
            epoch_start, in_epoch, batches = resume.epoch_start, resume.in_epoch, resumed_epoch(loaders.train, generators, resume)
        else:
            epoch_start, in_epoch, batches = generator_states(generators), 0, iter(loaders.train)

        for batch in batches:
            if stop is not None and stop.is_set():
                stopped = True
                break
            batch = batch.to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = batch_loss(model, batch, cfg.pooling)
            loss.backward()
            losses.before_step(optimizer, loss, step + 1)
            optimizer.step()
            step += 1
            in_epoch += 1
            examples_seen += batch.labels.numel()
            losses.add(step, epoch, examples_seen, loss)
            estimating = (step - 1) % cfg.eval_freq == 0
            if estimating or losses.due():
                yield from losses.read()
            if estimating:
                progress = (epoch - 1) + _position_in_epoch(step, steps_per_epoch)
                train_loss = _finite(estimate(loaders.train_sample).loss, "estimated training", step, cfg, lora_scale)
                if not cfg.live_metrics:
                    validation_loss = _finite(estimate(loaders.validation).loss, "validation", step, cfg, lora_scale)
                    tracker.best = after_estimate(tracker.best, step, validation_loss, model)
                    tracker.position = _here(step, epoch, in_epoch, examples_seen, start, epoch_start, generators)
                    yield LossEvaluated(step - 1, progress, examples_seen, train_loss, validation_loss)
                else:
                    # The full pass checks Stop between batches (it is several times longer than an estimate).
                    whole, first, scores = evaluate_whole_and_first(
                        model, loaders.validation, device, cfg.pooling, cfg.eval_iter, stop.is_set if stop else None, loss_mean
                    )
                    tracker.position = _here(step, epoch, in_epoch, examples_seen, start, epoch_start, generators)
                    if stop is None or not stop.is_set():  # cut short by Stop, its figures would cover part of the set
                        validation_loss = _finite(first.loss, "validation", step, cfg, lora_scale)
                        tracker.best = after_estimate(tracker.best, step, validation_loss, model)
                        yield LossEvaluated(step - 1, progress, examples_seen, train_loss, validation_loss)
                        yield ValidationEvaluated(step - 1, progress, examples_seen, whole, scores)
                early = patience_spent(tracker.best, cfg.early_stop)
            else:
                tracker.position = _here(step, epoch, in_epoch, examples_seen, start, epoch_start, generators)
            if step >= total or early:
                break
        yield from losses.read()
        if stopped or early:  # no epoch's accuracies where it did not end
            break
        yield EpochDone(
            epoch,
            step,
            examples_seen,
            estimate(loaders.train_sample).accuracy,
            estimate(loaders.validation).accuracy,
            time.perf_counter() - start,
        )
        if step >= total:
            break
    model.eval()
    best = tracker.best
    best_step, best_loss = (best.step, best.validation_loss) if best else (None, None)
    yield TrainEnded(stopped, step, examples_seen, time.perf_counter() - start, cfg.early_stop if early else 0, best_step, best_loss)


def make_optimizer(parameters: list[torch.nn.Parameter], cfg: TrainConfig) -> tuple[torch.optim.AdamW, bool]:
    """AdamW over `parameters`, and whether it is the fused one: one kernel for every tensor (CUDA,
    MPS and CPU have it), which can also skip a step on the device when told, without the host."""
    try:
        return torch.optim.AdamW(parameters, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True), True
    except RuntimeError:  # a device without the fused kernel
        return torch.optim.AdamW(parameters, lr=cfg.lr, weight_decay=cfg.weight_decay), False


class _StepLosses:
    """The training batches' losses, kept on the device and read several steps at a time.

    Reading a loss makes the host wait for the device; once a step, that wait would leave a GPU idle
    while the next step is prepared. So the losses stay on the device and are read at most every
    LOSS_READ_S (and before every estimate, at the end of each epoch and of training), and their
    StepDone events leave together. A loss that is not finite must not move the weights: a fused
    optimiser is told so on the device (`found_inf`, the flag PyTorch's GradScaler gives it) and
    skips that step and every later one, and the next read ends the run naming that step; an
    optimiser without the flag has each loss read before its step instead.
    """

    def __init__(
        self, device: torch.device, skips_on_device: bool, cfg: TrainConfig, lora_scale: float | None, total: int, started: float, every_s: float
    ) -> None:
        self.skips_on_device, self.cfg, self.lora_scale = skips_on_device, cfg, lora_scale
        self.total, self.started, self.every_s = total, started, every_s
        self.diverged = torch.zeros((), dtype=torch.bool, device=device)
        self.pending: list[tuple[int, int, int, float, torch.Tensor]] = []  # step, epoch, examples seen, elapsed, loss
        self.last_read = time.perf_counter()

    def before_step(self, optimizer: torch.optim.Optimizer, loss: torch.Tensor, step: int) -> None:
        """Keep the weights finite: step `step` (1-based) is skipped if its loss, or any before it, is not finite."""
        if self.skips_on_device:
            self.diverged.logical_or_(~torch.isfinite(loss.detach()))
            optimizer.found_inf = self.diverged.float()  # type: ignore[attr-defined]  # read by the fused kernel, on the device
        else:
            _finite(loss.item(), "training batch", step, self.cfg, self.lora_scale)

    def add(self, step: int, epoch: int, examples_seen: int, loss: torch.Tensor) -> None:
        self.pending.append((step, epoch, examples_seen, time.perf_counter() - self.started, loss.detach()))

    def due(self) -> bool:
        return not self.skips_on_device or time.perf_counter() - self.last_read >= self.every_s

    def read(self) -> Iterator[StepDone]:
        """The pending steps' events in order, after one wait for the device; a loss that is not finite ends the run."""
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        values = torch.stack([loss for *_, loss in pending]).float().tolist()
        self.last_read = time.perf_counter()
        for (step, epoch, examples_seen, elapsed, _), value in zip(pending, values, strict=True):
            loss = _finite(value, "training batch", step, self.cfg, self.lora_scale)
            yield StepDone(step, self.total, epoch, examples_seen, loss, elapsed, elapsed / step * (self.total - step))


def _finite(loss: float, which: str, step: int, cfg: TrainConfig, lora_scale: float | None) -> float:
    """`loss` if it is a number; a NaN or infinite loss ends the run (no later step could recover)."""
    if not math.isfinite(loss):
        raise TrainingDiverged(f"the {which} loss became {loss} at step {step}: training diverged, {divergence_cause(cfg.lr, lora_scale)}")
    return loss


def _here(
    step: int, epoch: int, in_epoch: int, examples_seen: int, start: float, epoch_start: tuple[torch.Tensor, ...], generators: list[torch.Generator]
) -> LoopPosition:
    """Where the loop is after `step` steps, `in_epoch` of them in epoch `epoch`."""
    return LoopPosition(step, epoch, in_epoch, examples_seen, time.perf_counter() - start, epoch_start, generator_states(generators))


def _position_in_epoch(step: int, steps_per_epoch: int) -> float:
    return ((step - 1) % steps_per_epoch + 1) / steps_per_epoch
