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


def evaluate(
    model: GPT,
    loader: DataLoader,
    device: torch.device,
    pooling: Pooling,
    num_batches: int | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Metrics:
    """Metrics over the first `num_batches` batches (all when None); `should_stop` ends it early."""
    return evaluate_with_scores(model, loader, device, pooling, num_batches, should_stop)[0]


@torch.no_grad()
def evaluate_with_scores(
    model: GPT,
    loader: DataLoader,
    device: torch.device,
    pooling: Pooling,
    num_batches: int | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple["Metrics", "Scores"]:
    """Metrics plus every message's label and P(class 1), in loader order, from one pass."""
    was_training = model.training
    model.eval()
    n_classes = model.score.out_features if model.score is not None else 2
    confusion = torch.zeros(n_classes, n_classes, dtype=torch.long)
    total_loss = 0.0
    labels: list[int] = []
    p_positive: list[float] = []
    try:
        for batch in islice(loader, num_batches):
            if should_stop and should_stop():
                break
            batch = batch.to(device)
            logits = batch_logits(model, batch, pooling).float()
            total_loss += F.cross_entropy(logits, batch.labels, reduction="sum").item()
            predicted = logits.argmax(dim=-1)
            confusion += torch.bincount(batch.labels * n_classes + predicted, minlength=n_classes**2).view(n_classes, n_classes).cpu()
            labels += batch.labels.tolist()
            p_positive += torch.softmax(logits, dim=-1)[:, 1].tolist()
    finally:
        model.train(was_training)
    return metrics_from(confusion, total_loss, len(labels)), Scores(labels, p_positive)


def metrics_from(confusion: torch.Tensor, total_loss: float, count: int) -> Metrics:
    """Accuracy and loss, plus precision/recall/F1 of class 1 (spam) for two classes, macro-averaged for more."""
    if count == 0:
        return Metrics(float("nan"), float("nan"), confusion.tolist(), float("nan"), float("nan"), float("nan"), 0)
    classes = [1] if confusion.size(0) == 2 else list(range(confusion.size(0)))
    precision, recall, f1 = (sum(values) / len(classes) for values in zip(*(_class_scores(confusion, c) for c in classes), strict=True))
    return Metrics(
        loss=total_loss / count,
        accuracy=confusion.diagonal().sum().item() / count,
        confusion=confusion.tolist(),
        precision=precision,
        recall=recall,
        f1=f1,
        count=count,
    )


def _class_scores(confusion: torch.Tensor, positive: int) -> tuple[float, float, float]:
    true_pos = confusion[positive, positive].item()
    predicted_pos = confusion[:, positive].sum().item()
    actual_pos = confusion[positive, :].sum().item()
    precision = true_pos / predicted_pos if predicted_pos else 0.0
    recall = true_pos / actual_pos if actual_pos else 0.0
    return precision, recall, 2 * precision * recall / (precision + recall) if precision + recall else 0.0


@dataclass(frozen=True)
class Scores:
    """Every message's true label and P(positive class): enough for any threshold, ROC, mistakes."""

    labels: list[int]
    p_positive: list[float]


@dataclass(frozen=True)
class RocCurve:
    false_positive_rate: list[float]
    true_positive_rate: list[float]
    thresholds: list[float]
    auc: float


def at_threshold(scores: Scores, threshold: float) -> Metrics:
    """Two-class metrics when "positive" means P(positive) >= threshold (0.5 is the argmax rule)."""
    confusion = torch.zeros(2, 2, dtype=torch.long)
    for label, p in zip(scores.labels, scores.p_positive, strict=True):
        confusion[int(label == 1), int(p >= threshold)] += 1
    return metrics_from(confusion, float("nan"), len(scores.labels))


def roc_curve(scores: Scores) -> RocCurve:
    """The ROC curve (every distinct threshold) and the area under it."""
    positives = sum(1 for label in scores.labels if label == 1)
    negatives = len(scores.labels) - positives
    if not positives or not negatives:
        raise ValueError("an ROC curve needs messages of both classes")
    ranked = sorted(zip(scores.p_positive, scores.labels, strict=True), reverse=True)
    fpr, tpr, thresholds = [0.0], [0.0], [float("inf")]
    true_pos = false_pos = 0
    for i, (p, label) in enumerate(ranked):
        true_pos += label == 1
        false_pos += label != 1
        if i + 1 == len(ranked) or ranked[i + 1][0] != p:  # ties move together
            fpr.append(false_pos / negatives)
            tpr.append(true_pos / positives)
            thresholds.append(p)
    auc = sum((fpr[i] - fpr[i - 1]) * (tpr[i] + tpr[i - 1]) / 2 for i in range(1, len(fpr)))
    return RocCurve(fpr, tpr, thresholds, auc)


def mistakes(scores: Scores, texts: list[str], threshold: float = 0.5) -> list[tuple[str, int, float]]:
    """(text, true label, P(positive)) of every misclassified message, most confident mistakes first."""
    wrong = [
        (text, label, p)
        for text, label, p in zip(texts, scores.labels, scores.p_positive, strict=True)
        if (p >= threshold) != (label == 1)
    ]
    return sorted(wrong, key=lambda row: abs(row[2] - threshold), reverse=True)
