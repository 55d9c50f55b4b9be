"""The space uploads take on the server, counted as the bytes arrive.

Every upload is charged for the bytes actually received, while they stream in (so a body without
Content-Length, a Content-Length that lies, or many slow uploads at once cannot pass the limit),
and its files are held in a ledger until they are deleted: by the app once read or refused, or by
the hourly sweep. Each file is charged at least a disk block, and the number of files held is
bounded too, so thousands of tiny files cannot fill the disk's entries either. Every step is O(1)
per upload: nothing stats the files held.

A process has one upload folder, so every ledger in it hears of a deleted upload (`forget_upload`).
"""

import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

FILE_FLOOR_BYTES = 4096  # what even an empty file costs on disk: one block

_LEDGERS: "weakref.WeakSet[UploadSpace]" = weakref.WeakSet()


def megabytes(n: int) -> str:
    return f"{n / 1024**2:,.1f}".removesuffix(".0") + " MB"


@dataclass(frozen=True)
class SpaceLimits:
    space_bytes: int  # all uploads kept at once, all visitors together
    files_per_upload: int  # files (parts) in one upload request
    files_held: int  # files kept at once, all visitors together
    lifetime_s: int  # a held file is deleted once this old (see the sweep)...
    sweep_s: int  # ...by the sweep that runs this often: gone `lifetime_s + sweep_s` after it arrived, at the latest


class UploadSpace:
    """The uploads held and arriving, against their limits; thread-safe (the event loop and the handlers' threads use it)."""

    def __init__(self, limits: SpaceLimits) -> None:
        self.limits = limits
        self._lock = threading.Lock()
        self._held: OrderedDict[str, tuple[int, float]] = OrderedDict()  # path -> (bytes charged, arrival), oldest first
        self._held_bytes = 0
        self._arriving_bytes = 0
        _LEDGERS.add(self)

    def used(self) -> tuple[int, int]:
        """(bytes held, bytes arriving now)."""
        with self._lock:
            self._expire()
            return self._held_bytes, self._arriving_bytes

    def held_files(self) -> int:
        with self._lock:
            self._expire()
            return len(self._held)

    def admit(self, declared: int | None) -> "Arrival | str":
        """An upload about to stream in, announcing `declared` bytes (None: it does not say): its Arrival, or why it is refused.

        What it announces is not set aside for it (an upload that announces much and sends nothing would
        hold the space for everyone): it is refused at once if that would not fit now, then charged as it arrives.
        """
        with self._lock:
            self._expire()
            if len(self._held) >= self.limits.files_held:
                return f"The server holds {len(self._held):,} uploaded files, its limit of {self.limits.files_held:,}. {self._when_deleted()}"
            if declared is not None and not self._fits(declared):
                return self._full(f"this upload ({megabytes(declared)})")
            return Arrival(self)

    def hold(self, paths: Iterable[str], received: int) -> bool:
        """Hold the files an upload made, charged its `received` bytes; False (nothing held) past the files limit."""
        paths = list(dict.fromkeys(str(Path(p).resolve()) for p in paths))
        if not paths:
            return True
        share = max(received // len(paths), FILE_FLOOR_BYTES)
        now = time.monotonic()
        with self._lock:
            if len(self._held) + sum(path not in self._held for path in paths) > self.limits.files_held:
                return False
            for path in paths:
                self._release(path)  # the same content under the same name lands on the same path: charged once
                self._held[path] = (share, now)
                self._held_bytes += share
            return True

    def files_full(self) -> str:
        return f"The server holds {self.held_files():,} uploaded files, its limit of {self.limits.files_held:,}. {self._when_deleted()}"

    def is_held(self, path: str) -> bool:
        with self._lock:
            return str(Path(path).resolve()) in self._held

    def forget(self, path: str) -> None:
        """A held file was deleted: its bytes are free again."""
        with self._lock:
            self._release(str(Path(path).resolve()))

    def _release(self, path: str) -> None:
        charged = self._held.pop(path, None)
        if charged is not None:
            self._held_bytes -= charged[0]

    def _expire(self) -> None:
        """Drop the files the sweep has deleted by now (oldest first: amortised O(1))."""
        cutoff = time.monotonic() - self.limits.lifetime_s - self.limits.sweep_s
        while self._held:
            path, (charged, arrived) = next(iter(self._held.items()))
            if arrived > cutoff:
                break
            self._held.popitem(last=False)
            self._held_bytes -= charged

    def _fits(self, more: int) -> bool:
        return self._held_bytes + self._arriving_bytes + more <= self.limits.space_bytes

    def _full(self, what: str) -> str:
        taken = self._held_bytes + self._arriving_bytes
        return (
            f"The server's space for uploads is full: {what} and the {megabytes(taken)} uploaded recently would pass "
            f"its {megabytes(self.limits.space_bytes)} limit. {self._when_deleted()}"
        )

    def _when_deleted(self) -> str:
        return f"Uploads are deleted {self.limits.lifetime_s // 60} minutes after they arrive: try again later."


class Arrival:
    """One upload streaming in: its bytes are charged as they arrive, and freed (or held as files) when it ends."""

    def __init__(self, space: UploadSpace) -> None:
        self.space = space
        self.received = 0  # charged as arriving until `end`

    def receive(self, n: int) -> str | None:
        """`n` more bytes arrived: None, or why the upload must stop (the space is full)."""
        space = self.space
        with space._lock:
            if not space._fits(n):
                return space._full(f"this upload (more than {megabytes(self.received + n)})")
            space._arriving_bytes += n
            self.received += n
        return None

    def end(self) -> None:
        """Its bytes are no longer arriving (held as files by `hold`, or discarded)."""
        with self.space._lock:
            self.space._arriving_bytes -= self.received


def forget_upload(path: str | Path) -> None:
    """An uploaded file was deleted: every ledger of this process frees its bytes."""
    for ledger in list(_LEDGERS):
        ledger.forget(str(path))


def charge_written(path: str | Path) -> None:
    """A file the app wrote into the upload folder for a visitor (predictions): held and charged like an upload."""
    size = Path(path).stat().st_size
    for ledger in list(_LEDGERS):
        ledger.hold([str(path)], size)  # past the files limit it stays uncounted: the sweep deletes it all the same
