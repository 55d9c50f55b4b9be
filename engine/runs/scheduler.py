"""Runs from the queue on the workers: as many at once as there are worker slots, in queue order.

The app (and `python -m engine sweep`) owns one Scheduler, and through it its runs folder (a lock
held until `close`: a second owner is refused). Anyone adds runs; a dispatcher thread starts the
first queued run whenever a slot is free; each run's events stream back into a `RunRecorder`,
which any number of viewers read; a failed run never stops the queue. Whatever goes wrong while
starting or ending a run (a worker that cannot start, a queue that cannot be saved, a fault of
ours) becomes that run's failure with its reason, logged once, and its slot is always given back.
The workers are `LocalWorkers` (processes on this machine) or `RayWorkers` (tasks on a Ray
cluster): both launch a run on a slot, stop it on request, and report its events and its end.
"""

import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from engine.config import RunConfig
from engine.failure import Failure
from engine.runs.jobs import WorkerEnded
from engine.runs.lock import RunsFolderLock
from engine.runs.queue import QueuedRun, QueueError, RunQueue
from engine.runs.queue_file import Rebase
from engine.runs.recorder import RunProgress, RunRecorder

log = logging.getLogger(__name__)

KEPT_PROGRESS = 64  # ended runs whose live views stay in memory (their records stay on disk)


class Slot(Protocol):
    name: str


class Launched(Protocol):
    def stop(self) -> None: ...


class Workers(Protocol):
    slots: tuple[Slot, ...]

    def describe(self) -> str: ...

    def launch(
        self, config: RunConfig, slot: Slot, on_event: Callable[[object], None], on_end: Callable[[WorkerEnded], None], resume: bool = False
    ) -> Launched: ...


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
    from engine.device import check_device
    from engine.runs.local_workers import LocalWorkers, local_slots

    check_device(device)  # an unavailable device is refused now, not in every worker (asked of a probe: CUDA stays out of this process)
    return LocalWorkers(local_slots(count, device))


