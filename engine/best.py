"""The best weights so far (lowest validation loss at a loss estimate), and early stopping.

At each loss estimate the training loop compares the validation loss with the lowest so far: a lower
one keeps a copy of the trainable tensors (on the CPU: a LoRA adapter's few MB, never the frozen
base) and starts counting again; an equal or higher one counts one more estimate without
improvement. With a patience of N (`TrainConfig.early_stop`), N such estimates in a row end the
training. The count, the lowest loss, its step and its tensors travel in the checkpoint, so a run
stopped and resumed counts as it would have without stopping.
"""

from dataclasses import dataclass, replace

import torch

from engine.checkpoint import trainable_tensors


@dataclass(frozen=True)
class BestSoFar:
    step: int  # optimiser steps taken when it was estimated (1-based, as a run's "steps")
    validation_loss: float
    tensors: dict[str, torch.Tensor]  # the trainable tensors then, by name, on the CPU
    estimates_since: int = 0  # loss estimates since, none with a lower validation loss


def after_estimate(best: BestSoFar | None, step: int, validation_loss: float, model: torch.nn.Module) -> BestSoFar:
    """The best so far once the estimate after `step` steps gave `validation_loss`: a copy of the
    weights if it is lower than every earlier one, else one more estimate without improvement."""
    if best is None or validation_loss < best.validation_loss:
        return BestSoFar(step, validation_loss, trainable_tensors(model))
    return replace(best, estimates_since=best.estimates_since + 1)


def patience_spent(best: BestSoFar | None, patience: int) -> bool:
    """Whether early stopping with `patience` (0: never) ends the training now."""
    return patience > 0 and best is not None and best.estimates_since >= patience


def early_stop_words(step: int, patience: int, best_step: int) -> str:
    """Why a run ended before its last step, in one sentence for the log, the app and the record."""
    estimates = "estimate" if patience == 1 else f"{patience} estimates"
    return f"stopped early at step {step}: validation loss not lower for {estimates}; best at step {best_step}"
