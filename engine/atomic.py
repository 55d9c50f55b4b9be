"""Atomic file writes: a reader, or a process killed mid-write, sees the old file or the new one.

Saved files get the usual mode (0o666 less the umask), and a full disk becomes a DiskFullError that
names the folder, with nothing half-written left behind.
"""

import contextlib
import errno
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from engine.errors import DiskFullError

TEMPORARY_SUFFIX = ".tmp"
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside `final`; on success fsync it and rename it over `final`.

    On an exception the temporary file is removed and `final` is left untouched. Write into the
    temporary (open it): a writer that replaces it with its own file would give `final` that file's mode.

    Raises:
        DiskFullError: the disk (or quota) ran out while writing; names `final`'s folder.
    """
    final = Path(final)
    with disk_full_named(final.parent):
        final.parent.mkdir(parents=True, exist_ok=True)
        temporary = _create_temporary(final)
    try:
        with disk_full_named(final.parent):
            yield temporary
            with open(temporary, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(temporary, final)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_directory(final.parent)


def write_bytes_atomic(final: Path, data: bytes) -> None:
    with atomic_path(final) as temporary:
        temporary.write_bytes(data)


def write_text_atomic(final: Path, text: str) -> None:
    write_bytes_atomic(final, text.encode("utf-8"))


def is_disk_full(error: BaseException) -> bool:
    if isinstance(error, OSError):
        return error.errno in _DISK_FULL
    # Writers that wrap the OS error in their own type (safetensors' SafetensorError) keep its text.
    return isinstance(error, Exception) and "No space left on device" in str(error)


@contextlib.contextmanager
def disk_full_named(folder: Path) -> Iterator[None]:
    """Inside: running out of space raises DiskFullError naming `folder` (other errors pass unchanged)."""
    try:
        yield
    except Exception as error:
        if isinstance(error, DiskFullError) or not is_disk_full(error):
            raise
        raise DiskFullError(folder) from error


def temporary_files(folder: Path, name: str) -> list[Path]:
    """The temporaries `atomic_path` leaves for `folder / name` when its process is killed mid-write."""
    return sorted(Path(folder).glob(f".{name}.*{TEMPORARY_SUFFIX}"))


def _create_temporary(final: Path) -> Path:
    """A new empty file beside `final`, created with mode 0o666 so that the kernel applies the umask
    (mkstemp would make it 0600)."""
    while True:
        temporary = final.with_name(f".{final.name}.{secrets.token_hex(6)}{TEMPORARY_SUFFIX}")
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return temporary


def _fsync_directory(directory: Path) -> None:
    # The rename is durable only once the directory entry is on disk; not every OS allows this.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
