"""Training time left, from the steps measured so far: steady from the second step on.

The loop's own figure (elapsed / steps x steps left) counts every pause for an evaluation as if each
step took that long: right after the first loss estimate it jumped from 13 to 36 minutes, then fell
back to 14. Here the time between two steps is split by what happened in it: a plain step (its
seconds smoothed), a loss estimate (every `eval_freq` steps from the first) or an epoch's accuracy
(at each epoch's end). What is left is the steps left times a step, plus the estimates and epoch ends
still to come times what each took so far. An epoch's end not yet measured is taken to cost what an
estimate did; without `eval_freq`, it is read from the first two estimates.
"""

from dataclasses import dataclass

STEP_SMOOTHING = 0.1  # weight of the newest plain step in the step time: steady against one slow step, quick to follow a real change


@dataclass
class TimeLeft:
    """Fed the training events' timings in order; `step_done` answers the seconds left, or None while not measured."""

    eval_freq: int | None = None
    total_steps: int = 0
    steps_per_epoch: int = 0
    _last_elapsed: float = 0.0  # training starts at 0: the first step is a plain one
    _step_s: float | None = None
    _estimate_pauses: tuple[float, ...] = ()
    _epoch_pauses: tuple[float, ...] = ()
    _estimate_steps: tuple[int, ...] = ()  # the steps after which an estimate came
    _epochs_ended: int = 0
    _estimated: bool = False  # since the last step
    _epoch_ended: bool = False

    def started(self, total_steps: int, steps_per_epoch: int) -> None:
        self.total_steps, self.steps_per_epoch = total_steps, steps_per_epoch

    def estimated(self, step: int) -> None:
        """A loss estimate came after `step` (1-based steps taken)."""
        self._estimated = True
        self._estimate_steps += (step,)

    def epoch_ended(self) -> None:
        self._epoch_ended = True
        self._epochs_ended += 1

    def step_done(self, step: int, elapsed_s: float) -> float | None:
        """Step `step` ended `elapsed_s` into training: the seconds left, once a step and an estimate are measured."""
        interval = elapsed_s - self._last_elapsed
        self._last_elapsed = elapsed_s
        if self._step_s is None or not (self._estimated or self._epoch_ended):
            self._step_s = interval if self._step_s is None else (1 - STEP_SMOOTHING) * self._step_s + STEP_SMOOTHING * interval
        else:
            pause = max(interval - self._step_s, 0.0)
            if self._epoch_ended:  # the epoch's accuracy, and the estimate before it if one came
                self._epoch_pauses += (max(pause - (self._estimate_s() or 0.0), 0.0) if self._estimated else pause,)
            else:
                self._estimate_pauses += (pause,)
        self._estimated = self._epoch_ended = False
        return self._left(step)

    def _estimate_s(self) -> float | None:
        return sum(self._estimate_pauses) / len(self._estimate_pauses) if self._estimate_pauses else None

    def _left(self, step: int) -> float | None:
        if self._step_s is None or self.total_steps <= 0:
            return None
        estimates, estimate_s = self._estimates_to_come(step), self._estimate_s()
        if estimates and estimate_s is None:
            return None  # an estimate is still to come and none is measured yet: no figure rather than a low one
        estimate_s = estimate_s or 0.0
        epoch_s = sum(self._epoch_pauses) / len(self._epoch_pauses) if self._epoch_pauses else estimate_s
        epochs = -(-self.total_steps // self.steps_per_epoch) if self.steps_per_epoch > 0 else 0
        return (self.total_steps - step) * self._step_s + estimates * estimate_s + max(epochs - self._epochs_ended, 0) * epoch_s

    def _estimates_to_come(self, step: int) -> int:
        """Estimates after steps step..total (the one after `step` has not come yet): after steps 1, 1 + eval_freq, ..."""
        every = self.eval_freq or (self._estimate_steps[1] - self._estimate_steps[0] if len(self._estimate_steps) >= 2 else None)
        if every is None:
            return 0
        first = step + (1 - step) % every  # the first step >= `step` after which an estimate comes
        return len(range(first, self.total_steps + 1, every))
