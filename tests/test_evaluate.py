import json
import math

import pytest
import torch
from conftest import randomise_lora
from torch import nn

from engine.evaluate import Mistake, Scores, at_threshold, evaluate_whole_and_first, evaluate_with_scores, mistakes, roc_curve
from engine.loaders import Batch
from engine.runs.events import FinalEvaluated, RunSaved


def test_threshold_metrics_and_roc_on_known_scores():
    scores = Scores.binary([0, 0, 1, 1, 1], [0.1, 0.6, 0.3, 0.8, 0.9])
    half = at_threshold(scores, 0.5)
    assert half.confusion == [[1, 1], [1, 2]] and half.accuracy == pytest.approx(0.6)
    assert (half.precision, half.recall) == (pytest.approx(2 / 3), pytest.approx(2 / 3))
    strict = at_threshold(scores, 0.85)
    assert strict.confusion == [[2, 0], [2, 1]] and strict.precision == 1.0
    roc = roc_curve(scores)
    assert roc.false_positive_rate[0] == 0 and roc.true_positive_rate[-1] == 1 and roc.false_positive_rate[-1] == 1
    assert roc.auc == pytest.approx(5 / 6)  # 5 of the 6 (positive, negative) pairs are ranked right
    assert [m.text for m in mistakes(scores, ["a", "b", "c", "d", "e"])] == ["c", "b"]  # most confident mistake first
    assert Scores.binary([0, 1], [0.25, 0.75]).probabilities == [[0.75, 0.25], [0.25, 0.75]]


# Three classes, worked by hand. P(class 1) is [.2, .6, .5, .3, .4, .1]; class 1 are messages 1 and 3.
THREE = Scores(
    [0, 1, 2, 1, 0, 2],
    [[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.2, 0.5, 0.3], [0.3, 0.3, 0.4], [0.5, 0.4, 0.1], [0.1, 0.1, 0.8]],
)


def test_one_vs_rest_threshold_for_three_classes():
    half = at_threshold(THREE, 0.5, positive=1)  # predicted 1: messages 1 (right) and 2 (wrong); message 3 missed
    assert half.confusion == [[3, 1], [1, 1]] and half.accuracy == pytest.approx(4 / 6)
    assert (half.precision, half.recall, half.f1) == (0.5, 0.5, 0.5)
    low = at_threshold(THREE, 0.3, positive=1)  # predicted 1: messages 1, 2, 3, 4
    assert low.confusion == [[2, 2], [0, 2]] and (low.precision, low.recall) == (0.5, 1.0) and low.f1 == pytest.approx(2 / 3)


def test_one_vs_rest_roc_for_three_classes():
    roc = roc_curve(THREE, positive=1)  # ranked: .6 (1) .5 .4 .3 (1) .2 .1
    assert roc.false_positive_rate == [0, 0, 0.25, 0.5, 0.5, 0.75, 1]
    assert roc.true_positive_rate == [0, 0.5, 0.5, 0.5, 1, 1, 1]
    assert roc.thresholds == [math.inf, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1]
    assert roc.auc == pytest.approx(6 / 8)  # .6 beats all 4 others, .3 beats 2 of them
    tied = roc_curve(THREE, positive=2)  # P(2): .8 (2) .4 .3 .3 (2) .1 .1: the tie at .3 moves as one step
    assert tied.false_positive_rate == [0, 0, 0.25, 0.5, 1] and tied.true_positive_rate == [0, 0.5, 0.5, 1, 1]
    assert tied.auc == pytest.approx(6.5 / 8)  # a tie counts half
    with pytest.raises(ValueError, match="chosen class"):
        roc_curve(Scores([0, 0], [[0.6, 0.3, 0.1], [0.5, 0.3, 0.2]]), positive=1)


def test_one_vs_rest_mistakes_name_the_predicted_class():
    wrong = mistakes(THREE, list("abcdef"), 0.5, positive=1)
    # d (class 1, P(1) .3) was missed: its likeliest other class is 2; c (class 2) was taken for 1
    assert wrong == [Mistake("d", 1, 2, 0.3), Mistake("c", 2, 1, 0.5)]


class LookupModel(nn.Module):
    """Logits looked up by each message's first token: a model whose every answer is known."""

    def __init__(self, table: list[list[float]]) -> None:
        super().__init__()
        self.table = torch.tensor(table)
        self.score = nn.Linear(1, len(table[0]))

    def forward(self, input_ids: torch.Tensor, read: torch.Tensor) -> torch.Tensor:
        return self.table[input_ids[:, 0]]


