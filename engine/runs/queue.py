"""The run queue: every run anyone asked for, in order, with its state, kept in RUNS/queue.json.

The file is rewritten atomically on every change, so the queue survives a restart: queued runs
stay queued, a run that was running when the app stopped becomes `interrupted` (its folder keeps
its last saved adapter), and nothing finished is lost. Each run gets its own folder under the runs
folder: its id is that folder's path relative to it ("20261202-153000", or
"grid-20261202-153000/rank4-alpha16-seed1" for a run of a grid).
"""

import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from engine import strict_json
from engine.atomic import write_text_atomic
from engine.config import RunConfig
from engine.errors import ConfigError, LoRALabError
from engine.runs.record import outcome
from engine.runs.states import ENDED, RUN_STATES, RunState

log = logging.getLogger(__name__)

QUEUE_FILE = "queue.json"
MAX_WAITING = 500  # runs queued and not started, from all visitors together
MAX_KEPT_ENDED = 1000  # ended entries the file keeps (the run folders keep everything)


class QueueError(LoRALabError):
    """A queue request that cannot be done: the queue is full, the run is unknown or already over."""


@dataclass(frozen=True)
class QueuedRun:
    id: str  # the run's folder, relative to the runs folder
    config: RunConfig  # out_dir is the run's folder
    grid: str | None = None  # the grid's folder when the run belongs to one
    state: RunState = "queued"
    reason: str | None = None  # why it failed or was interrupted, in the user's words
    worker: str | None = None  # where it ran: "cpu 0-1", "cuda:0", a Ray node
    queued_at: float = 0.0  # seconds since the epoch
    started_at: float | None = None
    ended_at: float | None = None

    @property
    def ended(self) -> bool:
        return self.state in ENDED

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "config": self.config.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "QueuedRun":
        if data.get("state") not in RUN_STATES:
            raise ConfigError(f"unknown run state {data.get('state')!r}")
        return cls(**{**data, "config": RunConfig.from_dict(data["config"])})


