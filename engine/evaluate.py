"""Loss, accuracy, confusion matrix and precision/recall/F1 over a loader; thresholds and ROC per class."""

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from itertools import islice, pairwise
from typing import Literal

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, SequentialSampler

from engine.config import Pooling
from engine.loaders import PASS_COST_TOKENS, Batch, collate, least_padding_cuts
from engine.model import GPT, read_positions

# How a loss over several batches is averaged: over every message, or (the book's calc_loss_loader)
# as the mean of each batch's mean, which weighs a short last batch's messages more.
LossMean = Literal["message", "batch"]

# With two classes, class 1 is the positive one (spam for the SMS data, the book's label 1): the
# class precision, recall and F1 are of, and the one a threshold or an explanation is about.
POSITIVE_CLASS = 1


def positive_class(labels: Sequence[str]) -> int | None:
    """The index of the positive class among `labels`; None for three or more, which have no single one."""
    return POSITIVE_CLASS if len(labels) == 2 else None


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
    precision: float  # of the positive class with two classes (spam), macro-averaged over every class with more
    recall: float
    f1: float
    count: int


@dataclass(frozen=True)
class Scores:
    """Every message's true label and class probabilities: enough for any threshold, ROC, mistakes, of any class."""

    labels: list[int]
    probabilities: list[list[float]]  # probabilities[i][c]: P(class c) for message i

    @classmethod
    def binary(cls, labels: Sequence[int], p_positive: Sequence[float]) -> "Scores":
        """Two-class scores from P(class 1) alone (what run records of older versions kept)."""
        return cls([int(label) for label in labels], [[1.0 - float(p), float(p)] for p in p_positive])

    def p_of(self, positive: int) -> list[float]:
        """P(`positive`) of every message: the one-vs-rest score of that class."""
        return [row[positive] for row in self.probabilities]


