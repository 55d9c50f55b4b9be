"""Runs as tasks on a Ray cluster (`--ray ADDRESS`): the same runs as LocalWorkers, beyond one machine.

Each run is one streaming generator task (engine/runs/ray_task.py) on a scratch folder of its node:
its events, checkpoints and end stream back in order as they happen, and land in this machine's
runs folder. A run is never retried by Ray (a task killed for memory fails once, saying so); Stop
is asked of the run first (it saves as a stopped run), and after STOP_GRACE_S a run that has not
ended is cancelled by force, keeping its last checkpoint. A task takes one GPU and that GPU's share
of its node's CPUs where the cluster has GPUs, else its share of the cluster's CPUs.

Ray is optional (requirements-ray.txt): nothing here imports it until RayWorkers is built. Driver
and cluster must run the same Ray and Python versions; the `engine` package (and the assets it reads) is
shipped to the workers with the job (`job_files`), its dependencies must be installed there.
"""

import contextlib
import json
import math
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import engine
from engine import strict_json
from engine.atomic import write_bytes_atomic, write_text_atomic
from engine.config import RunConfig
from engine.errors import ConfigError
from engine.failure import Failure, failure_of, one_line
from engine.runs.events import RunSaved
from engine.runs.jobs import WorkerEnded, WorkerJob
from engine.runs.ray_shipment import WeightsShelf, pack_data
from engine.runs.ray_task import Checkpoint, StopSignals, TaskEnd, run_folder_files, train_remotely
from engine.runs.record import ADAPTER_DIR, RECORD_FILE, adapter_kept, now

CONNECT_TIMEOUT_S = 25.0  # an address that does not answer as a Ray cluster is refused after this long
KNOCK_TIMEOUT_S = 5.0  # nothing listening at the address: refused at once
STOP_GRACE_S = 30.0  # after Stop, how long a run may take to save before it is cancelled by force
JOB_FOLDERS = ("engine", "assets")  # what the workers need of this code: the package and the files it reads beside it