def batch(ids: list[int], labels: list[int]) -> Batch:
    return Batch(torch.tensor([[i] for i in ids]), torch.ones(len(ids), dtype=torch.long), torch.tensor(labels))


def test_whole_set_and_first_batches_come_from_one_pass():
    table = [[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0]]
    model = LookupModel(table).train()
    loader = [batch([0, 1], [0, 1]), batch([2, 2], [2, 0]), batch([1], [2])]  # 2 right, then 1 of 2, then wrong
    whole, first, live = evaluate_whole_and_first(model, loader, torch.device("cpu"), "last_token", first_batches=1)
    right, wrong = -math.log(math.exp(2) / (math.exp(2) + 2)), -math.log(1 / (math.exp(2) + 2))
    assert first.count == 2 and first.accuracy == 1.0 and first.loss == pytest.approx(right)
    assert whole.count == 5 and whole.accuracy == pytest.approx(3 / 5)
    assert whole.confusion == [[1, 0, 1], [0, 1, 0], [0, 1, 1]]
    assert whole.loss == pytest.approx((3 * right + 2 * wrong) / 5)
    assert model.training  # put back as it was
    metrics, scores = evaluate_with_scores(model, loader, torch.device("cpu"), "last_token")
    assert metrics == whole and len(scores.probabilities) == 5 and scores.probabilities[0][0] == pytest.approx(math.exp(2) / (math.exp(2) + 2))
    assert live == scores  # the live view's per-message scores are the same pass's
    stopped, _, _ = evaluate_whole_and_first(model, loader, torch.device("cpu"), "last_token", 1, should_stop=lambda: True)
    assert stopped.count == 0


def test_run_reports_per_message_scores(trained_run):
    _, events = trained_run
    final = next(e for e in events if isinstance(e, FinalEvaluated))
    validation = final.scores["validation"]
    assert len(validation.labels) == 149 and "train" not in final.scores
    assert all(len(row) == 2 and sum(row) == pytest.approx(1) for row in validation.probabilities)
    assert at_threshold(validation, 0.5).accuracy == pytest.approx(final.metrics["validation"].accuracy)
    # The area under the ROC curve is the chance that a random spam scores above a random ham (ties count half).
    test = final.scores["test"]
    spam = [p for p, label in zip(test.p_of(1), test.labels, strict=True) if label == 1]
    ham = [p for p, label in zip(test.p_of(1), test.labels, strict=True) if label == 0]
    outranked = sum((s > h) + 0.5 * (s == h) for s in spam for h in ham) / (len(spam) * len(ham))
    assert roc_curve(test).auc == pytest.approx(outranked)
    record = json.loads(next(e for e in events if isinstance(e, RunSaved)).record.read_text())
    assert len(record["scores"]["test"]["probabilities"]) == 300


def test_length_sorted_evaluation_equals_the_loaders_own_batches(tiny_model_dir, prepared_data):
    from engine.classifier import build_classifier
    from engine.config import LoRAConfig, preset
    from engine.data.prepared import prepare
    from engine.evaluate import evaluate
    from engine.loaders import make_loaders
    from engine.weights import load_model

    cpu = torch.device("cpu")
    torch.manual_seed(0)
    model = build_classifier(load_model(str(tiny_model_dir), cpu), LoRAConfig(rank=2, alpha=4))
    randomise_lora(model, 0.5)  # answers that differ from message to message
    validation = make_loaders(prepare(str(prepared_data)).splits, preset("recommended").train, model.cfg.context_length).validation
    as_batched = list(validation)  # a plain list of the loader's own padded batches: the path that takes them as they come

    sorted_metrics, sorted_scores = evaluate_with_scores(model, validation, cpu, "last_token")
    plain_metrics, plain_scores = evaluate_with_scores(model, as_batched, cpu, "last_token")
    assert sorted_metrics.confusion == plain_metrics.confusion and sorted_metrics.count == 149
    assert sorted_metrics.loss == pytest.approx(plain_metrics.loss, abs=1e-5)
    assert sorted_scores.labels == plain_scores.labels
    assert torch.allclose(torch.tensor(sorted_scores.probabilities), torch.tensor(plain_scores.probabilities), atol=1e-5)
    first_five = evaluate(model, validation, cpu, "last_token", 5)
    assert first_five.count == 40 and first_five.loss == pytest.approx(evaluate(model, as_batched, cpu, "last_token", 5).loss, abs=1e-5)
