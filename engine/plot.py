"""The book's loss plot: train and validation loss against epochs, with examples seen on a second axis."""

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed or wanted
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from engine.atomic import atomic_path  # noqa: E402
from engine.train import LossEvaluated  # noqa: E402


def loss_figure(points: Sequence[LossEvaluated]) -> Figure:
    figure, axis = plt.subplots(figsize=(6, 3.5))
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
    figure.tight_layout()
    return figure


def save_loss_plot(points: Sequence[LossEvaluated], path: Path) -> Path:
    figure = loss_figure(points)
    try:
        with atomic_path(Path(path)) as temporary:
            figure.savefig(temporary, format="png", dpi=120)
    finally:
        plt.close(figure)
    return Path(path)
