"""Runs as tasks on a Ray cluster (`--ray ADDRESS`): the same runs as LocalWorkers, beyond one machine.

No shared file system is assumed. The driver (the app or `engine sweep`) sends each task what its
run reads: the model's weights when this machine has them (a `--model` folder, or a size already in
the Hugging Face cache; other sizes the worker fetches itself) and the prepared data. The task runs
in a temporary folder, streams its events back through one small channel actor, polls the same
actor for Stop, and returns the files of its run folder (adapter, run.json, loss plot), which the
driver writes into its own runs folder. A task takes one GPU where the cluster has GPUs, else its
share of the cluster's CPUs.

Ray is optional (requirements-ray.txt): nothing here imports it until RayWorkers is built. Driver
and cluster must run the same Ray and Python versions; the `engine` package is shipped to the
workers with each job (Ray's `py_modules`), its dependencies must be installed there.
"""

import contextlib
import json
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import engine
from engine import strict_json
from engine.atomic import write_bytes_atomic
from engine.config import RunConfig
from engine.errors import ConfigError
from engine.failure import Failure
from engine.runs.events import RunSaved
from engine.runs.jobs import WorkerEnded, WorkerJob
from engine.runs.record import RECORD_FILE

POLL_SECONDS = 0.25  # how often the driver collects events and a task looks for Stop
MAX_SHIPPED_DATA_BYTES = 200 * 1024 * 1024  # a prepared data folder is a few MB; more means the wrong folder


@dataclass(frozen=True)
class RaySlot:
    name: str
    num_cpus: float
    num_gpus: float


@dataclass(frozen=True)
class Shipment:
    """What a task needs from the driver's disk: file name -> bytes, per input."""

    weights: dict[str, bytes] | None  # a model folder's files; None: the worker fetches the model itself (a size not cached here)
    data: dict[str, bytes] | None  # None: the worker downloads the data (cfg.data is None or a URL)
    data_is_file: bool = False  # cfg.data named one file (zip, TSV) rather than a prepared folder


@dataclass(frozen=True)
class TaskResult:
    ended: WorkerEnded
    files: dict[str, bytes]  # the run folder's files, by path relative to it
    node: str


class RunChannel:
    """One actor for all tasks of a driver: events going back, Stop going out."""

    def __init__(self) -> None:
        self._events: dict[str, list[object]] = defaultdict(list)
        self._stopped: set[str] = set()

    def put(self, run_id: str, events: list[object]) -> None:
        self._events[run_id].extend(events)

    def take(self, run_id: str) -> list[object]:
        return self._events.pop(run_id, [])

    def stop(self, run_id: str) -> None:
        self._stopped.add(run_id)

    def stopped(self, run_id: str) -> bool:
        return run_id in self._stopped

    def forget(self, run_id: str) -> None:
        self._events.pop(run_id, None)
        self._stopped.discard(run_id)


def train_remotely(run_id: str, job: WorkerJob, weights: dict[str, bytes] | None, data: Shipment, channel: Any) -> TaskResult:
    """The task: unpack the inputs, run the job, stream its events, return its run folder's files.

    `weights` comes as its own argument: Ray fetches an object passed by reference only at the top level.
    """
    import socket

    import ray

    from engine.runs.worker import run_job

    stop = threading.Event()
    pending: list[object] = []
    lock = threading.Lock()

    def send(event: object) -> None:
        with lock:
            pending.append(event)

    def relay() -> None:  # events out and Stop in, every POLL_SECONDS, until the run ends
        while True:
            with lock:
                batch, pending[:] = list(pending), []
            if batch:
                channel.put.remote(run_id, batch)
            if ray.get(channel.stopped.remote(run_id)):
                stop.set()
            if finished.is_set():
                return
            time.sleep(POLL_SECONDS)

    finished = threading.Event()
    with tempfile.TemporaryDirectory(prefix="lora-lab-task-") as scratch:
        job = unpack(job, replace(data, weights=weights), Path(scratch))
        threads = int(ray.get_runtime_context().get_assigned_resources().get("CPU", 0)) or None
        if threads:
            import torch

            torch.set_num_threads(threads)
        relayer = threading.Thread(target=relay, daemon=True)
        relayer.start()
        ended = run_job(job, stop, send)
        finished.set()
        relayer.join()
        with lock:
            if pending:
                ray.get(channel.put.remote(run_id, list(pending)))
        out = Path(job.config.out_dir)
        files = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} if out.is_dir() else {}
    return TaskResult(ended, files, socket.gethostname())


