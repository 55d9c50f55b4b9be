"""The time left of a run is steady from its second step: evaluations are counted as what they are.

A synthetic run with known costs (a step, an estimate, an epoch's accuracy) is fed to the recorder
as a real run's events, so the true time left is known at every step.
"""

import random
from collections.abc import Iterator

import pytest

from engine.evaluate import Metrics
from engine.runs.recorder import RunRecorder
from engine.train import EpochDone, LossEvaluated, StepDone, TrainEnded, TrainStarted, ValidationEvaluated

TOTAL, PER_EPOCH, EVAL_FREQ = 150, 50, 10
STEP_S, ESTIMATE_S, EPOCH_S = 1.0, 6.0, 3.0  # an estimate with live metrics costs several steps


def synthetic_run(seed: int = 0, jitter: float = 0.1) -> Iterator[tuple[object, float]]:
    """(event, true seconds of training left after it) in the order the training loop yields them."""
    draw = random.Random(seed)
    costs: list[tuple[str, int, float]] = []  # what happens, in order, and how long it takes
    for step in range(1, TOTAL + 1):
        costs.append(("step", step, STEP_S * (1 + draw.uniform(-jitter, jitter))))
        if (step - 1) % EVAL_FREQ == 0:
            costs.append(("estimate", step, ESTIMATE_S))
        if step % PER_EPOCH == 0 or step == TOTAL:
            costs.append(("epoch", step, EPOCH_S))
    total_s = sum(cost for _, _, cost in costs)
    yield TrainStarted(TOTAL, PER_EPOCH, TOTAL // PER_EPOCH, 8 * TOTAL), total_s
    elapsed = 0.0
    metrics = Metrics(0.5, 0.7, [[1, 1], [1, 1]], 0.5, 0.5, 0.5, 4)
    for kind, step, cost in costs:
        elapsed += cost
        if kind == "step":
            yield StepDone(step, TOTAL, -(-step // PER_EPOCH), 8 * step, 0.7, elapsed, elapsed / step * (TOTAL - step)), total_s - elapsed
        elif kind == "estimate":
            yield LossEvaluated(step - 1, step / PER_EPOCH, 8 * step, 0.7, 0.7), total_s - elapsed
            yield ValidationEvaluated(step - 1, step / PER_EPOCH, 8 * step, metrics), total_s - elapsed
        else:
            yield EpochDone(-(-step // PER_EPOCH), step, 8 * step, 0.5, 0.5, elapsed), total_s - elapsed
    yield TrainEnded(False, TOTAL, 8 * TOTAL, elapsed), 0.0


def time_left_by_step(recorder: RunRecorder) -> list[tuple[int, float | None, float, float]]:
    """(step, the recorder's time left, the loop's own figure, the true time left) at each step."""
    rows = []
    for event, truth in synthetic_run():
        recorder.record(event)  # type: ignore[arg-type]
        if isinstance(event, StepDone):
            rows.append((event.step, recorder.progress().eta_s, event.eta_s, truth))
    return rows


def test_the_time_left_is_steady_and_close_to_the_truth_from_the_second_step() -> None:
    rows = time_left_by_step(RunRecorder(eval_freq=EVAL_FREQ))
    assert rows[0][1] is None  # after one step no estimate is measured yet: no figure rather than a low one
    shown = [(step, left, truth) for step, left, _, truth in rows[1:]]
    assert all(left is not None for _, left, _ in shown)
    for step, left, truth in shown:
        assert left == pytest.approx(truth, rel=0.12, abs=3 * STEP_S), step
    # it counts down, and never goes up by more than 2 % from one step to the next, even right after an estimate
    rises = [(later - earlier) / earlier for (_, earlier, _), (_, later, _) in zip(shown, shown[1:], strict=False) if later > earlier]
    assert max(rises, default=0.0) < 0.02


def test_the_loops_own_figure_jumps_where_this_one_does_not() -> None:
    # What the visitor saw before (13 -> 36 -> 14 minutes): the loop divides the time so far, first
    # estimate included, by the steps taken. The same run shows it, so the test above measures something.
    rows = time_left_by_step(RunRecorder(eval_freq=EVAL_FREQ))
    loop = [own for _, _, own, _ in rows[:12]]
    assert loop[1] > 2 * loop[0] and loop[5] < 0.6 * loop[1]  # up 150 %, then down again


def test_without_eval_freq_the_estimates_count_once_two_have_come() -> None:
    rows = time_left_by_step(RunRecorder())
    for step, left, _, truth in rows[EVAL_FREQ + 1 :]:  # the second estimate came after step 11
        assert left == pytest.approx(truth, rel=0.12, abs=3 * STEP_S), step
    assert rows[-1][1] is not None and rows[-1][1] == pytest.approx(EPOCH_S, abs=STEP_S)  # after the last step: its epoch's accuracy is left
