"""Streamed HTTP downloads with a fallback source, validation, progress events and atomic writes."""

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import requests

from engine.atomic import atomic_path
from engine.errors import DownloadError

log = logging.getLogger(__name__)

CHUNK_BYTES = 64 * 1024
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 30.0  # a server silent this long mid-transfer counts as failed


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
) -> str:
    """Download the first URL that yields a valid file into `destination` and return that URL.

    Each source is streamed to a temporary file beside `destination`, checked by `validate`
    (which raises ValueError on bad content), and only then renamed into place: a failure
    never leaves a partial file that looks complete. `on_progress` may raise
    engine.errors.Cancelled to stop the download; the partial file is removed.

    Raises:
        DownloadError: every URL failed; the message lists why each did.
    """
    timeout = timeout or (CONNECT_TIMEOUT_S, READ_TIMEOUT_S)
    failures: list[str] = []
    for url in urls:
        try:
            with atomic_path(destination) as temporary:
                _stream(url, temporary, on_progress, max_bytes, timeout)
                validate(temporary)
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
) -> None:
    with requests.get(url, stream=True, timeout=timeout) as response:
        response.raise_for_status()
        total = int(response.headers["Content-Length"]) if "Content-Length" in response.headers else None
        if total is not None and total > max_bytes:
            raise ValueError(f"the server offers {total:,} bytes, over the {max_bytes:,}-byte limit")
        received = 0
        with open(target, "wb") as handle:
            for chunk in response.iter_content(CHUNK_BYTES):
                received += len(chunk)
                if received > max_bytes:
                    raise ValueError(f"the download exceeded the {max_bytes:,}-byte limit")
                handle.write(chunk)
                if on_progress:
                    on_progress(DownloadProgress(url, received, total))
        if total is not None and received != total:
            raise ValueError(f"connection closed after {received:,} of {total:,} bytes")


def _describe(error: Exception) -> str:
    if isinstance(error, requests.HTTPError) and error.response is not None:
        return f"HTTP {error.response.status_code}"
    # Mid-stream, requests wraps urllib3's read timeout in a ConnectionError.
    if isinstance(error, requests.Timeout) or "timed out" in str(error).lower():
        return "timed out"
    if isinstance(error, requests.ConnectionError):
        return "could not connect"
    return str(error)