def unpack(job: WorkerJob, shipment: Shipment, scratch: Path) -> WorkerJob:
    """`job` reading copies of its inputs in `scratch` and writing into `scratch/run`."""
    changes: dict[str, Any] = {"out_dir": str(scratch / "run"), "data_cache": str(scratch / "cache")}
    weights_at = None
    if shipment.weights is not None:
        weights_at = scratch / "model"
        for name, data in shipment.weights.items():
            write_bytes_atomic(weights_at / name, data)
    if shipment.data is not None:
        folder = scratch / "data"
        for name, data in shipment.data.items():
            write_bytes_atomic(folder / name, data)
        changes["data"] = str(folder / next(iter(shipment.data))) if shipment.data_is_file else str(folder)
    return replace(job, config=replace(job.config, **changes), weights_at=str(weights_at) if weights_at else None)


class RayWorkers:
    """Runs as Ray tasks; `slots` bounds how many run at once."""

    def __init__(self, address: str | None, count: int | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise ConfigError("Ray is not installed: pip install -r requirements-ray.txt (the same Ray version as the cluster)") from None
        self._ray = ray
        if not ray.is_initialized():
            try:
                ray.init(
                    address=address,
                    runtime_env={"py_modules": [str(Path(engine.__file__).resolve().parent)]},
                    logging_level="WARNING",
                    include_dashboard=False,
                )
            except (ConnectionError, RuntimeError, ValueError) as error:
                problem = f"could not connect to the Ray cluster at {address!r} ({error})"
                raise ConfigError(f"{problem}: start it with `ray start --head`, or check the address") from None
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
        count = count or gpus or max(1, cpus // 2)
        if count < 1:
            raise ConfigError(f"--workers must be at least 1, got {count}")
        self.slots = tuple(RaySlot(f"ray:{i}", 0 if gpus else max(1, cpus // count), 1 if gpus else 0) for i in range(count))
        self._channel = ray.remote(num_cpus=0)(RunChannel).remote()
        self._task = ray.remote(train_remotely)
        self._weights: dict[str, Any] = {}  # model -> object ref of its shipped files, sent once

    def describe(self) -> str:
        kind = "1 GPU each" if self.slots and self.slots[0].num_gpus else f"{self.slots[0].num_cpus:g} CPUs each"
        return f"{len(self.slots)} Ray workers ({kind})"

    def launch(self, config: RunConfig, slot: RaySlot, on_event: Callable[[object], None], on_end: Callable[[WorkerEnded], None]) -> "RayRun":
        device = "cuda" if slot.num_gpus else "cpu"
        job = WorkerJob(replace(config, device=device))
        data = Shipment(None, *pack_data(config.data))
        run_id = f"{config.out_dir}@{time.time_ns()}"
        task = self._task.options(num_cpus=slot.num_cpus, num_gpus=slot.num_gpus)
        ref = task.remote(run_id, job, self._weights_ref(config.model), data, self._channel)
        return RayRun(self._ray, self._channel, run_id, ref, config, on_event, on_end)

    def _weights_ref(self, model: str) -> Any:
        if model not in self._weights:
            files = pack_weights(model)
            self._weights[model] = None if files is None else self._ray.put(files)
        return self._weights[model]


class RayRun:
    """A launched task: its events are pumped to `on_event`, its files written where the run belongs."""

    def __init__(self, ray: Any, channel: Any, run_id: str, ref: Any, config: RunConfig, on_event: Callable, on_end: Callable) -> None:
        self._ray, self._channel, self._run_id, self._ref = ray, channel, run_id, ref
        self._config = config
        self._pump = threading.Thread(target=self._follow, args=(on_event, on_end), name=f"ray-{run_id}", daemon=True)
        self._pump.start()

    def stop(self) -> None:
        self._channel.stop.remote(self._run_id)

    def wait(self, timeout: float | None = None) -> bool:
        self._pump.join(timeout)
        return not self._pump.is_alive()

    def _follow(self, on_event: Callable[[object], None], on_end: Callable[[WorkerEnded], None]) -> None:
        ray = self._ray
        saved: RunSaved | None = None
        while True:
            done, _ = ray.wait([self._ref], timeout=POLL_SECONDS)
            for event in ray.get(self._channel.take.remote(self._run_id)):
                if isinstance(event, RunSaved):
                    saved = event  # handed on once its files are here
                else:
                    on_event(event)
            if done:
                break
        try:
            result: TaskResult = ray.get(self._ref)
        except Exception as error:  # the task's process or node died: Ray says why
            ended = WorkerEnded("failed", Failure("crashed", f"the Ray task failed: {type(error).__name__}: {' '.join(str(error).split())[:300]}"))
        else:
            for event in ray.get(self._channel.take.remote(self._run_id)):
                saved = event if isinstance(event, RunSaved) else saved
                if not isinstance(event, RunSaved):
                    on_event(event)
            out = Path(self._config.out_dir)
            for name, data in result.files.items():
                write_bytes_atomic(out / name, with_driver_paths(data, self._config, result.node) if name == RECORD_FILE else data)
            if saved is not None:
                on_event(relocated(saved, out))
            ended = result.ended
        with contextlib.suppress(Exception):
            self._channel.forget.remote(self._run_id)
        on_end(ended)


def with_driver_paths(record: bytes, config: RunConfig, node: str) -> bytes:
    """The task's run.json, saying the run's config as queued here (not the task's scratch paths) and where it ran."""
    data = json.loads(record)
    task = data["config"]
    data["config"] = replace(config, device=task["device"], data=data_read(task, config)).to_dict()
    data["ray_node"] = node
    return (strict_json.dumps(data, indent=2) + "\n").encode()


def data_read(task: dict[str, Any], config: RunConfig) -> str | None:
    """The data a task's run read, on the driver: data prepared again inside the run's folder came back with it."""
    read = Path(task["data"]) if task.get("data") else None
    if read is not None and read.is_relative_to(task["out_dir"]):
        return str(Path(config.out_dir) / read.relative_to(task["out_dir"]))
    return config.data


def relocated(saved: RunSaved, out: Path) -> RunSaved:
    """The worker's RunSaved with its paths in the driver's run folder."""
    moved = lambda path: out / Path(path).relative_to(saved.out_dir) if path is not None else None
    return RunSaved(out, moved(saved.adapter_dir), moved(saved.record), moved(saved.plot), saved.stopped)


def pack_weights(model: str) -> dict[str, bytes] | None:
    """The model as a folder's files (config.json + weights) from this machine's disk; None when this
    machine has no copy (a size not in its Hugging Face cache: the worker fetches it itself)."""
    from engine.weights import WEIGHTS_FILE, resolve

    source = resolve(model)
    weights = source.weights
    if weights is None:
        try:
            from huggingface_hub import hf_hub_download

            weights = Path(hf_hub_download(source.repo_id, WEIGHTS_FILE, local_files_only=True))
        except Exception:  # not cached here
            return None
    return {"config.json": strict_json.dumps(source.config.to_hf()).encode(), WEIGHTS_FILE: weights.read_bytes()}


def pack_data(data: str | None) -> tuple[dict[str, bytes] | None, bool]:
    """(files, is one file) of the run's data on this machine; (None, False) for a download or a URL."""
    if data is None or "://" in data:
        return None, False
    path = Path(data)
    if path.is_file():
        return {path.name: path.read_bytes()}, True
    files = {str(p.relative_to(path)): p for p in sorted(path.rglob("*")) if p.is_file() and not p.name.startswith(".")}
    if sum(p.stat().st_size for p in files.values()) > MAX_SHIPPED_DATA_BYTES:
        raise ConfigError(f"{path} holds more than {MAX_SHIPPED_DATA_BYTES // 2**20} MB: give the folder `python -m engine data` prepared")
    return {name: p.read_bytes() for name, p in files.items()}, False
