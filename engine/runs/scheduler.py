"""Runs from the queue on the workers: as many at once as there are worker slots, in queue order.

The app (and `python -m engine sweep`) owns one Scheduler. Anyone adds runs; a dispatcher thread
starts the first queued run whenever a slot is free; each run's events stream back into a
`RunRecorder`, which any number of viewers read; a failed run never stops the queue. The workers
are `LocalWorkers` (processes on this machine) or `RayWorkers` (tasks on a Ray cluster): both
launch a run on a slot, stop it on request, and report its events and its end.
"""

import collections
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from engine.config import RunConfig
from engine.failure import Failure
from engine.runs.jobs import WorkerEnded
from engine.runs.queue import QueuedRun, QueueError, RunQueue
from engine.runs.recorder import RunProgress, RunRecorder

KEPT_PROGRESS = 64  # ended runs whose live views stay in memory (their records stay on disk)


class Slot(Protocol):
    name: str


class Launched(Protocol):
    def stop(self) -> None: ...


class Workers(Protocol):
    slots: tuple[Slot, ...]

    def describe(self) -> str: ...

    def launch(self, config: RunConfig, slot: Slot, on_event: Callable[[object], None], on_end: Callable[[WorkerEnded], None]) -> Launched: ...


@dataclass(frozen=True)
class RunView:
    """A run as a viewer sees it: its queue entry and, once it started in this app, its progress."""

    run: QueuedRun
    progress: RunProgress | None
    position: int | None  # 1-based place among the waiting runs; None once it started


def workers_for(count: int | None, device: str = "auto", ray_address: str | None = None) -> Workers:
    """Worker processes on this machine (`count` of them, default one per CUDA GPU, else one), or Ray tasks.

    Raises:
        ConfigError: a bad count or device, Ray missing or unreachable.
    """
    if ray_address:
        from engine.runs.ray_workers import RayWorkers

        return RayWorkers(ray_address, count)
    from engine.device import pick_device
    from engine.runs.local_workers import LocalWorkers, local_slots

    pick_device(device)  # an unavailable device is refused now, not in every worker
    return LocalWorkers(local_slots(count, device))


class Scheduler:
    def __init__(self, root: Path, workers: Workers, persist: bool = True) -> None:
        self.root = Path(root)
        self.workers = workers
        self.queue = RunQueue(self.root, persist=persist)
        self._changed = threading.Condition()
        self._free = list(workers.slots)
        self._launched: dict[str, Launched | None] = {}  # running runs; None while their worker starts
        self._stop_asked: set[str] = set()
        self._recorders: collections.OrderedDict[str, RunRecorder] = collections.OrderedDict()
        self._closed = False
        self._dispatcher = threading.Thread(target=self._dispatch, name="lora-lab-scheduler", daemon=True)
        self._dispatcher.start()

    # --- what anyone may ask ------------------------------------------------------------------

    def submit(self, configs: Sequence[RunConfig], grid_labels: Sequence[str] | None = None) -> list[QueuedRun]:
        """Queue runs (one grid when `grid_labels` names each); they start as slots come free."""
        added = self.queue.add(configs, grid_labels)
        with self._changed:
            self._changed.notify_all()
        return added

    def stop(self, run_id: str) -> QueuedRun:
        """Stop a running run after its current step, or cancel a queued one.

        Raises:
            QueueError: unknown, or already over.
        """
        with self._changed:
            run = self.queue.get(run_id)
            if run.state == "queued":
                return self.queue.cancel(run_id)
            if run.state != "running":
                raise QueueError(f"run {run_id} is {run.state} already: there is nothing to stop")
            self._stop_asked.add(run_id)
            launched = self._launched.get(run_id)
        if launched is not None:
            launched.stop()
        return run

    def cancel(self, run_id: str) -> QueuedRun:
        return self.queue.cancel(run_id)

    def move(self, run_id: str, places: int) -> None:
        self.queue.move(run_id, places)

    def views(self) -> list[RunView]:
        """Every run the queue knows, in queue order, with the progress of those that ran here."""
        runs = self.queue.runs()
        with self._changed:
            progress = {run_id: recorder.progress() for run_id, recorder in self._recorders.items()}
        waiting = [run.id for run in runs if run.state == "queued"]
        return [RunView(run, progress.get(run.id), waiting.index(run.id) + 1 if run.id in waiting else None) for run in runs]

    def view(self, run_id: str) -> RunView | None:
        return next((view for view in self.views() if view.run.id == run_id), None)

    def busy(self) -> bool:
        """Whether any run waits or runs."""
        return any(not run.ended for run in self.queue.runs())

    def wait(self, run_ids: Sequence[str] | None = None, timeout: float | None = None) -> bool:
        """Block until these runs (default: all) have ended; False if `timeout` passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while True:
                runs = {run.id: run for run in self.queue.runs()}
                if all(runs[i].ended for i in (run_ids or runs) if i in runs) and not (run_ids is None and self._launched):
                    return True
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._changed.wait(0.5 if left is None else min(left, 0.5))

    def close(self, timeout: float = 60.0) -> None:
        """Stop every running run (each saves as a stopped run) and start no more; queued runs stay queued."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
            running = list(self._launched)
        for run_id in running:
            self.stop(run_id)
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._launched and time.monotonic() < deadline:
                self._changed.wait(0.2)
        self._dispatcher.join(timeout=5)

    # --- the dispatcher and the workers' reports ---------------------------------------------

    def _dispatch(self) -> None:
        while True:
            with self._changed:
                while not self._closed and not (self._free and self._has_waiting()):
                    self._changed.wait()
                if self._closed:
                    return
                slot = self._free.pop(0)
                run = self.queue.claim_next(slot.name)
                if run is None:
                    self._free.insert(0, slot)
                    continue
                self._launched[run.id] = None
                self._recorders[run.id] = RunRecorder(run.config.train.eval_freq)
                self._trim_recorders()
            try:
                launched = self.workers.launch(run.config, slot, self._on_event(run.id), self._on_end(run.id, slot))
            except Exception as error:  # the worker could not even start: that run fails, the queue goes on
                self._on_end(run.id, slot)(WorkerEnded("failed", failure_of_launch(error)))
                continue
            with self._changed:
                if run.id in self._launched:
                    self._launched[run.id] = launched
                stop_now = run.id in self._stop_asked
            if stop_now:
                launched.stop()

    def _has_waiting(self) -> bool:
        return any(run.state == "queued" for run in self.queue.runs())

    def _on_event(self, run_id: str) -> Callable[[object], None]:
        def record(event: object) -> None:
            with self._changed:
                recorder = self._recorders.get(run_id)
                if recorder is not None:
                    recorder.record(event)  # type: ignore[arg-type]

        return record

    def _on_end(self, run_id: str, slot: Slot) -> Callable[[WorkerEnded], None]:
        def end(ended: WorkerEnded) -> None:
            with self._changed:
                self.queue.finish(run_id, ended.state, ended.failure.message if ended.failure else None)
                self._launched.pop(run_id, None)
                self._stop_asked.discard(run_id)
                self._free.append(slot)
                self._changed.notify_all()

        return end

    def _trim_recorders(self) -> None:
        while len(self._recorders) > KEPT_PROGRESS:
            oldest = next(iter(self._recorders))
            if oldest in self._launched:
                break
            self._recorders.pop(oldest)


def failure_of_launch(error: Exception) -> Failure:
    return Failure("internal", f"the worker could not start: {type(error).__name__}: {error}")
