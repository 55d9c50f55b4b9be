"""Loss, accuracy, confusion matrix and precision/recall/F1 over a loader."""

from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from engine.config import Pooling
from engine.loaders import Batch
from engine.model import GPT, read_positions


def batch_logits(model: GPT, batch: Batch, pooling: Pooling) -> torch.Tensor:
    """Class logits (B, n_classes) for a batch already on the model's device."""
    read = read_positions(batch.lengths, batch.input_ids.size(1), pooling)
    return model(batch.input_ids, read)


def batch_loss(model: GPT, batch: Batch, pooling: Pooling) -> torch.Tensor:
    return F.cross_entropy(batch_logits(model, batch, pooling), batch.labels)


@dataclass(frozen=True)
class Metrics:
    loss: float
    accuracy: float
    confusion: list[list[int]]  # confusion[true][predicted]
    precision: float  # for the positive class (spam)
    recall: float
    f1: float
    count: int


@torch.no_grad()
def evaluate(
    model: GPT,
    loader: DataLoader,
    device: torch.device,
    pooling: Pooling,
    num_batches: int | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Metrics:
    """Metrics over the first `num_batches` batches (all when None); `should_stop` ends it early."""
    was_training = model.training
    model.eval()
    n_classes = model.score.out_features if model.score is not None else 2
    confusion = torch.zeros(n_classes, n_classes, dtype=torch.long)
    total_loss, count = 0.0, 0
    try:
        for batch in islice(loader, num_batches):
            if should_stop and should_stop():
                break
            batch = batch.to(device)
            logits = batch_logits(model, batch, pooling).float()
            total_loss += F.cross_entropy(logits, batch.labels, reduction="sum").item()
            predicted = logits.argmax(dim=-1)
            confusion += torch.bincount(batch.labels * n_classes + predicted, minlength=n_classes**2).view(n_classes, n_classes).cpu()
            count += batch.labels.numel()
    finally:
        model.train(was_training)
    return metrics_from(confusion, total_loss, count)


def metrics_from(confusion: torch.Tensor, total_loss: float, count: int) -> Metrics:
    if count == 0:
        return Metrics(float("nan"), float("nan"), confusion.tolist(), float("nan"), float("nan"), float("nan"), 0)
    true_pos = confusion[1, 1].item()
    predicted_pos = confusion[:, 1].sum().item()
    actual_pos = confusion[1, :].sum().item()
    precision = true_pos / predicted_pos if predicted_pos else 0.0
    recall = true_pos / actual_pos if actual_pos else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return Metrics(
        loss=total_loss / count,
        accuracy=confusion.diagonal().sum().item() / count,
        confusion=confusion.tolist(),
        precision=precision,
        recall=recall,
        f1=f1,
        count=count,
    )