class _Tally:
    """A running confusion matrix and summed loss, filled batch by batch."""

    def __init__(self, n_classes: int, loss_mean: LossMean) -> None:
        self.confusion = torch.zeros(n_classes, n_classes, dtype=torch.long)
        self.loss_mean = loss_mean
        self.loss = 0.0
        self.batch_means = 0.0
        self.batches = 0
        self.count = 0

    def add(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        n = self.confusion.size(0)
        if self.loss_mean == "batch":
            self.batch_means += F.cross_entropy(logits, labels).item()
            self.batches += 1
        self.loss += F.cross_entropy(logits, labels, reduction="sum").item()
        predicted = logits.argmax(dim=-1)
        self.confusion += torch.bincount(labels * n + predicted, minlength=n * n).view(n, n).cpu()
        self.count += labels.numel()

    def metrics(self) -> Metrics:
        metrics = metrics_from(self.confusion, self.loss, self.count)
        return replace(metrics, loss=self.batch_means / self.batches) if self.loss_mean == "batch" and self.batches else metrics


def evaluate(
    model: GPT,
    loader: DataLoader,
    device: torch.device,
    pooling: Pooling,
    num_batches: int | None = None,
    should_stop: Callable[[], bool] | None = None,
    loss_mean: LossMean = "message",
) -> Metrics:
    """Metrics over the first `num_batches` batches (all when None); `should_stop` ends it early."""
    return evaluate_with_scores(model, loader, device, pooling, num_batches, should_stop, loss_mean)[0]


def evaluate_with_scores(
    model: GPT,
    loader: DataLoader,
    device: torch.device,
    pooling: Pooling,
    num_batches: int | None = None,
    should_stop: Callable[[], bool] | None = None,
    loss_mean: LossMean = "message",
) -> tuple[Metrics, Scores]:
    """Metrics plus every message's label and class probabilities, in loader order, from one pass."""
    whole, _, scores = _one_pass(model, loader, device, pooling, num_batches, None, should_stop, loss_mean)
    return whole, scores


def evaluate_whole_and_first(
    model: GPT,
    loader: DataLoader,
    device: torch.device,
    pooling: Pooling,
    first_batches: int,
    should_stop: Callable[[], bool] | None = None,
    loss_mean: LossMean = "message",
) -> tuple[Metrics, Metrics, Scores]:
    """Metrics over the whole loader and over its first `first_batches` batches, and every message's scores, from one pass.

    The book estimates the validation loss on the first batches; the same logits also give the
    full set's confusion matrix, so the live view costs the rest of the set, not a second pass.
    """
    whole, first, scores = _one_pass(model, loader, device, pooling, None, first_batches, should_stop, loss_mean)
    assert first is not None
    return whole, first, scores


@torch.no_grad()
def _one_pass(
    model: GPT,
    loader: DataLoader,
    device: torch.device,
    pooling: Pooling,
    num_batches: int | None,
    first_batches: int | None,
    should_stop: Callable[[], bool] | None,
    loss_mean: LossMean,
) -> tuple[Metrics, Metrics | None, Scores]:
    was_training = model.training
    model.eval()
    n_classes = model.score.out_features if model.score is not None else 2
    whole, first = _Tally(n_classes, loss_mean), _Tally(n_classes, loss_mean) if first_batches is not None else None
    labels: list[int] = []
    probabilities: list[list[float]] = []
    try:
        for index, (logits, batch_labels) in enumerate(_logits_by_batch(model, loader, device, pooling, num_batches, should_stop)):
            whole.add(logits, batch_labels)
            if first is not None and index < first_batches:
                first.add(logits, batch_labels)
            labels += batch_labels.tolist()
            probabilities += torch.softmax(logits, dim=-1).tolist()
    finally:
        model.train(was_training)
    return whole.metrics(), first.metrics() if first is not None else None, Scores(labels, probabilities)


def _logits_by_batch(
    model: GPT,
    loader: DataLoader,
    device: torch.device,
    pooling: Pooling,
    num_batches: int | None,
    should_stop: Callable[[], bool] | None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(fp32 class logits, labels) of the loader's batches, in its order, on `device`.

    Reading the last real token makes a message's logits independent of the padding after it, so
    the messages of an unshuffled loader run in batches of similar length instead (an SMS batch of
    8 in file order pads to about 1.8 times its real tokens) and come back in the loader's batches.
    A shuffling loader is iterated as it is: its order is the training run's.
    """
    sequential = isinstance(getattr(loader, "sampler", None), SequentialSampler) and getattr(loader, "batch_size", None)
    if pooling != "last_token" or not sequential:
        for batch in islice(loader, num_batches):
            if should_stop and should_stop():
                return
            batch = batch.to(device)
            yield batch_logits(model, batch, pooling).float(), batch.labels
        return
    dataset, size = loader.dataset, loader.batch_size
    count = len(dataset) if num_batches is None else min(len(dataset), num_batches * size)
    items = [dataset[i] for i in range(count)]
    order = sorted(range(count), key=lambda i: len(items[i][0]))
    rows: list[torch.Tensor | None] = [None] * count
    # Up to 4 batches' worth of rows at once: products of more rows run faster, and without the
    # activations training keeps for backward this still needs less memory than a training step.
    for start, end in pairwise(least_padding_cuts([len(items[i][0]) for i in order], 4 * size, PASS_COST_TOKENS)):
        if should_stop and should_stop():
            return
        chosen = order[start:end]
        logits = batch_logits(model, collate([items[i] for i in chosen]).to(device), pooling).float()
        for i, row in zip(chosen, logits, strict=True):
            rows[i] = row
    for start in range(0, count, size):
        span = range(start, min(start + size, count))
        yield torch.stack([rows[i] for i in span]), torch.tensor([items[i][1] for i in span], device=device)  # type: ignore[misc]


def metrics_from(confusion: torch.Tensor, total_loss: float, count: int) -> Metrics:
    """Accuracy and loss, plus precision/recall/F1 of the positive class for two classes, macro-averaged for more."""
    if count == 0:
        return Metrics(float("nan"), float("nan"), confusion.tolist(), float("nan"), float("nan"), float("nan"), 0)
    classes = [POSITIVE_CLASS] if confusion.size(0) == 2 else list(range(confusion.size(0)))
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
class RocCurve:
    false_positive_rate: list[float]
    true_positive_rate: list[float]
    thresholds: list[float]
    auc: float


@dataclass(frozen=True)
class Mistake:
    text: str
    label: int  # the true class
    predicted: int  # `positive` when P(positive) >= threshold, else the likeliest other class
    p_positive: float


def at_threshold(scores: Scores, threshold: float, positive: int = POSITIVE_CLASS) -> Metrics:
    """One-vs-rest metrics of class `positive`: predicted positive when P(positive) >= threshold.

    Row and column 0 of the 2x2 confusion matrix are "any other class", 1 is `positive`; with two
    classes and `positive` 1, threshold 0.5 is the argmax rule.
    """
    confusion = torch.zeros(2, 2, dtype=torch.long)
    for label, p in zip(scores.labels, scores.p_of(positive), strict=True):
        confusion[int(label == positive), int(p >= threshold)] += 1
    return metrics_from(confusion, float("nan"), len(scores.labels))


def roc_curve(scores: Scores, positive: int = POSITIVE_CLASS) -> RocCurve:
    """The one-vs-rest ROC curve of class `positive` (every distinct threshold) and the area under it."""
    positives = sum(1 for label in scores.labels if label == positive)
    negatives = len(scores.labels) - positives
    if not positives or not negatives:
        raise ValueError("an ROC curve needs messages of the chosen class and of the others")
    ranked = sorted(zip(scores.p_of(positive), scores.labels, strict=True), reverse=True)
    fpr, tpr, thresholds = [0.0], [0.0], [float("inf")]
    true_pos = false_pos = 0
    for i, (p, label) in enumerate(ranked):
        true_pos += label == positive
        false_pos += label != positive
        if i + 1 == len(ranked) or ranked[i + 1][0] != p:  # ties move together
            fpr.append(false_pos / negatives)
            tpr.append(true_pos / positives)
            thresholds.append(p)
    auc = sum((fpr[i] - fpr[i - 1]) * (tpr[i] + tpr[i - 1]) / 2 for i in range(1, len(fpr)))
    return RocCurve(fpr, tpr, thresholds, auc)


def mistakes(scores: Scores, texts: list[str], threshold: float = 0.5, positive: int = POSITIVE_CLASS) -> list[Mistake]:
    """Every message the one-vs-rest rule for `positive` gets wrong, most confident mistakes first."""
    wrong = []
    for text, label, row in zip(texts, scores.labels, scores.probabilities, strict=True):
        p = row[positive]
        if (p >= threshold) != (label == positive):
            others = [c for c in range(len(row)) if c != positive]
            predicted = positive if p >= threshold else max(others, key=lambda c: row[c])
            wrong.append(Mistake(text, label, predicted, p))
    return sorted(wrong, key=lambda m: abs(m.p_positive - threshold), reverse=True)


def cell_messages(scores: Scores, true: int, predicted: int, threshold: float | None = None, positive: int = POSITIVE_CLASS) -> list[int]:
    """The messages in one cell of a confusion matrix, as indices into `scores`, the most confident answers first.

    Without `threshold`: the matrix of every class, each message given its likeliest class. With it:
    `at_threshold`'s one-vs-rest matrix of `positive`, where 1 is `positive` (P(positive) >= threshold) and 0 any other class.
    """
    chosen = []
    for index, (label, row) in enumerate(zip(scores.labels, scores.probabilities, strict=True)):
        if threshold is None:
            answer, sure = max(range(len(row)), key=row.__getitem__), max(row)
            cell = (label, answer)
        else:
            p = row[positive]
            cell = (int(label == positive), int(p >= threshold))
            sure = abs(p - threshold)
        if cell == (true, predicted):
            chosen.append((sure, index))
    return [index for _, index in sorted(chosen, key=lambda pair: -pair[0])]
