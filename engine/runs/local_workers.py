"""Worker processes on this machine: one slot per device (or per share of the CPU cores), one process per run.

Each run starts a fresh `python -m engine.runs.worker` on a free slot: a crash or an out-of-memory
error ends that process and that run only. A slot is pinned to its device: a GPU slot sees only
its own GPU (CUDA_VISIBLE_DEVICES), a CPU slot keeps to its share of the cores, so runs side by
side do not fight over them. A thread per run reads the worker's events and hands them on.
"""

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

import engine
from engine.config import RunConfig
from engine.errors import ConfigError
from engine.failure import Failure
from engine.runs.jobs import WorkerEnded, WorkerJob, read_frame, write_frame

MAX_WORKERS = 64
PACKAGE_ROOT = str(Path(engine.__file__).resolve().parent.parent)  # where a worker imports `engine` from


@dataclass(frozen=True)
class Slot:
    """Where one run at a time trains."""

    name: str  # shown beside the run: "cpu 0-1", "cuda:0"
    device: str  # the run's device inside the worker: "cpu", "cuda", "mps"
    cores: tuple[int, ...] | None = None
    env: Mapping[str, str] = field(default_factory=dict)


def default_worker_count(device: str = "auto") -> int:
    """One per CUDA GPU where runs go to CUDA, else one."""
    uses_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    return max(1, torch.cuda.device_count()) if uses_cuda and device in ("auto", "cuda") else 1


def local_slots(count: int | None = None, device: str = "auto") -> list[Slot]:
    """`count` slots (default: `default_worker_count`) for runs on `device`.

    Raises:
        ConfigError: a count below 1 or above MAX_WORKERS.
    """
    count = default_worker_count(device) if count is None else count
    if not isinstance(count, int) or not 1 <= count <= MAX_WORKERS:
        raise ConfigError(f"--workers must be a whole number from 1 to {MAX_WORKERS}, got {count!r}")
    if device in ("auto", "cuda") and torch.cuda.is_available():
        gpus = torch.cuda.device_count()
        return [Slot(f"cuda:{i % gpus}", "cuda", None, {"CUDA_VISIBLE_DEVICES": str(i % gpus)}) for i in range(count)]
    if device.startswith("cuda:"):  # one named GPU: every slot on it
        index = device.split(":", 1)[1]
        return [Slot(device, "cuda", None, {"CUDA_VISIBLE_DEVICES": index}) for _ in range(count)]
    if device == "mps" or (device == "auto" and torch.backends.mps.is_available()):
        return [Slot("mps", "mps") for _ in range(count)]
    return [Slot(_cores_name(cores), "cpu", cores) for cores in share_cores(count)]


def share_cores(count: int) -> list[tuple[int, ...]]:
    """This process's CPU cores cut into `count` contiguous shares (a core each at least, shared when too few)."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    if count >= len(cores):
        return [(cores[i % len(cores)],) for i in range(count)]
    return [tuple(cores[i * len(cores) // count : (i + 1) * len(cores) // count]) for i in range(count)]


def _cores_name(cores: tuple[int, ...]) -> str:
    return f"cpu {cores[0]}" if len(cores) == 1 else f"cpu {cores[0]}-{cores[-1]}"


class WorkerProcess:
    """A started worker: its run can be stopped; its events and its end reach the callbacks."""

    def __init__(self, process: subprocess.Popen, on_event: Callable[[object], None], on_end: Callable[[WorkerEnded], None]) -> None:
        self.process = process
        self._stdin_lock = threading.Lock()
        self._pump = threading.Thread(target=self._read, args=(on_event, on_end), name=f"worker-{process.pid}", daemon=True)
        self._pump.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        """Ask the run to stop after its current step (it saves like any stopped run)."""
        with self._stdin_lock, contextlib.suppress(OSError, ValueError):  # the worker has gone already
            self.process.stdin.write(b"s")
            self.process.stdin.flush()

    def wait(self, timeout: float | None = None) -> bool:
        self._pump.join(timeout)
        return not self._pump.is_alive()

    def _read(self, on_event: Callable[[object], None], on_end: Callable[[WorkerEnded], None]) -> None:
        ended: WorkerEnded | None = None
        try:
            while (value := read_frame(self.process.stdout)) is not None:
                if isinstance(value, WorkerEnded):
                    ended = value
                else:
                    on_event(value)
        except Exception as error:  # a frame that does not unpickle: report it as the run's end
            ended = ended or WorkerEnded("failed", Failure("internal", f"could not read the worker's report ({type(error).__name__}: {error})"))
        code = self.process.wait()
        with contextlib.suppress(OSError):
            self.process.stdin.close()
        on_end(ended or WorkerEnded("failed", Failure("crashed", exit_description(code))))


def exit_description(code: int) -> str:
    """Why a worker ended without reporting, in words."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        cause = " (the system may have run out of memory)" if name == "SIGKILL" else ""
        return f"the worker process was killed by {name}{cause}; its last saved adapter, if any, is kept"
    return f"the worker process ended unexpectedly with exit status {code} (the log has its output); its last saved adapter, if any, is kept"


class LocalWorkers:
    """Runs on this machine, each in a worker process on one of `slots`."""

    def __init__(self, slots: list[Slot]) -> None:
        self.slots = tuple(slots)

    def describe(self) -> str:
        return f"{len(self.slots)} local worker{'s' if len(self.slots) != 1 else ''} ({', '.join(s.name for s in self.slots)})"

    def launch(self, config: RunConfig, slot: Slot, on_event: Callable[[object], None], on_end: Callable[[WorkerEnded], None]) -> WorkerProcess:
        """Start `config` on `slot` in a new worker process; its events and end go to the callbacks (on another thread)."""
        env = {**os.environ, **slot.env, "PYTHONPATH": os.pathsep.join(filter(None, [PACKAGE_ROOT, os.environ.get("PYTHONPATH")]))}
        if slot.cores:  # OpenMP reads these before PyTorch starts its threads
            env.update(OMP_NUM_THREADS=str(len(slot.cores)), MKL_NUM_THREADS=str(len(slot.cores)))
        process = subprocess.Popen([sys.executable, "-m", "engine.runs.worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        write_frame(process.stdin, WorkerJob(replace(config, device=slot.device), slot.cores))
        return WorkerProcess(process, on_event, on_end)