class RunQueue:
    """Thread-safe; every change is written to `root/queue.json` before it returns (unless `persist` is off:
    a headless sweep keeps its queue in memory and leaves the app's file alone)."""

    def __init__(self, root: Path, max_waiting: int = MAX_WAITING, persist: bool = True) -> None:
        self.root = Path(root)
        self.max_waiting = max_waiting
        self.persist = persist
        self._lock = threading.Lock()
        self._runs: list[QueuedRun] = self._load() if persist else []

    def add(self, configs: Sequence[RunConfig], grid_labels: Sequence[str] | None = None) -> list[QueuedRun]:
        """Queue `configs` at the end, each in a new folder; with `grid_labels` (one folder name each), as one grid.

        Raises:
            QueueError: the queue would hold more than `max_waiting` waiting runs.
        """
        if grid_labels is not None and len(grid_labels) != len(configs):
            raise ValueError("one label per grid run")
        with self._lock:
            waiting = sum(run.state == "queued" for run in self._runs)
            if waiting + len(configs) > self.max_waiting:
                raise QueueError(
                    f"the queue holds {waiting} waiting runs and takes at most {self.max_waiting}: "
                    f"wait for some to finish or cancel some before adding {len(configs)} more"
                )
            now = time.time()
            if grid_labels is None:
                ids: list[str] = []
                for _ in configs:  # each name unused by the runs before it in this call too
                    ids.append(self._new_id("", ids))
                grid = None
            else:
                grid = self._new_id("grid-")
                ids = [f"{grid}/{label}" for label in grid_labels]
            added = [
                QueuedRun(run_id, replace(config, out_dir=str(self.root / run_id)), grid, queued_at=now) for run_id, config in zip(ids, configs, strict=True)
            ]
            self._runs += added
            self._save()
            return added

    def claim_next(self, worker: str) -> QueuedRun | None:
        """The first queued run, now marked running on `worker`; None when nothing waits."""
        with self._lock:
            for index, run in enumerate(self._runs):
                if run.state == "queued":
                    self._runs[index] = claimed = replace(run, state="running", worker=worker, started_at=time.time())
                    self._save()
                    return claimed
            return None

    def finish(self, run_id: str, state: RunState, reason: str | None = None) -> QueuedRun:
        return self._update(run_id, state=state, reason=reason, ended_at=time.time())

    def cancel(self, run_id: str) -> QueuedRun:
        """Take a queued run out of the waiting line.

        Raises:
            QueueError: the run is unknown, or not waiting any more (stop a running one instead).
        """
        with self._lock:
            run = self._get(run_id)
            if run.state != "queued":
                raise QueueError(f"run {run_id} is {run.state}, not queued: only a waiting run can be cancelled (stop a running one)")
            return self._replace(run, state="cancelled", ended_at=time.time())

    def move(self, run_id: str, places: int) -> None:
        """Move a queued run `places` ahead (negative: back) among the waiting runs."""
        with self._lock:
            run = self._get(run_id)
            if run.state != "queued":
                raise QueueError(f"run {run_id} is {run.state}: only a waiting run can be moved")
            waiting = [i for i, r in enumerate(self._runs) if r.state == "queued"]
            at = waiting.index(self._runs.index(run))
            target = waiting[min(max(at - places, 0), len(waiting) - 1)]
            self._runs.remove(run)
            self._runs.insert(target, run)
            self._save()

    def runs(self) -> list[QueuedRun]:
        """Every run the queue knows, in queue order."""
        with self._lock:
            return list(self._runs)

    def get(self, run_id: str) -> QueuedRun:
        with self._lock:
            return self._get(run_id)

    def _get(self, run_id: str) -> QueuedRun:
        for run in self._runs:
            if run.id == run_id:
                return run
        raise QueueError(f"no run {str(run_id)[:120]!r} in the queue: refresh the list")

    def _update(self, run_id: str, **changes: Any) -> QueuedRun:
        with self._lock:
            return self._replace(self._get(run_id), **changes)

    def _replace(self, run: QueuedRun, **changes: Any) -> QueuedRun:
        updated = replace(run, **changes)
        self._runs[self._runs.index(run)] = updated
        self._save()
        return updated

    def _new_id(self, prefix: str, also_taken: Sequence[str] = ()) -> str:
        """A folder name from the time, unused by any run, folder or `also_taken` (runs added in one second get -2, -3, ...)."""
        stamp = prefix + time.strftime("%Y%m%d-%H%M%S")
        taken = {run.id.split("/", 1)[0] for run in self._runs} | set(also_taken)
        for n in range(1, 10_000):
            candidate = stamp if n == 1 else f"{stamp}-{n}"
            if candidate not in taken and not (self.root / candidate).exists():
                return candidate
        raise QueueError(f"no free folder name for {stamp} in {self.root}")

    def _load(self) -> list[QueuedRun]:
        path = self.root / QUEUE_FILE
        if not path.is_file():
            return []
        try:
            runs = [QueuedRun.from_dict(entry) for entry in json.loads(path.read_text(encoding="utf-8"))["runs"]]
        except (OSError, ValueError, KeyError, TypeError, LoRALabError) as error:
            kept = path.with_name(f"{QUEUE_FILE}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}")
            path.replace(kept)
            log.warning("the run queue in %s could not be read (%s); starting an empty queue, the old file is kept as %s", path, error, kept.name)
            return []
        runs = [self._settled(run) if run.state == "running" else run for run in runs]
        self._runs = runs
        self._save()
        return runs

    def _settled(self, run: QueuedRun) -> QueuedRun:
        """A run an earlier app left running, as its own record says it ended (engine.runs.record.outcome)."""
        state, reason = outcome(Path(run.config.out_dir))
        return replace(run, state=state, reason=reason if state in ("failed", "interrupted") else None, ended_at=time.time())

    def _save(self) -> None:
        if not self.persist:
            return
        ended = [run for run in self._runs if run.ended]
        if len(ended) > MAX_KEPT_ENDED:  # the oldest ended entries go; their folders stay
            dropped = {id(run) for run in ended[: len(ended) - MAX_KEPT_ENDED]}
            self._runs = [run for run in self._runs if id(run) not in dropped]
        payload = {"format_version": 1, "runs": [run.to_dict() for run in self._runs]}
        write_text_atomic(self.root / QUEUE_FILE, strict_json.dumps(payload, indent=1) + "\n")