@contextlib.contextmanager
def job_files() -> Iterator[dict[str, Any]]:
    """The job's runtime environment while Ray starts it: a copy of this `engine` package and of the
    assets it reads beside it (the tokenizer's files), shipped to every worker as its working directory.
    (Ray's `py_modules` would ship the package alone, and the tokenizer would not find its files.)"""
    root = Path(engine.__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory(prefix="lora-lab-job-") as stage:
        for name in JOB_FOLDERS:
            shutil.copytree(root / name, Path(stage) / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        yield {"working_dir": stage}


@dataclass(frozen=True)
class RaySlot:
    name: str
    num_cpus: float
    num_gpus: float


def ray_slots(nodes: Sequence[Mapping[str, float]], count: int | None) -> tuple[RaySlot, ...]:
    """`count` slots (default: one per GPU, else one per 2 CPUs) for a cluster of `nodes` (each alive node's resources).

    A GPU task also reserves its GPU's share of its node's CPUs (the fewest any GPU node offers), so
    that PyTorch's CPU threads of runs side by side do not fight over the same cores.

    Raises:
        ConfigError: a count below 1, or more runs at once than the cluster can hold.
    """
    gpus, cpus = sum(node.get("GPU", 0) for node in nodes), sum(node.get("CPU", 0) for node in nodes)
    if gpus:
        count = int(gpus) if count is None else count
        per_gpu = min(node.get("CPU", 0) / node["GPU"] for node in nodes if node.get("GPU"))
        num_cpus, num_gpus, room, unit = (math.floor(per_gpu) if per_gpu >= 1 else per_gpu), 1, int(gpus), "GPUs"
    else:
        count = max(1, int(cpus) // 2) if count is None else count
        biggest = max((node.get("CPU", 0) for node in nodes), default=0)
        num_cpus, num_gpus, room, unit = max(1, min(int(cpus) // max(count, 1), int(biggest))), 0, int(cpus), "CPUs"
    if not 1 <= count <= max(room, 1):
        raise ConfigError(f"--workers must be from 1 to {max(room, 1)} on this Ray cluster ({room} {unit}), got {count}")
    return tuple(RaySlot(f"ray:{i}", num_cpus, num_gpus) for i in range(count))


def connect(ray: Any, address: str | None) -> None:
    """Connect this process to the cluster at `address` (None: start a local one) with our code (`job_files`).

    Raises:
        ConfigError: nothing answers, or not within CONNECT_TIMEOUT_S; or Ray was started in this
            process already without a way for its workers to import `engine`.
    """
    if ray.is_initialized():  # a job's runtime environment is fixed when it starts: check that workers find `engine`
        refuse_without_engine(ray)
        return
    if address is None:  # a local instance of this process's own; never in a thread (its processes die with the thread)
        with job_files() as env:
            ray.init(runtime_env=env, logging_level="WARNING", include_dashboard=False)
        return
    outcome: dict[str, BaseException] = {}

    def attempt() -> None:
        try:
            knock(address)
            with job_files() as env:
                ray.init(address=address, runtime_env=env, logging_level="WARNING")
        except BaseException as error:  # handed to the caller
            outcome["error"] = error

    trying = threading.Thread(target=attempt, name="ray-connect", daemon=True)  # ray.init alone retries for minutes
    trying.start()
    trying.join(CONNECT_TIMEOUT_S)
    fix = "start it with `ray start --head` (then use --ray auto), or check the address"
    if trying.is_alive():
        raise ConfigError(f"no Ray cluster answered at {address!r} within {CONNECT_TIMEOUT_S:g} s: {fix}")
    if "error" in outcome:
        error = outcome["error"]
        problem = str(error) if isinstance(error, ConfigError) else f"could not connect to the Ray cluster at {address!r} ({one_line(str(error))[:300]})"
        raise ConfigError(f"{problem}: {fix}") from None


def knock(address: str) -> None:
    """Refuse at once an address where nothing listens (Ray would retry it for minutes)."""
    if address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=KNOCK_TIMEOUT_S).close()
    except ValueError:
        raise ConfigError(f"the Ray address {address!r} is not HOST:PORT (or auto)") from None
    except OSError as error:
        raise ConfigError(f"nothing answers at the Ray address {address!r} ({error.strerror or error})") from None


def refuse_without_engine(ray: Any) -> None:
    def engine_found() -> int:  # defined here: pickled by value, so a worker without `engine` can still run it
        from engine.tokenizer import gpt2_tokenizer

        return gpt2_tokenizer().n_vocab

    try:
        ray.get(ray.remote(engine_found).options(num_cpus=0, max_retries=0).remote(), timeout=CONNECT_TIMEOUT_S)
    except Exception as error:
        raise ConfigError(
            f"Ray was started in this process already, and its workers cannot use LoRA Lab's engine ({one_line(str(error))[-200:]}): "
            "call ray.shutdown() first (LoRA Lab then connects with its code), or start Ray with `with job_files() as env: ray.init(runtime_env=env)`"
        ) from None


class RayWorkers:
    """Runs as Ray tasks; `slots` bounds how many run at once."""

    def __init__(self, address: str | None, count: int | None = None, stop_grace_s: float = STOP_GRACE_S) -> None:
        try:
            import ray
        except ImportError:
            raise ConfigError("Ray is not installed: pip install -r requirements-ray.txt (the same Ray version as the cluster)") from None
        self._ray = ray
        connect(ray, address)
        self.slots = ray_slots([node["Resources"] for node in ray.nodes() if node["Alive"]], count)
        self.stop_grace_s = stop_grace_s
        self.weights = WeightsShelf(ray)
        self._signals = ray.remote(num_cpus=0)(StopSignals).remote()
        self._task = ray.remote(train_remotely)

    def describe(self) -> str:
        slot = self.slots[0]
        cpus = f"{slot.num_cpus:g} CPU{'s' if slot.num_cpus != 1 else ''}"
        each = f"1 GPU and {cpus}" if slot.num_gpus else cpus
        return f"{len(self.slots)} Ray worker{'s' if len(self.slots) != 1 else ''} ({each} each)"

    def launch(
        self, config: RunConfig, slot: RaySlot, on_event: Callable[[object], None], on_end: Callable[[WorkerEnded], None], resume: bool = False
    ) -> "RayRun":
        job = WorkerJob(replace(config, device="cuda" if slot.num_gpus else "cpu", model=absolute(config.model)), resume=resume)
        data = pack_data(config.data)
        # The task writes into its node's scratch folder: a run going on takes its folder there (checkpoint, record, adapter).
        folder = run_folder_files(Path(config.out_dir)) if resume else None
        run_id = f"{config.out_dir}@{time.time_ns()}"
        weights = self.weights.take(config.model)
        try:
            task = self._task.options(num_returns="streaming", max_retries=0, num_cpus=slot.num_cpus, num_gpus=slot.num_gpus)
            stream = task.remote(run_id, job, weights, data, self._signals, folder)
        except BaseException:
            self.weights.give_back(config.model)
            raise
        return RayRun(self, run_id, stream, config, on_event, on_end)


class RayRun:
    """A launched task: what it streams goes to `on_event` and this machine's run folder, its end to `on_end` (once)."""

    def __init__(self, workers: RayWorkers, run_id: str, stream: Any, config: RunConfig, on_event: Callable, on_end: Callable) -> None:
        self._workers, self._ray, self._run_id, self._stream, self._config = workers, workers._ray, run_id, stream, config
        self._lock = threading.Lock()
        self._over = False
        self._forced = False  # the hard stop came
        self._hard_stop: threading.Timer | None = None
        self._checkpoint_step: int | None = None
        self._pump = threading.Thread(target=self._follow, args=(on_event, on_end), name=f"ray-{run_id}", daemon=True)
        self._pump.start()

    def stop(self) -> None:
        """Ask the run to stop after its current step (it saves as a stopped run); cancel it by force if it has not ended after the grace period."""
        with self._lock:
            if self._over or self._hard_stop is not None:
                return
            self._hard_stop = threading.Timer(self._workers.stop_grace_s, self._force)
            self._hard_stop.daemon = True
            self._hard_stop.start()
        self._ask_to_stop()

    def wait(self, timeout: float | None = None) -> bool:
        self._pump.join(timeout)
        return not self._pump.is_alive()

    def _ask_to_stop(self) -> None:
        self._workers._signals.stop.remote(self._run_id)

    def _force(self) -> None:
        with self._lock:
            if self._over:
                return
            self._forced = True
        self._ray.cancel(self._stream, force=True)  # the task's process is killed: nothing more comes from it

    def _follow(self, on_event: Callable[[object], None], on_end: Callable[[WorkerEnded], None]) -> None:
        out = Path(self._config.out_dir)
        ended = None
        try:
            ended = self._take(out, on_event)
        except Exception as error:  # the task's process or node died, or it was cancelled: Ray says why
            with contextlib.suppress(Exception):  # failed here (a full disk): the task must not train on unseen
                self._ray.cancel(self._stream, force=True)
            ended = self._after(error, out, on_event)
        finally:
            with self._lock:
                self._over = True
                if self._hard_stop is not None:
                    self._hard_stop.cancel()
            self._workers.weights.give_back(self._config.model)
            with contextlib.suppress(Exception):
                self._workers._signals.end.remote(self._run_id)
            on_end(ended or WorkerEnded("failed", Failure("internal", "the Ray task ended without a word")))

    def _take(self, out: Path, on_event: Callable[[object], None]) -> WorkerEnded | None:
        """Hand on what the task streams until its last word; None if the stream ends without one."""
        saved: RunSaved | None = None
        for ref in self._stream:
            for item in self._ray.get(ref):
                if isinstance(item, Checkpoint):
                    self._checkpoint_step = keep_checkpoint(item, out, self._config)
                elif isinstance(item, RunSaved):
                    saved = item  # handed on once its files are here
                elif isinstance(item, TaskEnd):
                    write_run_files(item, out, self._config)
                    if saved is not None:
                        on_event(relocated(saved, out))
                    return item.ended
                else:
                    on_event(item)
        return None

    def _after(self, error: Exception, out: Path, on_event: Callable[[object], None]) -> WorkerEnded:
        """The run's end when its task did not finish: stopped by force, or failed with Ray's reason; its last checkpoint kept."""
        step = self._checkpoint_step
        kept = adapter_kept(step, out) if step is not None else "; no checkpoint had come back"
        if self._forced:
            reason = f"it had not stopped {self._workers.stop_grace_s:g} s after Stop, so its Ray task was cancelled{kept}"
            if step is not None:
                record = close_record(out, "stopped", None)
                on_event(RunSaved(out, out / ADAPTER_DIR, record, None, stopped=True))
            return WorkerEnded("stopped", Failure("crashed", reason))  # the failure carries why the stop came by force
        if isinstance(error, self._ray.exceptions.RayError):
            kind = "out of memory" if isinstance(error, self._ray.exceptions.OutOfMemoryError) else "crashed"
            failure = Failure(kind, f"the Ray task failed: {type(error).__name__}: {one_line(str(error))[:300]}{kept}")
        else:
            failure = failure_of(error, self._config.device, "keeping what the run's Ray task sent")
        if step is not None:
            close_record(out, "failed", failure.message)
        return WorkerEnded("failed", failure)


def absolute(model: str) -> str:
    """A model folder or file as an absolute path (a task's working directory is not the driver's); a size name as it is."""
    return str(Path(model).resolve()) if Path(model).exists() else model


def keep_checkpoint(checkpoint: Checkpoint, out: Path, config: RunConfig) -> int | None:
    """Write a checkpoint's files (adapter, training state), then its record, into the run's folder here; its step."""
    for name, data in checkpoint.files.items():
        if name != RECORD_FILE:
            write_bytes_atomic(out / name, data)
    record = checkpoint.files[RECORD_FILE]
    write_bytes_atomic(out / RECORD_FILE, with_driver_paths(record, config, None))
    return json.loads(record).get("checkpoint_step")


def write_run_files(end: TaskEnd, out: Path, config: RunConfig) -> None:
    """The run folder's files from the task, its record last (naming this machine's paths)."""
    for name, data in end.files.items():
        if name != RECORD_FILE:
            write_bytes_atomic(out / name, data)
    if RECORD_FILE in end.files:
        write_bytes_atomic(out / RECORD_FILE, with_driver_paths(end.files[RECORD_FILE], config, end.node))


def close_record(out: Path, state: str, error: str | None) -> Path:
    """Close the record a checkpoint left "running" here, for a task that ended without closing it
    (left as it is when even that fails: it then reads as interrupted, its adapter kept)."""
    path = out / RECORD_FILE
    with contextlib.suppress(OSError, ValueError, AttributeError):
        record = json.loads(path.read_text(encoding="utf-8"))
        record.update(state=state, ended=now(), **({"error": error} if error else {}))
        write_text_atomic(path, strict_json.dumps(record, indent=2) + "\n")
    return path


def with_driver_paths(record: bytes, config: RunConfig, node: str | None) -> bytes:
    """The task's run.json, saying the run's config as queued here (not the task's scratch paths) and where it ran."""
    data = json.loads(record)
    task = data["config"]
    data["config"] = replace(config, device=task["device"], data=data_read(task, config)).to_dict()
    if node is not None:
        data["ray_node"] = node
    return (strict_json.dumps(data, indent=2) + "\n").encode()


def data_read(task: dict[str, Any], config: RunConfig) -> str | None:
    """The data a task's run read, on the driver: data prepared again inside the run's folder, once it came back with it."""
    read = Path(task["data"]) if task.get("data") else None
    if read is not None and read.is_relative_to(task["out_dir"]):
        here = Path(config.out_dir) / read.relative_to(task["out_dir"])
        if here.exists():
            return str(here)
    return config.data


def relocated(saved: RunSaved, out: Path) -> RunSaved:
    """The worker's RunSaved with its paths in the driver's run folder."""
    moved = lambda path: out / Path(path).relative_to(saved.out_dir) if path is not None else None
    return RunSaved(out, moved(saved.adapter_dir), moved(saved.record), moved(saved.plot), saved.stopped)
