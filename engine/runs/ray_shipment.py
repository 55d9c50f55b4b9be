"""What a Ray task needs from the driver's disk, and how it gets there: the prepared data and the model's weights.

No shared file system is assumed. The prepared data (a few MB) travels with each task. The model's
weights (up to 6 GB) travel once per model through Ray's object store, and only when the cluster
has a node other than the driver's: a task on the driver's own node reads the driver's copy where
it lies. The object is put from a memory map of the weights file, so the driver never holds a copy
in its own memory, and released as soon as no run in flight needs it.
"""

import mmap
import pickle
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from engine import strict_json
from engine.atomic import write_bytes_atomic
from engine.errors import ConfigError
from engine.runs.jobs import WorkerJob

MAX_SHIPPED_DATA_BYTES = 200 * 1024 * 1024  # a prepared data folder is a few MB; more means the wrong folder


@dataclass(frozen=True)
class Shipment:
    """The run's data from the driver's disk: file name -> bytes."""

    data: dict[str, bytes] | None  # None: the worker downloads the data (cfg.data is None or a URL)
    data_is_file: bool = False  # cfg.data named one file (zip, TSV) rather than a prepared folder


@dataclass(frozen=True)
class Weights:
    """Where a task finds the model: on the driver's node, the driver's copy; elsewhere, the shipped files."""

    driver_node: str  # the driver's Ray node id ("" when the driver is no node of the cluster)
    files: Any | None  # an object ref of {name: bytes-like}; None: nothing shipped (the worker fetches the model itself)


class WeightsShelf:
    """The models shipped for the runs in flight, each put once and released when its last run ends."""

    def __init__(self, ray: Any) -> None:
        self._ray = ray
        client = ray.util.client.ray.is_connected()  # a Ray Client driver shares no node's disk
        self._node = "" if client else ray.get_runtime_context().get_node_id()
        self._lock = threading.Lock()
        self._held: dict[str, tuple[Weights, int]] = {}  # model -> (what tasks get, runs in flight)

    def take(self, model: str) -> Weights:
        """What a run of `model` is given; give it back when that run ends."""
        with self._lock:
            weights, runs = self._held.get(model) or (Weights(self._node, self._put(model) if self._other_nodes() else None), 0)
            self._held[model] = (weights, runs + 1)
            return weights

    def give_back(self, model: str) -> None:
        with self._lock:
            weights, runs = self._held[model]
            if runs > 1:
                self._held[model] = (weights, runs - 1)
            else:
                del self._held[model]  # the driver's ref goes: Ray frees the object once no task holds it either

    def held(self) -> dict[str, int]:
        """Runs in flight per model whose weights this driver holds."""
        with self._lock:
            return {model: runs for model, (_, runs) in self._held.items()}

    def _other_nodes(self) -> bool:
        return any(node["Alive"] and node["NodeID"] != self._node for node in self._ray.nodes())

    def _put(self, model: str) -> Any | None:
        """The model's folder (config.json + weights) as one object; None when this machine has no copy
        (a size not in its Hugging Face cache: the worker fetches it itself)."""
        from engine.weights import WEIGHTS_FILE, resolve

        source = resolve(model)
        path = source.weights
        if path is None:
            try:
                from huggingface_hub import hf_hub_download

                path = Path(hf_hub_download(source.repo_id, WEIGHTS_FILE, local_files_only=True))
            except Exception:  # not cached here
                return None
        config = strict_json.dumps(source.config.to_hf()).encode()
        with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            buffer = pickle.PickleBuffer(mapped)  # out of band: Ray copies the mapped pages into its store
            try:
                return self._ray.put({"config.json": config, WEIGHTS_FILE: buffer})
            finally:
                buffer.release()


def pack_data(data: str | None) -> Shipment:
    """The run's data on this machine; nothing for a download or a URL.

    Raises:
        ConfigError: a folder far bigger than prepared data.
    """
    if data is None or "://" in data:
        return Shipment(None)
    path = Path(data)
    if path.is_file():
        return Shipment({path.name: path.read_bytes()}, data_is_file=True)
    files = {str(p.relative_to(path)): p for p in sorted(path.rglob("*")) if p.is_file() and not p.name.startswith(".")}
    if sum(p.stat().st_size for p in files.values()) > MAX_SHIPPED_DATA_BYTES:
        raise ConfigError(f"{path} holds more than {MAX_SHIPPED_DATA_BYTES // 2**20} MB: give the folder `python -m engine data` prepared")
    return Shipment({name: p.read_bytes() for name, p in files.items()})


def unpack(job: WorkerJob, weights: Weights | None, shipment: Shipment, scratch: Path, ray: Any) -> WorkerJob:
    """On the task's node: `job` reading its inputs (copies in `scratch` where they were shipped) and writing into `scratch/run`."""
    changes: dict[str, Any] = {"out_dir": str(scratch / "run"), "data_cache": str(scratch / "cache")}
    weights_at = None
    if weights is not None and weights.files is not None and ray.get_runtime_context().get_node_id() != weights.driver_node:
        weights_at = scratch / "model"
        for name, data in ray.get(weights.files).items():
            write_bytes_atomic(weights_at / name, data)
    if shipment.data is not None:
        folder = scratch / "data"
        for name, data in shipment.data.items():
            write_bytes_atomic(folder / name, data)
        changes["data"] = str(folder / next(iter(shipment.data))) if shipment.data_is_file else str(folder)
    return replace(job, config=replace(job.config, **changes), weights_at=str(weights_at) if weights_at else None)
