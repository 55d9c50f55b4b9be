"""Where a training loop is, so that a run can stop and resume as if it never had.

A checkpoint holds what the next step depends on: the trainable tensors, AdamW's moments, the
step, epoch and position in the epoch's order, and the state of every generator the loaders
draw from. The epoch's order is drawn when its first batch is read, and estimates draw from
generators too (with the book's draws, from the very same one), so the checkpoint keeps each
generator's state twice: when the epoch's first batch was drawn, and now. Resuming sets them to
the first, reads the epoch's batches up to the position (replaying the draws of the order, not
the steps), then sets them to the second. The best weights so far and early stopping's count
(engine.best) go with it.

The file is written atomically with torch.save; it holds the run's own events too (plain
dataclasses), so it is read back with pickle's full loader: a checkpoint is trusted as the run
folder's own file, never one a visitor uploads.
"""

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader

from engine.atomic import write_bytes_atomic
from engine.loaders import Batch, Loaders

if TYPE_CHECKING:
    from engine.best import BestSoFar

CHECKPOINT_FILE = "checkpoint.pt"


@dataclass(frozen=True)
class LoopPosition:
    """After `step` optimiser steps: the `in_epoch`-th batch of epoch `epoch` (1-based) was the last taken."""

    step: int
    epoch: int
    in_epoch: int
    examples_seen: int
    elapsed_s: float  # training time so far, so that the time left counts from where it was
    epoch_start: tuple[torch.Tensor, ...]  # the generators' states when the epoch's order was drawn
    now: tuple[torch.Tensor, ...]


class LoopTracker:
    """What `train` tells its caller about where it is: the optimiser, and the position after the latest step."""

    def __init__(self, resume_from: "Checkpoint | None" = None) -> None:
        self.resume_from = resume_from
        self.optimizer: torch.optim.Optimizer | None = None
        self.position: LoopPosition | None = None
        self.best: BestSoFar | None = None


@dataclass(frozen=True)
class Checkpoint:
    trainable: dict[str, torch.Tensor]  # every tensor the run trains, by its name in the model
    optimizer: dict[str, Any]  # AdamW's state_dict
    position: LoopPosition
    events: tuple[Any, ...]  # the run's events so far, replayed to whoever follows the resumed run
    best: "BestSoFar | None" = None  # the lowest validation loss so far, its step, weights and the estimates since (None: a checkpoint of an older version)


def loader_generators(loaders: Loaders) -> list[torch.Generator]:
    """Every generator the loaders (and their samplers) draw from, each once, in a fixed order."""
    found: list[torch.Generator] = []
    for loader in (loaders.train, loaders.train_estimates, loaders.validation, loaders.test):
        if loader is None:
            continue
        for owner in (loader, loader.sampler, loader.batch_sampler):
            generator = getattr(owner, "generator", None)
            if isinstance(generator, torch.Generator) and all(generator is not seen for seen in found):
                found.append(generator)
    return found


def generator_states(generators: list[torch.Generator]) -> tuple[torch.Tensor, ...]:
    return tuple(generator.get_state() for generator in generators)


def set_generator_states(generators: list[torch.Generator], states: tuple[torch.Tensor, ...]) -> None:
    if len(states) != len(generators):
        raise ValueError(f"the checkpoint has {len(states)} generator states, these loaders {len(generators)}: it was made with other settings")
    for generator, state in zip(generators, states, strict=True):
        generator.set_state(state)


def resumed_epoch(loader: DataLoader, generators: list[torch.Generator], position: LoopPosition) -> Iterator[Batch]:
    """The rest of `position`'s epoch: its order drawn again as it was, the batches already taken skipped."""
    set_generator_states(generators, position.epoch_start)
    batches = iter(loader)
    for _ in range(position.in_epoch):
        next(batches)
    set_generator_states(generators, position.now)
    return batches


def trainable_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().cpu().clone() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    parameters = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if set(parameters) != set(tensors):
        raise ValueError("the checkpoint's trained tensors do not match this model's: it was made with other settings")
    with torch.no_grad():
        for name, parameter in parameters.items():
            parameter.copy_(tensors[name])


def save_checkpoint(path: Path, model: torch.nn.Module, tracker: LoopTracker, events: list[Any]) -> None:
    """Write where `tracker`'s loop is now (after a whole step) into `path`, atomically."""
    if tracker.optimizer is None or tracker.position is None:
        raise ValueError("nothing to checkpoint: the training loop has not taken a step")
    state = {
        "trainable": trainable_tensors(model),
        "optimizer": _to_cpu(tracker.optimizer.state_dict()),
        "position": tracker.position,
        "events": tuple(events),
        "best": tracker.best,
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_bytes_atomic(path, buffer.getvalue())


def read_checkpoint(path: Path) -> Checkpoint:
    state = torch.load(path, map_location="cpu", weights_only=False)  # our own file (see the module's note)
    return Checkpoint(state["trainable"], state["optimizer"], state["position"], state["events"], state.get("best"))


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, dict):
        return {key: _to_cpu(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_to_cpu(item) for item in value]
    return value
