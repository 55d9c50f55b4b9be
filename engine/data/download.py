"""Streamed HTTP downloads with a fallback source, validation, progress events and atomic writes.

The network is read in a helper thread and the caller's thread writes the file: the caller hears
from the download (`on_progress`) at least every HEARTBEAT_S seconds, whether bytes arrive or not,
so a Stop acts at once however slow or silent the server is.
"""

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import requests
import urllib3

from engine.atomic import atomic_path
from engine.errors import DiskFullError, DownloadError

log = logging.getLogger(__name__)

CHUNK_BYTES = 64 * 1024  # at most this much per read; a slow link gives whatever has arrived
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 30.0  # a server silent this long mid-transfer counts as failed
# One source may take this long in all, however it trickles (one byte every few seconds never trips the
# read timeout): then the next source is tried. The SMS zip is 0.2 MB: 120 s allows 2 KB/s.
SOURCE_DEADLINE_S = 120.0
HEARTBEAT_S = 0.2  # the longest on_progress stays silent while a download runs
QUEUED_CHUNKS = 16  # read ahead of the writer at most this many chunks


@dataclass(frozen=True)
class DownloadProgress:
    """Reported while bytes arrive, and once when a source fails or succeeds."""

    url: str
    received: int
    total: int | None  # None when the server sent no Content-Length
    status: str = "downloading"  # "downloading", "failed: <reason>", "done"


ProgressCallback = Callable[[DownloadProgress], None]


def download_first_valid(
    urls: Sequence[str],
    destination: Path,
    validate: Callable[[Path], None],
    on_progress: ProgressCallback | None = None,
    max_bytes: int = 100 * 1024 * 1024,
    timeout: tuple[float, float] | None = None,
    deadline_s: float = SOURCE_DEADLINE_S,
) -> str:
    """Download the first URL that yields a valid file into `destination` and return that URL.

    Each source is streamed to a temporary file beside `destination`, checked by `validate`
    (which raises ValueError on bad content), and only then renamed into place: a failure
    never leaves a partial file that looks complete. A source still sending after `deadline_s`
    seconds counts as failed, like one that does not answer. `on_progress` is called at least every
    HEARTBEAT_S seconds and may raise engine.errors.Cancelled to stop the download; the partial
    file is removed.

    Raises:
        DownloadError: every URL failed; the message lists why each did.
        DiskFullError: the destination's disk is full (another source would not help).
    """
    timeout = timeout or (CONNECT_TIMEOUT_S, READ_TIMEOUT_S)
    failures: list[str] = []
    for url in urls:
        try:
            with atomic_path(destination) as temporary:
                _stream(url, temporary, on_progress, max_bytes, timeout, deadline_s)
                validate(temporary)
        except DiskFullError:
            raise
        except (requests.RequestException, OSError, ValueError) as error:
            reason = _describe(error)
            log.warning("download from %s failed: %s", url, reason)
            failures.append(f"{url}: {reason}")
            if on_progress:
                on_progress(DownloadProgress(url, 0, None, f"failed: {reason}"))
            continue
        if on_progress:
            size = destination.stat().st_size
            on_progress(DownloadProgress(url, size, size, "done"))
        return url
    raise DownloadError(
        "could not download from any source (" + "; ".join(failures) + "). "
        "Check the network, or download the file elsewhere and pass its path instead."
    )


def _stream(
    url: str,
    target: Path,
    on_progress: ProgressCallback | None,
    max_bytes: int,
    timeout: tuple[float, float],
    deadline_s: float,
) -> None:
    deadline = time.monotonic() + deadline_s
    transfer = _Transfer(url, timeout)
    transfer.start()
    try:
        total: int | None = None
        received = 0
        with open(target, "wb") as handle:
            while (item := transfer.next(HEARTBEAT_S)) is not _Transfer.END:
                if time.monotonic() > deadline:
                    raise ValueError(f"too slow: {received:,} bytes in {deadline_s:g} s, the most one source may take")
                if isinstance(item, _Headers):
                    total = item.content_length
                    if total is not None and total > max_bytes:
                        raise ValueError(f"the server offers {total:,} bytes, over the {max_bytes:,}-byte limit")
                elif isinstance(item, bytes):
                    received += len(item)
                    if received > max_bytes:
                        raise ValueError(f"the download exceeded the {max_bytes:,}-byte limit")
                    handle.write(item)
                if on_progress:  # after a chunk, or HEARTBEAT_S without one
                    on_progress(DownloadProgress(url, received, total))
        if total is not None and received != total:
            raise ValueError(f"connection closed after {received:,} of {total:,} bytes")
    finally:
        transfer.cancel()


@dataclass(frozen=True)
class _Headers:
    content_length: int | None


class _Transfer(threading.Thread):
    """Reads one URL into a bounded queue: its headers, then its chunks, then END (or the error that ended it)."""

    END = object()

    def __init__(self, url: str, timeout: tuple[float, float]) -> None:
        super().__init__(name="lora-lab-download", daemon=True)
        self._url, self._timeout = url, timeout
        self._items: queue.Queue = queue.Queue(maxsize=QUEUED_CHUNKS)
        self._cancelled = threading.Event()
        self._response: requests.Response | None = None

    def run(self) -> None:
        try:
            with requests.get(self._url, stream=True, timeout=self._timeout) as response:
                self._response = response
                response.raise_for_status()
                length = response.headers.get("Content-Length")
                if not self._put(_Headers(int(length) if length is not None else None)):
                    return
                # read1: whatever has arrived (up to a chunk), rather than waiting for a full chunk on a slow link.
                while chunk := response.raw.read1(CHUNK_BYTES, decode_content=True):
                    if not self._put(chunk):
                        return
            self._put(self.END)
        except urllib3.exceptions.HTTPError as error:  # read1 bypasses requests, which would wrap these
            self._put(requests.ConnectionError(error))
        except BaseException as error:  # handed to the caller's thread, which raises it
            self._put(error)

    def next(self, wait_s: float) -> object:
        """The next item, None after `wait_s` without one; raises the error that ended the transfer."""
        try:
            item = self._items.get(timeout=wait_s)
        except queue.Empty:
            return None
        if isinstance(item, BaseException):
            raise item
        return item

    def cancel(self) -> None:
        """Stop reading: wakes a read blocked on a silent server (the thread then ends on its own)."""
        self._cancelled.set()
        if self._response is not None:
            with contextlib.suppress(Exception):
                self._response.raw.shutdown()

    def _put(self, item: object) -> bool:
        while not self._cancelled.is_set():
            try:
                self._items.put(item, timeout=HEARTBEAT_S)
                return True
            except queue.Full:
                continue
        return False


def _describe(error: Exception) -> str:
    if isinstance(error, requests.HTTPError) and error.response is not None:
        return f"HTTP {error.response.status_code}"
    # Mid-stream, requests wraps urllib3's read timeout in a ConnectionError.
    if isinstance(error, requests.Timeout) or "timed out" in str(error).lower():
        return "timed out"
    if isinstance(error, requests.ConnectionError):
        return "could not connect"
    return str(error)
