"""`python -m engine bench --sweep`: a small grid's wall time on one worker and on N, and what a worker costs to start.

The grid is four ranks of the recommended preset, a few steps each, on random weights of the chosen
size (written once to a temporary model folder, as a `--model FOLDER` would be) and the real SMS
splits. Start-up is measured per run from the moment its worker process is launched to its first
training step: process start, imports, data and model loading, the baseline accuracies.
"""

import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.config import GPTConfig, RunConfig
from engine.runs.grid import Grid

SWEEP_RANKS = (4, 8, 16, 32)


@dataclass(frozen=True)
class SweepTiming:
    workers: int
    wall_s: float  # submit to the last run's end
    startup_s: tuple[float, ...]  # per run: worker launched -> first training step
    states: tuple[str, ...]


@dataclass(frozen=True)
class SweepResult:
    model: str
    device: str
    runs: int
    steps: int  # training steps per run
    timings: tuple[SweepTiming, ...]  # one worker, then N

    @property
    def speedup(self) -> float:
        return self.timings[0].wall_s / self.timings[-1].wall_s

    def lines(self) -> list[str]:
        lines = [f"sweep: {self.runs} runs (ranks {', '.join(map(str, SWEEP_RANKS))}) x {self.steps} steps, {self.model} random weights on {self.device}"]
        for timing in self.timings:
            startup = statistics.median(timing.startup_s) if timing.startup_s else float("nan")
            workers = f"{timing.workers} worker{'s' if timing.workers > 1 else ' '}"
            lines.append(f"  {workers}: {timing.wall_s:7.1f} s wall; start-up (launch to first step) median {startup:.1f} s")
        lines.append(f"  {self.timings[-1].workers} workers vs 1: {self.speedup:.2f}x faster")
        return lines

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {**asdict(self), "speedup": round(self.speedup, 3)}


class _TimedWorkers:
    """The real workers, also noting when each run's worker was launched and when its first step came back."""

    def __init__(self, workers: Any) -> None:
        self.workers, self.slots = workers, workers.slots
        self.startup: dict[str, float] = {}
        self._lock = threading.Lock()

    def describe(self) -> str:
        return self.workers.describe()

    def launch(self, config: RunConfig, slot: Any, on_event: Any, on_end: Any, resume: bool = False) -> Any:
        from engine.train import StepDone

        launched = time.perf_counter()

        def timed(event: object) -> None:
            if isinstance(event, StepDone) and event.step == 1:
                with self._lock:
                    self.startup[config.out_dir] = time.perf_counter() - launched
            on_event(event)

        return self.workers.launch(config, slot, timed, on_end, resume)


def time_sweep(cfg: GPTConfig, device: str, workers: int, steps: int, data: Any, say: Any) -> SweepResult:
    """Time the grid on 1 worker, then on `workers`; `data` is a prepared data folder."""
    from engine.model import GPT
    from engine.runs.scheduler import Scheduler, workers_for
    from engine.weights import save_hf_checkpoint

    with tempfile.TemporaryDirectory(prefix="lora-lab-bench-sweep-") as scratch:
        folder = save_hf_checkpoint(GPT(cfg), Path(scratch) / "model")
        base = RunConfig.from_preset("recommended", model=str(folder), data=str(data), device=device)
        base = base.with_train(epochs=1, max_steps=steps, eval_freq=10**6, live_metrics=False)
        runs = Grid(rank=SWEEP_RANKS).expand(base)
        timings = []
        for count in dict.fromkeys((1, workers)):
            say(f"sweep on {count} worker{'s' if count > 1 else ''} ...")
            timed = _TimedWorkers(workers_for(count, device))
            scheduler = Scheduler(Path(scratch) / f"runs-{count}", timed, persist=False)
            began = time.perf_counter()
            queued = scheduler.submit([c for _, c in runs], [label for label, _ in runs])
            scheduler.wait()
            wall = time.perf_counter() - began
            scheduler.close()
            states = tuple(scheduler.queue.get(run.id).state for run in queued)
            timings.append(SweepTiming(count, round(wall, 2), tuple(round(s, 2) for s in timed.startup.values()), states))
    return SweepResult(cfg.name, device, len(runs), steps, tuple(timings))


def run_sweep_benchmark(model: str, device: str, workers: int, steps: int, data: str | None, progress: Any = None) -> SweepResult:
    """`bench --sweep`: the grid on random weights of `model`'s size, on 1 worker and on `workers`."""
    from engine.bench.epochs import prepared_for_bench
    from engine.errors import ConfigError
    from engine.weights import resolve

    if not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"--steps must be a whole number of at least 1, got {steps!r}")
    if not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"--workers must be a whole number of at least 1, got {workers!r}")
    say = progress or (lambda message: None)
    with tempfile.TemporaryDirectory(prefix="lora-lab-bench-data-") as scratch:
        folder = prepared_for_bench(data, Path(scratch))
        return time_sweep(resolve(model).config, device, workers, steps, folder, say)
