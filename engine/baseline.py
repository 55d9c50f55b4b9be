"""The classical baseline: TF-IDF word features and logistic regression, on the same splits as the LoRA runs.

What a language model must beat to be worth its cost. Trained on the training split; the inverse
regularisation strength C is the one of `C_CHOICES` with the best validation accuracy (the smaller C
on a tie: the simpler model); test is read once, at the end.
"""

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from engine import strict_json
from engine.atomic import write_text_atomic
from engine.config import BASELINE_METHOD
from engine.data.prepared import Splits
from engine.evaluate import Metrics, Scores, metrics_from

C_CHOICES: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0, 1000.0)
MAX_ITERATIONS = 2000


@dataclass(frozen=True)
class BaselineResult:
    c: float  # the regularisation chosen on validation
    validation_by_c: dict[str, float]  # validation accuracy for each C tried
    final: dict[str, Metrics]  # train, validation, test
    scores: dict[str, Scores]  # validation and test: every message's label and class probabilities
    parameters: int  # the classifier's weights: one per word feature and class (one row for two classes), plus biases
    features: int  # the vocabulary's size
    train_seconds: float
    model: dict[str, Any]  # what `save_baseline` writes


def fit_baseline(splits: Splits, seed: int) -> BaselineResult:
    """Fit TF-IDF + logistic regression on `splits.train`, choose C on validation, measure every split."""
    started = time.perf_counter()
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)
    train_x = vectorizer.fit_transform(splits.train["Text"])
    features = {name: vectorizer.transform(frame["Text"]) if name != "train" else train_x for name, frame in splits.items()}
    labels = {name: frame["Label"].to_numpy() for name, frame in splits.items()}
    fitted: dict[float, LogisticRegression] = {}
    by_c: dict[float, float] = {}
    for c in C_CHOICES:
        fitted[c] = LogisticRegression(C=c, max_iter=MAX_ITERATIONS, random_state=seed).fit(train_x, labels["train"])
        by_c[c] = float((fitted[c].predict(features["validation"]) == labels["validation"]).mean())
    best = max(C_CHOICES, key=lambda c: (by_c[c], -c))
    chosen = fitted[best]
    train_seconds = time.perf_counter() - started
    n_classes = len(splits.labels)
    final, scores = {}, {}
    for name in ("train", "validation", "test"):
        probabilities = _class_probabilities(chosen, features[name], n_classes)
        final[name] = _metrics(labels[name], probabilities)
        if name != "train":
            scores[name] = Scores([int(label) for label in labels[name]], probabilities.tolist())
    return BaselineResult(
        c=best,
        validation_by_c={f"{c:g}": accuracy for c, accuracy in by_c.items()},
        final=final,
        scores=scores,
        parameters=int(chosen.coef_.size + chosen.intercept_.size),
        features=len(vectorizer.vocabulary_),
        train_seconds=train_seconds,
        model=_model_of(vectorizer, chosen, splits.labels),
    )


def _class_probabilities(model: LogisticRegression, features: Any, n_classes: int) -> np.ndarray:
    """P(class) for every message, one column per class of the data (a class missing from training gets 0)."""
    probabilities = np.zeros((features.shape[0], n_classes))
    probabilities[:, model.classes_] = model.predict_proba(features)
    return probabilities


def _metrics(labels: np.ndarray, probabilities: np.ndarray) -> Metrics:
    """The same metrics the LoRA runs report: cross-entropy, accuracy, confusion, precision/recall/F1."""
    n = probabilities.shape[1]
    predicted = probabilities.argmax(axis=1)
    confusion = torch.bincount(torch.as_tensor(labels * n + predicted), minlength=n * n).view(n, n)
    picked = probabilities[np.arange(len(labels)), labels]
    loss = float(-np.log(np.clip(picked, 1e-12, 1.0)).sum())
    return metrics_from(confusion, loss, len(labels))


def _model_of(vectorizer: TfidfVectorizer, model: LogisticRegression, labels: tuple[str, ...]) -> dict[str, Any]:
    """The fitted baseline as plain numbers: vocabulary, idf weights, coefficients and biases."""
    return {
        "method": BASELINE_METHOD,
        "labels": list(labels),
        "classes": [int(c) for c in model.classes_],
        "ngram_range": list(vectorizer.ngram_range),
        "sublinear_tf": vectorizer.sublinear_tf,
        "vocabulary": {term: int(index) for term, index in vectorizer.vocabulary_.items()},
        "idf": [float(v) for v in vectorizer.idf_],
        "coef": [[float(v) for v in row] for row in model.coef_],
        "intercept": [float(v) for v in model.intercept_],
        "C": float(model.C),
    }


def save_baseline(result: BaselineResult, path: Path) -> None:
    """Write the fitted baseline to `path` atomically, in plain JSON (never a pickle)."""
    write_text_atomic(path, strict_json.dumps(result.model) + "\n")
