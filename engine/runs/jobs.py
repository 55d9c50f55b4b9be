"""What a run's worker is given and what it says last, and the frames they travel in.

The scheduler, the local workers and the Ray tasks all speak these; the worker program
(`engine.runs.worker`) only runs them. Keeping them apart from that program means no module ever
takes a class from a process's `__main__`.

A frame is an 8-byte little-endian length and a pickle: both ends are this same package.
"""

import pickle
import struct
from dataclasses import dataclass
from typing import BinaryIO, Literal

from engine.config import RunConfig
from engine.failure import Failure

FRAME_HEADER = struct.Struct("<Q")


@dataclass(frozen=True)
class WorkerJob:
    config: RunConfig  # its device is the worker's own
    cores: tuple[int, ...] | None = None  # CPU cores the worker keeps to (None: all)
    weights_at: str | None = None  # a copy of the model's files on this machine (a Ray worker), see fine_tune
    resume: bool = False  # go on from the checkpoint in the config's out_dir (see fine_tune)


@dataclass(frozen=True)
class WorkerEnded:
    """A worker's last word about its run."""

    state: Literal["done", "stopped", "failed"]
    failure: Failure | None = None  # why it failed; on a stopped run, why the stop came by force (RayRun)


def write_frame(stream: BinaryIO, value: object) -> None:
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(FRAME_HEADER.pack(len(data)) + data)
    stream.flush()


def read_frame(stream: BinaryIO) -> object | None:
    """The next value, or None at the end of the stream (including a frame cut short)."""
    header = _read_exactly(stream, FRAME_HEADER.size)
    if header is None:
        return None
    data = _read_exactly(stream, FRAME_HEADER.unpack(header)[0])
    return None if data is None else pickle.loads(data)


def _read_exactly(stream: BinaryIO, size: int) -> bytes | None:
    """`size` bytes (a pipe may hand them over in pieces), or None if the stream ends first."""
    parts, missing = [], size
    while missing:
        part = stream.read(missing)
        if not part:
            return None
        parts.append(part)
        missing -= len(part)
    return b"".join(parts)
