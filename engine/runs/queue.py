"""The run queue: every run anyone asked for, in order, with its state, kept in RUNS/queue.json.

The file is rewritten atomically on every change, so the queue survives a restart: queued runs
stay queued, a run that was running when the app stopped becomes `interrupted` (its folder keeps
its last saved adapter), and nothing finished is lost. Each run gets its own folder under the runs
folder, created (exclusively) when it is queued: its id is that folder's path relative to it
("20261202-153000", or "grid-20261202-153000/rank4-alpha16-seed1" for a run of a grid).

Waiting runs are kept in the order they will start. A run is queued for a visitor (an opaque key;
"" for nobody in particular), and takes its fair place: a visitor's first waiting run goes ahead of
another's second, counting the runs each has running (round robin).

A request (add, cancel, move) changes nothing unless the file is saved: a failed save refuses it
with a QueueError. What has happened anyway (a run started, a run ended) is kept in memory when the
save fails, the run then failing with the reason, and written by the next save that works.
"""

import contextlib
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
from engine.errors import LoRALabError
from engine.runs.queue_file import QueueFileError, Rebase, parse, read_entries
from engine.runs.record import outcome
from engine.runs.states import ENDED, RunState

log = logging.getLogger(__name__)

QUEUE_FILE = "queue.json"
MAX_WAITING = 500  # runs queued and not started, from all visitors together
MAX_KEPT_ENDED = 1000  # ended entries the file keeps (the run folders keep everything)


class QueueError(LoRALabError):
    """A queue request that cannot be done: the queue is full, the run is unknown or already over, the file cannot be saved."""


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
    visitor: str = ""  # who queued it: an opaque key ("" for nobody in particular); `config.owner` is only its label
    settings_known: bool = True  # False: queue.json held settings that were refused, and `config` is a stand-in
    resume: bool = False  # it goes on from the checkpoint in its folder (engine/runs/resume.py)

    @property
    def ended(self) -> bool:
        return self.state in ENDED

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "config": self.config.to_dict()}


def fair_place(runs: Sequence[QueuedRun], visitor: str) -> int:
    """Where a new waiting run of `visitor` goes in `runs` (queue order): after every waiting run of an
    earlier or the same round. A waiting run's round is how many runs its visitor has running, plus
    how many of theirs wait ahead of it."""
    rounds = {}
    for run in runs:
        if run.state == "running":
            rounds[run.visitor] = rounds.get(run.visitor, 0) + 1
    mine = rounds.get(visitor, 0) + sum(run.state == "queued" and run.visitor == visitor for run in runs)
    place = None
    for index, run in enumerate(runs):
        if run.state != "queued":
            continue
        round_of = rounds.get(run.visitor, 0)
        rounds[run.visitor] = round_of + 1
        if round_of <= mine:
            place = index + 1
        elif place is None:
            place = index  # ahead of every later round
    return len(runs) if place is None else place


