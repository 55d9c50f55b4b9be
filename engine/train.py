"""The training loop as an iterator of small events, with the book's evaluation schedule.

Every `eval_freq` optimiser steps (counting from the first, step 0) the train and validation
loss are estimated on `eval_iter` batches; after each epoch, train and validation accuracy on
`eval_iter` batches. With `live_metrics`, each loss estimate also scores the full validation set
(confusion matrix, precision/recall/F1) in the same pass that gives the validation loss. A stop
event is checked before every step and between the batches of that full pass. A loss that is not
finite (a batch's, before its optimiser step, or an estimate's) ends the run with TrainingDiverged.
"""

import contextlib
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from engine.config import TrainConfig
from engine.errors import TrainingDiverged
from engine.evaluate import LossMean, Metrics, Scores, batch_loss, evaluate, evaluate_whole_and_first
from engine.loaders import Loaders
from engine.model import GPT


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


TrainEvent = TrainStarted | StepDone | LossEvaluated | ValidationEvaluated | EpochDone | TrainEnded


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on GPUs that support it (fp32 master weights); plain fp32 elsewhere."""
    if enabled and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train(
    model: GPT,
    loaders: Loaders,
    cfg: TrainConfig,
    device: torch.device,
    stop: threading.Event | None = None,
    loss_mean: LossMean = "message",
) -> Iterator[TrainEvent]:
    """Fine-tune the trainable parameters of `model` in place, yielding progress as it goes.

    Draws nothing itself: the order of the batches is the loaders' (see engine.draws).
    """
    parameters = [p for p in model.parameters() if p.requires_grad]
    if not parameters:
        raise ValueError("the model has no trainable parameters: apply LoRA before training")
    optimizer = torch.optim.AdamW(parameters, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = len(loaders.train)
    total = steps_per_epoch * cfg.epochs if cfg.max_steps is None else min(cfg.max_steps, steps_per_epoch * cfg.epochs)
    yield TrainStarted(total, steps_per_epoch, cfg.epochs, len(loaders.train.dataset))
    estimate = lambda loader: evaluate(model, loader, device, cfg.pooling, cfg.eval_iter, loss_mean=loss_mean)
    start = time.perf_counter()
    step = examples_seen = 0
    stopped = False
    model.train()
    for epoch in range(1, cfg.epochs + 1):
        for batch in loaders.train:
            if stop is not None and stop.is_set():
                stopped = True
                break
            batch = batch.to(device)
            optimizer.zero_grad(set_to_none=True)
            with autocast(device, cfg.bf16_autocast):
                loss = batch_loss(model, batch, cfg.pooling)
            batch_loss_value = _finite(loss.item(), "training batch", step + 1, cfg)  # before the step: the weights stay finite
            loss.backward()
            optimizer.step()
            step += 1
            examples_seen += batch.labels.numel()
            elapsed = time.perf_counter() - start
            yield StepDone(step, total, epoch, examples_seen, batch_loss_value, elapsed, elapsed / step * (total - step))
            if (step - 1) % cfg.eval_freq == 0:
                progress = (epoch - 1) + _position_in_epoch(step, steps_per_epoch)
                train_loss = _finite(estimate(loaders.train_sample).loss, "estimated training", step, cfg)
                if not cfg.live_metrics:
                    validation_loss = _finite(estimate(loaders.validation).loss, "validation", step, cfg)
                    yield LossEvaluated(step - 1, progress, examples_seen, train_loss, validation_loss)
                else:
                    # The full pass checks Stop between batches (it is several times longer than an estimate).
                    whole, first, scores = evaluate_whole_and_first(
                        model, loaders.validation, device, cfg.pooling, cfg.eval_iter, stop.is_set if stop else None, loss_mean
                    )
                    if stop is None or not stop.is_set():  # cut short by Stop, its figures would cover part of the set
                        yield LossEvaluated(step - 1, progress, examples_seen, train_loss, _finite(first.loss, "validation", step, cfg))
                        yield ValidationEvaluated(step - 1, progress, examples_seen, whole, scores)
            if step >= total:
                break
        if stopped:
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
    yield TrainEnded(stopped, step, examples_seen, time.perf_counter() - start)


def _finite(loss: float, which: str, step: int, cfg: TrainConfig) -> float:
    """`loss` if it is a number; a NaN or infinite loss ends the run (no later step could recover)."""
    if not math.isfinite(loss):
        raise TrainingDiverged(
            f"the {which} loss became {loss} at step {step}: training diverged, most likely because the learning rate "
            f"({cfg.lr:g}) is too high; train again with a lower one"
        )
    return loss


def _position_in_epoch(step: int, steps_per_epoch: int) -> float:
    return ((step - 1) % steps_per_epoch + 1) / steps_per_epoch
