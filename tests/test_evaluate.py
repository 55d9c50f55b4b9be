import pytest

from engine.evaluate import Scores, at_threshold, mistakes, roc_curve
from engine.run import FinalEvaluated


def test_threshold_metrics_and_roc_on_known_scores():
    scores = Scores([0, 0, 1, 1, 1], [0.1, 0.6, 0.3, 0.8, 0.9])
    half = at_threshold(scores, 0.5)
    assert half.confusion == [[1, 1], [1, 2]] and half.accuracy == pytest.approx(0.6)
    assert (half.precision, half.recall) == (pytest.approx(2 / 3), pytest.approx(2 / 3))
    strict = at_threshold(scores, 0.85)
    assert strict.confusion == [[2, 0], [2, 1]] and strict.precision == 1.0
    roc = roc_curve(scores)
    assert roc.false_positive_rate[0] == 0 and roc.true_positive_rate[-1] == 1 and roc.false_positive_rate[-1] == 1
    assert roc.auc == pytest.approx(5 / 6)  # 5 of the 6 (positive, negative) pairs are ranked right
    assert [m[0] for m in mistakes(scores, ["a", "b", "c", "d", "e"])] == ["c", "b"]  # most confident mistake first


def test_run_reports_per_message_scores(trained_run):
    _, events = trained_run
    final = next(e for e in events if isinstance(e, FinalEvaluated))
    validation = final.scores["validation"]
    assert len(validation.labels) == 149 and "train" not in final.scores
    assert at_threshold(validation, 0.5).accuracy == pytest.approx(final.metrics["validation"].accuracy)
    assert 0.0 <= roc_curve(final.scores["test"]).auc <= 1.0
