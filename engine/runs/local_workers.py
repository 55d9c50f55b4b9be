"""Worker processes on this machine: one slot per device (or per share of the CPU cores), one process per run.

Each run starts a fresh `python -m engine.runs.worker` on a free slot: a crash or an out-of-memory
error ends that process and that run only. A slot is pinned to its device: a GPU slot sees only
its own GPU (CUDA_VISIBLE_DEVICES), a CPU slot keeps to its share of the cores, so runs side by
side do not fight over them. A thread per run reads the worker's events and hands them on.

This module runs in the process that hands runs out (the app, `sweep`): it learns the machine's
GPUs from engine.device's probe, so that process never imports PyTorch or initialises CUDA here.
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

import engine
from engine.config import RunConfig
from engine.device import DeviceFacts, device_kind, probed_facts
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


def _facts_for(device: str, facts: DeviceFacts | None) -> DeviceFacts:
    """`facts` when given; none needed for runs on the CPU; else the machine's, probed once."""
    return facts or (DeviceFacts() if device == "cpu" else probed_facts())


def default_worker_count(device: str = "auto", facts: DeviceFacts | None = None) -> int:
    """One per CUDA GPU where runs go to CUDA, else one."""
    facts = _facts_for(device, facts)
    return max(1, facts.cuda_count) if device in ("auto", "cuda") and facts.cuda_count else 1


def local_slots(count: int | None = None, device: str = "auto", facts: DeviceFacts | None = None) -> list[Slot]:
    """`count` slots (default: `default_worker_count`) for runs on `device` (facts: the machine's, probed once).

    Raises:
        ConfigError: a count below 1 or above MAX_WORKERS.
    """
    facts = _facts_for(device, facts)
    count = default_worker_count(device, facts) if count is None else count
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_WORKERS:
        raise ConfigError(f"--workers must be a whole number from 1 to {MAX_WORKERS}, got {count!r}")
    kind = device_kind(device, facts)
    if kind == "cuda":  # every GPU, taking turns
        gpus = facts.cuda_count
        return [Slot(f"cuda:{i % gpus}", "cuda", None, {"CUDA_VISIBLE_DEVICES": str(i % gpus)}) for i in range(count)]
    if kind.startswith("cuda:"):  # one named GPU: every slot on it
        index = kind.split(":", 1)[1]
        return [Slot(kind, "cuda", None, {"CUDA_VISIBLE_DEVICES": index}) for _ in range(count)]
    if kind == "mps":
        return [Slot("mps", "mps") for _ in range(count)]
    return [Slot(_cores_name(cores), "cpu", cores) for cores in share_cores(count)]


def check_worker_count(count: int | None, device: str = "auto", force: bool = False, facts: DeviceFacts | None = None) -> None:
    """Refuse more workers than the machine has GPUs (for runs on a GPU) or CPU cores (for runs on the
    CPU), unless `force`: each worker holds a whole model and its training state, so the extra ones
    only take turns on the same hardware while their memory adds up.

    Raises:
        ConfigError: one line saying how many the machine has and what to do.
    """
    if count is None or force:
        return
    facts = _facts_for(device, facts)
    kind = device_kind(device, facts)
    if kind == "cpu":
        have, what = len(_usable_cores()), "CPU cores"
    elif kind == "cuda":
        have, what = facts.cuda_count, "GPUs"
    else:  # one named GPU, or Apple's MPS
        have, what = 1, f"GPU ({kind})"
    if count > have:
        raise ConfigError(
            f"--workers {count} is more than the {have} {what} runs train on here: each worker holds a whole model, so more would only "
            f"take turns on the same hardware while their memory adds up; use --workers {have} or fewer, or add --force to start them anyway"
        )


def app_device(requested: str, device: str = "auto", count: int | None = None, ray: str | None = None, facts: DeviceFacts | None = None) -> str:
    """Where the app's own process runs the model (Classify, the weights check): `requested` when named;
    for "auto", a GPU no local worker trains on, else the CPU, so a run's GPU memory is its own. With
    Ray the cluster may train on this machine's GPUs, so "auto" keeps to the CPU.

    Raises:
        ConfigError: a named device this machine lacks.
    """
    facts = facts or probed_facts()
    if requested != "auto":
        return device_kind(requested, facts)
    if ray or not facts.gpus:
        return "cpu"
    slots = local_slots(count, device, facts)
    if facts.cuda_count:
        taken = {int(slot.env["CUDA_VISIBLE_DEVICES"]) for slot in slots if "CUDA_VISIBLE_DEVICES" in slot.env}
        free = [i for i in range(facts.cuda_count) if i not in taken]
        return f"cuda:{free[0]}" if free else "cpu"
    return "cpu" if any(slot.device == "mps" for slot in slots) else "mps"


def _usable_cores() -> list[int]:
    """The CPU cores this process may run on."""
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def share_cores(count: int) -> list[tuple[int, ...]]:
    """This process's CPU cores cut into `count` contiguous shares (a core each at least, shared when too few)."""
    cores = _usable_cores()
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

    def launch(
        self, config: RunConfig, slot: Slot, on_event: Callable[[object], None], on_end: Callable[[WorkerEnded], None], resume: bool = False
    ) -> WorkerProcess:
        """Start `config` (with `resume`, from its checkpoint) on `slot` in a new worker process; its events and end go to the callbacks (on another thread)."""
        env = {**os.environ, **slot.env, "PYTHONPATH": os.pathsep.join(filter(None, [PACKAGE_ROOT, os.environ.get("PYTHONPATH")]))}
        if slot.cores:  # OpenMP reads these before PyTorch starts its threads
            env.update(OMP_NUM_THREADS=str(len(slot.cores)), MKL_NUM_THREADS=str(len(slot.cores)))
        process = subprocess.Popen([sys.executable, "-m", "engine.runs.worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        write_frame(process.stdin, WorkerJob(replace(config, device=slot.device), slot.cores, resume=resume))
        return WorkerProcess(process, on_event, on_end)