class Scheduler:
    def __init__(self, root: Path, workers: Workers, persist: bool = True, rebase: Rebase | None = None, purpose: str = "a LoRA Lab app") -> None:
        """Own `root` (see RunsFolderLock; `purpose` names this owner to a second one) and start dispatching its queue.

        Raises:
            FolderInUse: another live process owns `root`.
        """
        self.root = Path(root)
        self.workers = workers
        self._folder_lock = RunsFolderLock.take(self.root, purpose)
        try:
            self.queue = RunQueue(self.root, persist=persist, rebase=rebase)
        except BaseException:
            self._folder_lock.release()
            raise
        self._changed = threading.Condition()
        self._free = list(workers.slots)
        self._launched: dict[str, Launched | None] = {}  # running runs; None while their worker starts
        self._stop_asked: set[str] = set()
        self._recorders: collections.OrderedDict[str, RunRecorder] = collections.OrderedDict()
        self._closed = False
        self._dispatcher = threading.Thread(target=self._dispatch, name="lora-lab-scheduler", daemon=True)
        self._dispatcher.start()

    # --- what anyone may ask ------------------------------------------------------------------

    def submit(
        self,
        configs: Sequence[RunConfig],
        grid_labels: Sequence[str] | None = None,
        visitor: str = "",
        max_waiting_per_visitor: int | None = None,
    ) -> list[QueuedRun]:
        """Queue runs for `visitor` (one grid when `grid_labels` names each); they start as slots come free (see RunQueue.add)."""
        added = self.queue.add(configs, grid_labels, visitor, max_waiting_per_visitor)
        with self._changed:
            self._changed.notify_all()
        return added

    def resume(self, run_id: str, config: RunConfig, visitor: str = "", max_waiting_per_visitor: int | None = None) -> QueuedRun:
        """Queue the ended run `run_id` again, to go on from its checkpoint with `config` (engine/runs/resume.py made it).

        Raises:
            QueueError: the run is waiting or running, or the queue cannot be saved.
        """
        run = self.queue.requeue(run_id, config, visitor, max_waiting_per_visitor)
        with self._changed:
            self._changed.notify_all()
        return run

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

    def move(self, run_id: str, places: int, among_own: bool = False) -> None:
        self.queue.move(run_id, places, among_own)

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
        self._folder_lock.release()

    # --- the dispatcher and the workers' reports ---------------------------------------------

    def _dispatch(self) -> None:
        while True:
            with self._changed:
                while not self._closed and not (self._free and self._has_waiting()):
                    self._changed.wait()
                if self._closed:
                    return
                slot = self._free.pop(0)
            self._start_next(slot)

    def _start_next(self, slot: Slot) -> None:
        """Start the first waiting run on `slot`; whatever fails fails that run only, and the slot comes back."""
        run = None
        try:
            with self._changed:
                run = self.queue.claim_next(slot.name)
                if run is None:
                    self._give_back(slot)
                    return
                self._launched[run.id] = None
                self._recorders[run.id] = RunRecorder(run.config.train.eval_freq)
                self._trim_recorders()
            launched = self.workers.launch(run.config, slot, self._on_event(run.id), self._on_end(run.id, slot), resume=run.resume)
        except Exception as error:
            if run is None:  # not claimed: claim_next failed that run already (a failed save), or a fault of ours fails it here
                if isinstance(error, QueueError):
                    log.error("%s", error)
                else:
                    log.exception("the next run could not be started")
                    waiting = next((run for run in self.queue.runs() if run.state == "queued"), None)
                    if waiting is not None:  # else it would be tried again at once, and again
                        self.queue.fail(waiting.id, f"it could not be started: {type(error).__name__}: {error}")
                with self._changed:
                    self._give_back(slot)
            else:  # the worker could not even start: that run fails, the queue goes on
                self._on_end(run.id, slot)(WorkerEnded("failed", failure_of_launch(error)))
            return
        with self._changed:
            if run.id in self._launched:
                self._launched[run.id] = launched
            stop_now = run.id in self._stop_asked
        if stop_now:
            launched.stop()

    def _give_back(self, slot: Slot) -> None:
        """Return `slot` (call holding `_changed`)."""
        self._free.append(slot)
        self._changed.notify_all()

    def _has_waiting(self) -> bool:
        return any(run.state == "queued" for run in self.queue.runs())

    def _on_event(self, run_id: str) -> Callable[[object], None]:
        said = False

        def record(event: object) -> None:
            nonlocal said
            with self._changed:
                recorder = self._recorders.get(run_id)
                try:
                    if recorder is not None:
                        recorder.record(event)  # type: ignore[arg-type]
                except Exception:  # a fault of ours in one view: the run goes on, the fault is logged once
                    if not said:
                        said = True
                        log.exception("run %s: an event could not be shown (%s)", run_id, type(event).__name__)

        return record

    def _on_end(self, run_id: str, slot: Slot) -> Callable[[WorkerEnded], None]:
        ended_once = threading.Event()

        def end(ended: WorkerEnded) -> None:
            if ended_once.is_set():  # a second report (a worker that still spoke after failing to start) changes nothing
                return
            ended_once.set()
            with self._changed:
                try:
                    self.queue.finish(run_id, ended.state, ended.failure.message if ended.failure else None)
                    if ended.state == "failed" and ended.failure and ended.failure.kind == "internal":
                        log.error("run %s failed: %s", run_id, ended.failure.message)
                except QueueError as error:  # the queue marked it failed in memory, saying why
                    log.error("%s", error)
                except Exception as error:  # a fault of ours: the run fails, saying so
                    log.exception("run %s: its end could not be recorded", run_id)
                    self.queue.fail(run_id, f"its end could not be recorded: {type(error).__name__}: {error}")
                finally:
                    self._launched.pop(run_id, None)
                    self._stop_asked.discard(run_id)
                    self._give_back(slot)

        return end

    def _trim_recorders(self) -> None:
        while len(self._recorders) > KEPT_PROGRESS:
            oldest = next(iter(self._recorders))
            if oldest in self._launched:
                break
            self._recorders.pop(oldest)


def failure_of_launch(error: Exception) -> Failure:
    return Failure("internal", f"the worker could not start: {type(error).__name__}: {error}")
