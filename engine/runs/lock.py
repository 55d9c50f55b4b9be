"""One owner per runs folder: the app (or `engine sweep`) holds a lock on it for its whole life.

Two owners of one folder would each rewrite queue.json from their own memory and mark the other's
running run as interrupted; so a second one refuses at once, naming the folder and the process
that holds it. The lock is `fcntl.flock` on RUNS/.lora-lab.lock, which the kernel releases when
its process dies however it dies: a lock left by a killed process is simply taken over. Where
fcntl is missing (Windows) the file itself is the lock (created exclusively), and a file whose
process is gone is taken over.
"""

import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from engine.atomic import disk_full_named
from engine.errors import DiskFullError, LoRALabError
from engine.runs.record import process_alive, this_process

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".lora-lab.lock"


class FolderInUse(LoRALabError):
    """Another LoRA Lab (an app, a sweep) owns this runs folder."""


class RunsFolderLock:
    """Held from `take` until `release` (or the process's end); `holder` says who holds it."""

    def __init__(self, path: Path, fd: int | None) -> None:
        self.path = path
        self._fd = fd  # the open, flocked file; None with the exclusive-file fallback

    @classmethod
    def take(cls, root: Path, purpose: str) -> "RunsFolderLock":
        """Lock `root` (made if missing) for this process; `purpose` says who holds it ("the app", "a sweep").

        Raises:
            FolderInUse: another live process holds it.
            DiskFullError: the lock file cannot even be written.
        """
        root = Path(root)
        try:
            with disk_full_named(root):
                root.mkdir(parents=True, exist_ok=True)
                return cls._flocked(root, purpose) if fcntl is not None else cls._exclusive(root, purpose)
        except DiskFullError as error:
            raise DiskFullError(root, "--out") from error

    @classmethod
    def _flocked(cls, root: Path, purpose: str) -> "RunsFolderLock":
        path = root / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _in_use(root, _read_holder(path)) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            os.ftruncate(fd, 0)
            os.write(fd, _holder_text(purpose))
        except BaseException:
            os.close(fd)  # closing releases the lock
            raise
        return cls(path, fd)

    @classmethod
    def _exclusive(cls, root: Path, purpose: str) -> "RunsFolderLock":
        path = root / LOCK_FILE
        for _ in range(2):  # once more after taking over a dead process's file
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                holder = _read_holder(path)
                if _alive(holder):
                    raise _in_use(root, holder) from None
                path.unlink(missing_ok=True)  # its process is gone
                continue
            try:
                os.write(fd, _holder_text(purpose))
            finally:
                os.close(fd)
            return cls(path, None)
        raise _in_use(root, _read_holder(path))

    def release(self) -> None:
        """Give the folder up (a second call does nothing)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)  # no stale holder is ever shown
            os.close(self._fd)  # closing releases the flock
            self._fd = None
        elif fcntl is None and _read_holder(self.path).get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)


def _holder_text(purpose: str) -> bytes:
    return json.dumps({**this_process(), "purpose": purpose, "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode()


def _read_holder(path: Path) -> dict[str, Any]:
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _alive(holder: dict[str, Any]) -> bool:
    pid = holder.get("pid")
    if holder.get("host") not in (None, socket.gethostname()):
        return True  # another machine's process: nothing here can tell, so it is respected
    return isinstance(pid, int) and process_alive(pid, holder.get("started"))


def _in_use(root: Path, holder: dict[str, Any]) -> FolderInUse:
    who = f"{holder.get('purpose', 'another LoRA Lab')} (process {holder.get('pid', '?')} on {holder.get('host', '?')}, since {holder.get('since', '?')})"
    return FolderInUse(
        f"the runs folder {root} is in use by {who}: stop that one first, or give this one another folder with --out; "
        "two apps on one folder would overwrite each other's queue"
    )
