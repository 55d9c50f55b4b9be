"""A run's record (run.json) through its life, so that a run leaves a trace however it ends.

The record is written when the run starts (state "running", with the process that runs it),
updated at each checkpoint of the adapter, and closed as "done", "stopped" or "failed". A process
killed meanwhile cannot close it: a record still "running" whose process is gone is rewritten as
"interrupted" the next time it is read, and its last checkpoint stays a usable adapter.

Only "done" and "stopped" runs are complete; the others are listed but never used by default.
"""

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from engine import strict_json
from engine.adapter import CONFIG_FILE, TENSORS_FILE
from engine.atomic import disk_full_named, temporary_files, write_text_atomic
from engine.checkpoint import CHECKPOINT_FILE
from engine.config import RunConfig
from engine.errors import Cancelled, DiskFullError, TrainingDiverged
from engine.failure import one_line
from engine.memory import is_out_of_memory
from engine.reproduce import reproduction
from engine.runs.states import RECORD_STATES, RecordState

RECORD_FILE = "run.json"
PLOT_FILE = "loss.png"
ADAPTER_DIR = "adapter"
BEST_ADAPTER_DIR = "adapter-best"  # the weights of the lowest validation loss, when they are not the last's (engine/best.py)
BASELINE_FILE = "tfidf_logreg.json"  # the classical baseline's fitted model (engine/baseline.py), in place of an adapter
ADAPTER_FILES = (TENSORS_FILE, CONFIG_FILE)
CHECKPOINT_EVERY_S = 30.0  # at most one checkpoint per this many seconds (a gpt2-xl adapter can be 350 MB)

# The run folders this process is writing now: a record of ours still "running" but not in here
# belongs to a run that ended without closing it.
_running: set[str] = set()
_running_lock = threading.Lock()


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def record_state(record: dict[str, Any]) -> RecordState:
    """A record's state; records written before states existed say only whether the run stopped."""
    state = record.get("state")
    if state in RECORD_STATES:
        return state
    return "stopped" if record.get("stopped") else "done"


