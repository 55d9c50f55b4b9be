"""What runs on a Ray node: one run as a streaming generator task, and the actor that carries Stop to it.

The task trains in a thread of its own and yields what the run says as it says it (Ray's streaming
generator: the driver gets each batch as soon as it is yielded, in order, without asking): the
run's events, a `Checkpoint` each time the run saves its adapter and record (so a task killed later
leaves its last checkpoint on the driver), and last a `TaskEnd` with the run's folder. Stop reaches
the task through `StopSignals`, an async actor the task waits on (no polling): the run then stops
after its current step and saves, like any stopped run.

Nothing here imports Ray at module level: the driver imports this module to build the task.
"""

import asyncio
import contextlib
import queue
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.atomic import write_bytes_atomic
from engine.runs.events import RunSaved
from engine.runs.jobs import WorkerEnded, WorkerJob
from engine.runs.ray_shipment import Shipment, Weights, unpack
from engine.runs.record import ADAPTER_DIR, ADAPTER_FILES, RECORD_FILE

MAX_BATCH = 256  # events sent in one object when the run says them faster than the driver takes them
SIGNAL_WAIT_S = 10.0  # how long a finished task waits for the stop watcher to let go (the actor may be gone)


@dataclass(frozen=True)
class Checkpoint:
    """The adapter, training state and run record as the run saved them at a checkpoint, by path relative to its folder."""

    files: dict[str, bytes]


@dataclass(frozen=True)
class TaskEnd:
    """A task's last word: how the run ended, its folder's files, and the node it ran on."""

    ended: WorkerEnded
    files: dict[str, bytes]
    node: str


class StopSignals:
    """One async actor for all of a driver's runs: Stop going out, awaited by each task."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}
        self._stopped: set[str] = set()

    async def wait(self, run_id: str) -> bool:
        """Return once the run is asked to stop (True) or has ended (False)."""
        await self._events.setdefault(run_id, asyncio.Event()).wait()
        return run_id in self._stopped

    async def stop(self, run_id: str) -> None:
        self._stopped.add(run_id)
        self._events.setdefault(run_id, asyncio.Event()).set()

    async def end(self, run_id: str) -> None:
        """The run is over: release its waiter and forget it."""
        self._events.pop(run_id, asyncio.Event()).set()
        self._stopped.discard(run_id)


def train_remotely(
    run_id: str, job: WorkerJob, weights: Weights | None, data: Shipment, signals: Any, folder: dict[str, bytes] | None = None
) -> Iterator[list[object]]:
    """The task: run the job in a scratch folder (holding `folder`'s files first, for a run that goes on
    from its checkpoint), yielding batches of what it says, `TaskEnd` last."""
    import ray

    from engine.runs.worker import run_job

    said: queue.SimpleQueue[object] = queue.SimpleQueue()
    stop = threading.Event()
    asked = signals.wait.remote(run_id)  # sent before anything else: `end` below always finds it waiting
    watcher = threading.Thread(target=watch_for_stop, args=(ray, asked, stop), name="stop-watch", daemon=True)
    watcher.start()
    try:
        with tempfile.TemporaryDirectory(prefix="lora-lab-task-") as scratch:
            job = unpack(job, weights, data, Path(scratch), ray)
            use_assigned_cpus(ray)
            out = Path(job.config.out_dir)
            for name, content in (folder or {}).items():
                write_bytes_atomic(out / name, content)
            ship_checkpoint = checkpoint_shipper(out, said.put)

            def send(event: object) -> None:  # on the training thread, between steps: the files are whole
                ship_checkpoint(event)
                said.put(event)

            trainer = threading.Thread(target=lambda: said.put(run_job(job, stop, send)), name="run", daemon=True)
            trainer.start()
            yield from batches(said)
            ended = said.get()
            trainer.join()
            files = run_folder_files(out)
    finally:
        with contextlib.suppress(Exception):  # the actor gone: the watcher ends on its own error
            ray.get(signals.end.remote(run_id), timeout=SIGNAL_WAIT_S)
        watcher.join(SIGNAL_WAIT_S)
    yield [TaskEnd(ended, files, socket.gethostname())]  # type: ignore[arg-type]


def run_folder_files(out: Path) -> dict[str, bytes]:
    """Every file of a run's folder, by path relative to it (none when there is no folder): what a task sends
    back at its end, and what a task resuming the run starts from."""
    return {str(path.relative_to(out)): path.read_bytes() for path in sorted(out.rglob("*")) if path.is_file()} if out.is_dir() else {}


def batches(said: "queue.SimpleQueue[object]") -> Iterator[list[object]]:
    """What the run says, in order, as lists of whatever has come since the last one; stops before the
    run's `WorkerEnded`, which it leaves in the queue."""
    while True:
        batch = [said.get()]
        while not isinstance(batch[-1], WorkerEnded) and len(batch) < MAX_BATCH and not said.empty():
            batch.append(said.get_nowait())
        ended = batch.pop() if isinstance(batch[-1], WorkerEnded) else None
        if batch:
            yield batch
        if ended is not None:
            said.put(ended)
            return


def watch_for_stop(ray: Any, asked: Any, stop: threading.Event) -> None:
    with contextlib.suppress(Exception):  # the actor died: Stop cannot come this way, the driver's hard stop still can
        if ray.get(asked):
            stop.set()


def checkpoint_shipper(out: Path, ship: Callable[[object], None]) -> Callable[[object], None]:
    """A hook, called with each event, that ships the adapter, the training state and the record whenever
    the run has saved them anew (a checkpoint: its record rewritten beside an adapter) since the last time."""
    from engine.checkpoint import CHECKPOINT_FILE  # on the node: the driver need not import PyTorch for this module

    shipped: list[tuple[int, int] | None] = [None]

    def after(event: object) -> None:
        if isinstance(event, RunSaved):  # the run's end: its files come with TaskEnd
            return
        try:
            stat = (out / RECORD_FILE).stat()
        except OSError:
            return
        stamp = (stat.st_ino, stat.st_mtime_ns)  # written by rename: a new file each time
        adapter = [out / ADAPTER_DIR / name for name in ADAPTER_FILES]
        if stamp == shipped[0] or not all(path.is_file() for path in adapter):
            return
        shipped[0] = stamp
        state = [out / CHECKPOINT_FILE] if (out / CHECKPOINT_FILE).is_file() else []  # written before the record
        files = {str(path.relative_to(out)): path.read_bytes() for path in [*adapter, *state]}
        ship(Checkpoint({**files, RECORD_FILE: (out / RECORD_FILE).read_bytes()}))

    return after


def use_assigned_cpus(ray: Any) -> None:
    """Keep PyTorch to the CPUs Ray gave this task (Ray sets OMP_NUM_THREADS; PyTorch may have started before)."""
    cpus = int(ray.get_runtime_context().get_assigned_resources().get("CPU", 0))
    if cpus >= 1:
        import torch

        torch.set_num_threads(cpus)