class RunQueue:
    """Thread-safe; every change is written to `root/queue.json` before it returns (unless `persist` is off:
    a headless sweep keeps its queue in memory and leaves the app's file alone). `rebase` is what the
    owner sets on each run read back from the file before it may train (the owner's data and device)."""

    def __init__(self, root: Path, max_waiting: int = MAX_WAITING, persist: bool = True, rebase: Rebase | None = None) -> None:
        self.root = Path(root)
        self.max_waiting = max_waiting
        self.persist = persist
        self._rebase = rebase
        self._lock = threading.Lock()
        self._runs: list[QueuedRun] = self._load() if persist else []

    def add(
        self,
        configs: Sequence[RunConfig],
        grid_labels: Sequence[str] | None = None,
        visitor: str = "",
        max_waiting_per_visitor: int | None = None,
    ) -> list[QueuedRun]:
        """Queue `configs` for `visitor`, each in a new folder and at its fair place; with `grid_labels` (one folder name each), as one grid.

        Raises:
            QueueError: the queue would hold more than `max_waiting` waiting runs (or the visitor more than
                `max_waiting_per_visitor`), no folder can be made, or the queue cannot be saved (nothing is queued).
        """
        if grid_labels is not None and len(grid_labels) != len(configs):
            raise ValueError("one label per grid run")
        with self._lock:
            self._check_room(len(configs), visitor, max_waiting_per_visitor)
            now = time.time()
            made: list[Path] = []
            try:
                grid, ids = self._make_folders(len(configs), grid_labels, made)
                added = [
                    QueuedRun(run_id, replace(config, out_dir=str(self.root / run_id)), grid, queued_at=now, visitor=visitor)
                    for run_id, config in zip(ids, configs, strict=True)
                ]
                runs = list(self._runs)
                for run in added:
                    runs.insert(fair_place(runs, visitor), run)
                self._commit(runs)
            except BaseException:
                for folder in reversed(made):
                    with contextlib.suppress(OSError):
                        folder.rmdir()  # made just now, so empty
                raise
            return added

    def requeue(self, run_id: str, config: RunConfig, visitor: str = "", max_waiting_per_visitor: int | None = None) -> QueuedRun:
        """Queue the ended run `run_id` (or a run folder the queue never knew) again, at its fair place, to resume with `config`.

        Raises:
            QueueError: the run is waiting or running, its folder is not in the runs folder, the queue is full, or it cannot be saved.
        """
        folder = self.root / run_id
        if ".." in Path(run_id).parts or not folder.is_dir():
            raise QueueError(f"no run folder {str(run_id)[:120]!r} in {self.root}: refresh the list")
        with self._lock:
            old = next((run for run in self._runs if run.id == run_id), None)
            if old is not None and not old.ended:
                raise QueueError(f"run {run_id} is {old.state}: only a run that ended can resume")
            owner = old.visitor if old is not None else visitor
            self._check_room(1, owner, max_waiting_per_visitor)
            again = QueuedRun(run_id, replace(config, out_dir=str(folder)), old.grid if old else None, queued_at=time.time(), visitor=owner, resume=True)
            runs = [run for run in self._runs if run.id != run_id]
            runs.insert(fair_place(runs, owner), again)
            self._commit(runs)
            return again

    def _check_room(self, adding: int, visitor: str, per_visitor: int | None) -> None:
        waiting = sum(run.state == "queued" for run in self._runs)
        if waiting + adding > self.max_waiting:
            raise QueueError(
                f"the queue holds {waiting} waiting runs and takes at most {self.max_waiting}: "
                f"wait for some to finish or cancel some before adding {adding} more"
            )
        mine = sum(run.state == "queued" and run.visitor == visitor for run in self._runs)
        if per_visitor is not None and adding > per_visitor:
            raise QueueError(
                f"this grid makes {adding} runs, and each visitor may have at most {per_visitor} waiting at once (each run of a grid counts): "
                "choose fewer values, or ask the presenter to raise the limit"
            )
        if per_visitor is not None and mine + adding > per_visitor:
            more = f"this grid would add {adding} (each of its runs counts)" if adding > 1 else "this would be one more"
            raise QueueError(
                f"you have {mine} {'run' if mine == 1 else 'runs'} waiting and may have at most {per_visitor} at once; {more}: "
                "wait until one of yours starts, or cancel one on the Runs tab"
            )

    def _make_folders(self, count: int, grid_labels: Sequence[str] | None, made: list[Path]) -> tuple[str | None, list[str]]:
        """A new folder per run (and one for the grid), each created here: no other writer can have it too."""
        if grid_labels is None:
            return None, [self._new_folder("", made) for _ in range(count)]
        grid = self._new_folder("grid-", made)
        for label in grid_labels:
            self._mkdir(self.root / grid / label, made)
        return grid, [f"{grid}/{label}" for label in grid_labels]

    def _new_folder(self, prefix: str, made: list[Path]) -> str:
        """A folder named from the time, unused by any run and made now (runs added in one second get -2, -3, ...)."""
        stamp = prefix + time.strftime("%Y%m%d-%H%M%S")
        taken = {run.id.split("/", 1)[0] for run in self._runs}
        for n in range(1, 10_000):
            candidate = stamp if n == 1 else f"{stamp}-{n}"
            if candidate not in taken and self._mkdir(self.root / candidate, made, exclusive=True):
                return candidate
        raise QueueError(f"no free folder name for {stamp} in {self.root}")

    def _mkdir(self, folder: Path, made: list[Path], exclusive: bool = False) -> bool:
        """Make `folder`; False when it exists already (another writer made it) and `exclusive`."""
        try:
            folder.mkdir(parents=True)
        except FileExistsError:
            if exclusive:
                return False
            raise QueueError(f"{folder} exists already: another process writes into {self.root}") from None
        except OSError as error:
            raise QueueError(f"no folder for the run could be made in {self.root} ({error}): free space, or choose another --out") from None
        made.append(folder)
        return True

    def claim_next(self, worker: str) -> QueuedRun | None:
        """The first queued run, now marked running on `worker`; None when nothing waits.

        Raises:
            QueueError: the queue could not be saved; that run is failed (in memory, saying why).
        """
        with self._lock:
            run = next((run for run in self._runs if run.state == "queued"), None)
            if run is None:
                return None
            claimed = replace(run, state="running", worker=worker, started_at=time.time())
            try:
                self._commit(self._with(run, claimed))
            except QueueError as error:
                self._runs = self._with(run, replace(run, state="failed", reason=f"it could not start: {error}", ended_at=time.time()))
                raise QueueError(f"run {run.id} could not start: {error}") from None
            return claimed

    def finish(self, run_id: str, state: RunState, reason: str | None = None) -> QueuedRun:
        """Mark a run ended. When the queue cannot be saved, the run is failed in memory, saying why, and QueueError says so.

        Raises:
            QueueError: unknown run, or the queue could not be saved.
        """
        with self._lock:
            run = self._get(run_id)
            ended = replace(run, state=state, reason=reason, ended_at=time.time())
            try:
                self._commit(self._with(run, ended))
            except QueueError as error:
                failed = replace(ended, state="failed", reason=f"it ended ({state}) but {error}")
                self._runs = self._with(run, failed)
                raise QueueError(f"the end of run {run_id} could not be saved: {error}") from None
            return ended

    def fail(self, run_id: str, reason: str) -> None:
        """Mark a waiting or running run failed whatever else goes wrong: in memory first, then in the file if it can be
        saved (else with the next save that works). An unknown or ended run is left as it is."""
        with self._lock:
            run = next((run for run in self._runs if run.id == run_id), None)
            if run is None or run.ended:
                return
            self._runs = runs = self._with(run, replace(run, state="failed", reason=reason, ended_at=time.time()))
            with contextlib.suppress(QueueError):
                self._commit(runs)

    def cancel(self, run_id: str) -> QueuedRun:
        """Take a queued run out of the waiting line (its empty folder goes).

        Raises:
            QueueError: the run is unknown, or not waiting any more (stop a running one instead), or the queue cannot be saved.
        """
        with self._lock:
            run = self._get(run_id)
            if run.state != "queued":
                raise QueueError(f"run {run_id} is {run.state}, not queued: only a waiting run can be cancelled (stop a running one)")
            cancelled = replace(run, state="cancelled", ended_at=time.time())
            self._commit(self._with(run, cancelled))
        folder = self.root / run_id
        for empty in (folder, folder.parent) if "/" in run_id else (folder,):
            with contextlib.suppress(OSError):
                empty.rmdir()  # only when empty: a run that never started left nothing in it
        return cancelled

    def move(self, run_id: str, places: int, among_own: bool = False) -> None:
        """Move a queued run `places` ahead (negative: back) among the waiting runs; `among_own`: among its visitor's only,
        each of theirs keeping the places the others' runs leave (so a visitor cannot jump ahead of anyone else).

        Raises:
            QueueError: the run is unknown or not waiting, or the queue cannot be saved.
        """
        with self._lock:
            run = self._get(run_id)
            if run.state != "queued":
                raise QueueError(f"run {run_id} is {run.state}: only a waiting run can be moved")
            runs = list(self._runs)
            slots = [i for i, r in enumerate(runs) if r.state == "queued" and (not among_own or r.visitor == run.visitor)]
            order = [runs[i] for i in slots]
            at = order.index(run)
            order.insert(min(max(at - places, 0), len(order) - 1), order.pop(at))
            for slot, moved in zip(slots, order, strict=True):
                runs[slot] = moved
            self._commit(runs)

    def runs(self) -> list[QueuedRun]:
        """Every run the queue knows, in queue order (waiting runs in the order they will start)."""
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

    def _with(self, old: QueuedRun, new: QueuedRun) -> list[QueuedRun]:
        runs = list(self._runs)
        runs[runs.index(old)] = new
        return runs

    def _load(self) -> list[QueuedRun]:
        path = self.root / QUEUE_FILE
        if not path.is_file():
            return []
        try:
            entries = parse(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, QueueFileError) as error:
            kept = path.with_name(f"{QUEUE_FILE}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}")
            path.replace(kept)
            log.warning("the run queue in %s could not be read (%s); starting an empty queue, the old file is kept as %s", path, error, kept.name)
            return []
        runs = [self._settled(run) if run.state == "running" else run for run in read_entries(entries, self.root, self._rebase, QueuedRun)]
        try:
            self._commit(runs)
        except QueueError as error:
            log.warning("%s; it is saved with the next change", error)
            self._runs = runs
        return self._runs

    def _settled(self, run: QueuedRun) -> QueuedRun:
        """A run an earlier app left running, as its own record says it ended (engine.runs.record.outcome)."""
        state, reason = outcome(Path(run.config.out_dir))
        return replace(run, state=state, reason=reason if state in ("failed", "interrupted") else None, ended_at=time.time())

    def _commit(self, runs: list[QueuedRun]) -> None:
        """Save `runs` as the queue, then hold them; on a failed save nothing changes.

        Raises:
            QueueError: the file could not be written.
        """
        ended = [run for run in runs if run.ended]
        if len(ended) > MAX_KEPT_ENDED:  # the oldest ended entries go; their folders stay
            dropped = {id(run) for run in ended[: len(ended) - MAX_KEPT_ENDED]}
            runs = [run for run in runs if id(run) not in dropped]
        if self.persist:
            payload = {"format_version": 1, "runs": [run.to_dict() for run in runs]}
            try:
                write_text_atomic(self.root / QUEUE_FILE, strict_json.dumps(payload, indent=1) + "\n")
            except (OSError, ValueError) as error:  # a full disk (DiskFullError is an OSError), a read-only folder
                raise QueueError(f"the run queue could not be saved in {self.root / QUEUE_FILE} ({error})") from None
        self._runs = runs
