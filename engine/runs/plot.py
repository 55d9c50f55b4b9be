"""The book's loss plot: train and validation loss against epochs, with examples seen on a second axis.

Drawn on a `matplotlib.figure.Figure` of its own, never through pyplot: importing the engine leaves
the process's backend alone (a notebook keeps its inline plots), and runs in several threads share
no figure state.
"""

from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure

from engine.atomic import atomic_path
from engine.train import LossEvaluated


def loss_figure(points: Sequence[LossEvaluated]) -> Figure:
    figure = Figure(figsize=(6, 3.5), layout="tight")
    axis = figure.subplots()
    epochs = [p.epoch_progress for p in points]
    axis.plot(epochs, [p.train_loss for p in points], label="Training loss")
    axis.plot(epochs, [p.validation_loss for p in points], linestyle="-.", label="Validation loss")
    axis.set_xlabel("Epochs")
    axis.set_ylabel("Loss")
    axis.legend(loc="upper right")
    if points:
        # The second axis maps the same positions to examples seen.
        examples = axis.twiny()
        examples.plot([p.examples_seen for p in points], [p.train_loss for p in points], alpha=0)
        examples.set_xlabel("Examples seen")
    return figure


def save_loss_plot(points: Sequence[LossEvaluated], path: Path) -> Path:
    with atomic_path(Path(path)) as temporary:
        loss_figure(points).savefig(temporary, format="png", dpi=120)
    return Path(path)