def read_record(folder: Path) -> dict[str, Any] | None:
    """A run folder's record (None when missing or unreadable); a "running" one whose process is gone
    is rewritten as "interrupted" first."""
    try:
        record = json.loads((Path(folder) / RECORD_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    if record_state(record) == "running" and not _still_running(Path(folder), record.get("process")):
        record = _interrupted(Path(folder), record)
    return record


def adapter_record(record: dict[str, Any] | None, adapter: str) -> dict[str, Any] | None:
    """`record` as it speaks of its adapter folder `adapter`: for the best one (BEST_ADAPTER_DIR), that adapter's
    own step and final scores in place of the last's, so a model card states what the exported weights did."""
    best = (record or {}).get("best")
    if adapter != BEST_ADAPTER_DIR or not isinstance(best, dict) or best.get("adapter") != BEST_ADAPTER_DIR:
        return record
    return {**record, "steps": best.get("step"), "final": best.get("final")}  # type: ignore[dict-item]


def outcome(folder: Path) -> tuple[RecordState, str | None]:
    """What became of the run in `folder` once nothing drives it any more (its app went away): its
    record's state and reason, settled by `read_record`'s one rule (a process gone before it closed
    its record interrupted the run). A run still saying "running" is still being finished by a
    process of its own (a worker that outlived its app), and one without a record never began."""
    record = read_record(folder)
    if record is None:
        return "interrupted", "the app stopped before the run's worker wrote its record"
    state = record_state(record)
    if state == "running":
        return "interrupted", "the app stopped while this run was going; its worker finishes and saves it as a stopped run"
    return state, record.get("error")


class RunRecord:
    """The record of one run as it goes; `begin` writes it, `finish` or a failure closes it."""

    def __init__(self, folder: Path, fields: dict[str, Any], made_folder: bool) -> None:
        self.folder = folder
        self.fields = fields
        self._made_folder = made_folder
        self._last_checkpoint: float | None = None

    @property
    def path(self) -> Path:
        return self.folder / RECORD_FILE

    @classmethod
    def begin(cls, cfg: RunConfig) -> "RunRecord":
        """Write the "running" record into `cfg.out_dir` (replacing an earlier run's files there).

        Raises:
            DiskFullError: there is no room for even the record (nothing is left behind).
        """
        folder = Path(cfg.out_dir)
        made_folder = not folder.exists()
        try:
            with disk_full_named(folder):
                folder.mkdir(parents=True, exist_ok=True)
        except DiskFullError as error:
            raise DiskFullError(folder, "--out") from error
        _remove_run_files(folder)  # an earlier run's adapter beside this run's record would pass for this run's
        # How to run it again, said as it was asked for (before its data source is resolved to a folder).
        fields = {"state": "running", "created": now(), "config": asdict(cfg), "process": this_process(), "reproduce": reproduction(cfg)}
        record = cls(folder, fields, made_folder)
        with _running_lock:
            _running.add(_key(folder))
        try:
            write_text_atomic(record.path, _json(fields))
        except BaseException as error:
            record._forget(remove_files=True)
            if isinstance(error, DiskFullError):
                raise DiskFullError(folder, "--out") from error
            raise
        return record

    @classmethod
    def resume(cls, cfg: RunConfig, from_step: int) -> "RunRecord":
        """Reopen the record in `cfg.out_dir` as "running" again, for a run resumed at step `from_step`;
        its files stay, its earlier stretches are kept in its "segments"."""
        folder = Path(cfg.out_dir)
        earlier = read_record(folder) or {}
        fields = {key: value for key, value in earlier.items() if key not in ("error", "ended")}
        fields.update(state="running", config=asdict(cfg), process=this_process(), resumed=now(), segment_start=from_step)
        record = cls(folder, fields, made_folder=False)
        with _running_lock:
            _running.add(_key(folder))
        try:
            write_text_atomic(record.path, _json(fields))
        except BaseException:
            record._forget(remove_files=False)
            raise
        return record

    def checkpoint(self, save_adapter: Callable[[], None], step: int, **progress: Any) -> bool:
        """Save the adapter (`save_adapter`) and note it and `progress` in the record; at most every
        CHECKPOINT_EVERY_S (the first always). Returns whether it saved."""
        clock = time.monotonic()
        if self._last_checkpoint is not None and clock - self._last_checkpoint < CHECKPOINT_EVERY_S:
            return False
        save_adapter()
        self._last_checkpoint = clock
        self.fields.update(progress, checkpoint_step=step, updated=now())
        write_text_atomic(self.path, _json(self.fields))
        return True

    def adapter_saved(self, step: int) -> None:
        """Note that the adapter on disk is now step `step`'s (said if the run fails after)."""
        self.fields["checkpoint_step"] = step

    def finish(self, fields: dict[str, Any]) -> Path:
        """Close the record as "stopped" or "done" (as `fields["stopped"]` says) with the run's full `fields`."""
        keep = {key: self.fields[key] for key in ("created", "process", "reproduce", "resumed") if key in self.fields}
        state = "stopped" if fields["stopped"] else "done"
        closed = {**fields, **keep, "state": state, "segments": _segments(self.fields, fields.get("steps"), state), "ended": now()}
        write_text_atomic(self.path, _json(closed))  # if this fails, the failure is recorded from the smaller fields so far
        self.fields = closed
        self._forget(remove_files=False)
        return self.path

    @contextlib.contextmanager
    def closed_on_failure(self) -> Iterator[None]:
        """Inside: an exception closes the record ("failed", or "interrupted" for Ctrl-C or an abandoned
        generator) and propagates, a full disk with the folder and the option to change."""
        try:
            yield
        except BaseException as error:
            reported = self._reported(error)
            self._close_after(reported)
            if reported is error:
                raise
            raise reported from error

    def _reported(self, error: BaseException) -> BaseException:
        if isinstance(error, DiskFullError) and error.option is None:
            folder = Path(str(error.folder))
            if folder.resolve().is_relative_to(self.folder.resolve()):
                return DiskFullError(self.folder, "--out")
            return DiskFullError(folder, "--cache")  # the only other folder a run writes: its data
        if isinstance(error, TrainingDiverged):
            return TrainingDiverged(f"{error}{self._kept()}")
        return error

    def _close_after(self, error: BaseException) -> None:
        if isinstance(error, Cancelled) and "checkpoint_step" not in self.fields:
            self._forget(remove_files=True)  # stopped while fetching the data: nothing was made
            return
        interrupted = isinstance(error, (KeyboardInterrupt, GeneratorExit, SystemExit))
        message = one_line(str(error)) or type(error).__name__
        if not isinstance(error, TrainingDiverged):  # its message says so already
            message += self._kept()
        state = "interrupted" if interrupted else "failed"
        self.fields.update(state=state, error=message, ended=now(), segments=_segments(self.fields, self.fields.get("checkpoint_step"), state))
        if is_out_of_memory(error):
            self.fields["out_of_memory"] = True  # a failure that can be resumed (with a smaller batch, on another device)
        try:
            write_text_atomic(self.path, _json(self.fields))
        except OSError:
            # Not even the record fits (a full disk): remove what this run wrote rather than leave
            # a "running" record and an adapter no record describes.
            self._forget(remove_files=True)
            return
        self._forget(remove_files=False)

    def _kept(self) -> str:
        step = self.fields.get("checkpoint_step")
        return adapter_kept(step, self.folder) if step is not None else ""

    def _forget(self, remove_files: bool) -> None:
        with _running_lock:
            _running.discard(_key(self.folder))
        if remove_files:
            _remove_run_files(self.folder)
            if self._made_folder:
                with contextlib.suppress(OSError):
                    self.folder.rmdir()  # only when empty: nothing but this run's files is ever removed


def _interrupted(folder: Path, record: dict[str, Any]) -> dict[str, Any]:
    process = record.get("process") or {}
    step = record.get("checkpoint_step")
    kept = adapter_kept(step, folder) if step is not None else "; no adapter had been saved yet"
    settled = {
        **record,
        "state": "interrupted",
        "segments": _segments(record, step, "interrupted"),
        "error": f"the process running it (pid {process.get('pid')} on {process.get('host')}) ended before the run did: killed, or the machine stopped{kept}",
    }
    for name, where in _run_files(folder):
        for leftover in temporary_files(where, name):  # half-written by the killed process
            leftover.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # read-only or full: still reported as interrupted
        write_text_atomic(folder / RECORD_FILE, _json(settled))
    return settled


def _segments(fields: dict[str, Any], end_step: Any, ended: str) -> list[dict[str, Any]]:
    """The run's stretches (`segments`), the one going now ended (as `ended`) at `end_step`: each began at step 0 or where it was resumed."""
    return [*fields.get("segments", []), {"start_step": fields.get("segment_start", 0), "end_step": end_step, "ended": ended}]


def adapter_kept(step: Any, folder: Path) -> str:
    return f"; the adapter saved at step {step} is kept in {folder / ADAPTER_DIR}"


def _still_running(folder: Path, process: Any) -> bool:
    if not isinstance(process, dict):
        return False
    if process.get("host") != socket.gethostname():
        return True  # another machine's process: nothing here can tell whether it is alive
    pid = process.get("pid")
    if pid == os.getpid():
        with _running_lock:
            return _key(folder) in _running
    return isinstance(pid, int) and process_alive(pid, process.get("started"))


def process_alive(pid: int, started: Any) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    except OSError:
        return False
    # The same pid may belong to a newer process: compare start times where the OS tells them.
    return started is None or _start_ticks(pid) in (None, started)


def this_process() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": _start_ticks(os.getpid())}


def _start_ticks(pid: int) -> int | None:
    """When process `pid` started, in clock ticks since boot (Linux's /proc); None elsewhere."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rpartition(")")[2].split()[19])  # field 22, counted after the command name
    except (OSError, ValueError, IndexError):
        return None


def _remove_run_files(folder: Path) -> None:
    """Remove the files a run writes into `folder` (and their leftover temporaries), nothing else."""
    for name, where in _run_files(folder):
        for path in [where / name, *temporary_files(where, name)]:
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
    for adapter in (ADAPTER_DIR, BEST_ADAPTER_DIR):
        with contextlib.suppress(OSError):
            (folder / adapter).rmdir()  # only when empty


def remove_best_adapter(folder: Path) -> None:
    """Remove the run's best adapter (an earlier stretch's, when the run resumed): its last is now its best."""
    for name in ADAPTER_FILES:
        (folder / BEST_ADAPTER_DIR / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        (folder / BEST_ADAPTER_DIR).rmdir()


def _run_files(folder: Path) -> list[tuple[str, Path]]:
    """(name, folder holding it) of every file a run writes into `folder`."""
    return [
        (RECORD_FILE, folder),
        (PLOT_FILE, folder),
        (BASELINE_FILE, folder),
        (CHECKPOINT_FILE, folder),
        *((name, folder / adapter) for adapter in (ADAPTER_DIR, BEST_ADAPTER_DIR) for name in ADAPTER_FILES),
    ]


def _key(folder: Path) -> str:
    return str(Path(folder).resolve())


def _json(fields: dict[str, Any]) -> str:
    return strict_json.dumps(fields, indent=2, default=str) + "\n"
