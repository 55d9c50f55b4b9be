"""One run in a worker process of its own: `python -m engine.worker`, started by `LocalWorkers`.

A run in its own process can run out of memory or crash without taking the app down. The parent
sends the job as one frame on the worker's stdin; the worker sends back every event of the run and,
last, a `WorkerEnded`, as frames on its original stdout (library output printed to stdout is sent to
stderr instead, so it cannot corrupt a frame). Any frame on stdin afterwards, or stdin closing
because the parent went away, stops the run at its next step; it then saves like any stopped run.

A frame is an 8-byte little-endian length and a pickle: both ends are this same program.
"""

import contextlib
import os
import pickle
import struct
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, Literal

from engine.config import RunConfig
from engine.errors import Cancelled
from engine.failure import Failure, failure_of

FRAME_HEADER = struct.Struct("<Q")
DOING = {  # a phase, as the words of an out-of-memory message
    "starting": "preparing the data",
    "preparing data": "preparing the data",
    "loading model": "loading the model",
    "measuring baseline": "measuring the baseline accuracy",
    "training": "training",
    "final evaluation": "evaluating",
    "saving": "saving",
    "saved": "saving",
}


@dataclass(frozen=True)
class WorkerJob:
    config: RunConfig  # its device is the worker's own
    cores: tuple[int, ...] | None = None  # CPU cores the worker keeps to (None: all)
    weights_at: str | None = None  # a copy of the model's files on this machine (a Ray worker), see fine_tune


@dataclass(frozen=True)
class WorkerEnded:
    """A worker's last word about its run."""

    state: Literal["done", "stopped", "failed"]
    failure: Failure | None = None


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


def run_job(job: WorkerJob, stop: threading.Event, send: Callable[[object], None]) -> WorkerEnded:
    """Run the job's config, sending each event as it happens; never raises."""
    from engine.recorder import RunRecorder
    from engine.run import fine_tune

    pin_to_cores(job.cores)
    recorder = RunRecorder()

    def report(event: object) -> None:
        recorder.record(event)  # type: ignore[arg-type]
        send(event)

    try:
        for event in fine_tune(job.config, stop, on_download=report, weights_at=job.weights_at):
            report(event)
    except Cancelled:
        return WorkerEnded("stopped")
    except Exception as error:
        progress = recorder.progress()
        device = progress.model.device if progress.model else job.config.device
        return WorkerEnded("failed", failure_of(error, device, DOING[progress.phase]))
    saved = recorder.progress().saved
    return WorkerEnded("stopped" if saved is None or saved.stopped else "done")


def pin_to_cores(cores: tuple[int, ...] | None) -> None:
    """Keep this process (and PyTorch's threads) to its share of the CPU cores."""
    if not cores:
        return
    import torch

    if hasattr(os, "sched_setaffinity"):  # Linux; elsewhere the thread count alone shares the cores
        os.sched_setaffinity(0, cores)
    torch.set_num_threads(len(cores))


def watch_parent(commands: BinaryIO, stop: threading.Event) -> None:
    """Stop on the parent's word, or when the parent is gone (its end of stdin closes)."""
    commands.read(1)
    stop.set()


def main() -> int:
    frames = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    # Unbuffered: the watching thread may still be reading when the interpreter exits, and a
    # buffered reader's lock would then abort the exit.
    commands = os.fdopen(sys.stdin.fileno(), "rb", buffering=0, closefd=False)
    job = read_frame(commands)
    if not isinstance(job, WorkerJob):
        print("engine.worker: expected a job on stdin; this program is started by LoRA Lab", file=sys.stderr)
        return 2
    stop = threading.Event()
    threading.Thread(target=watch_parent, args=(commands, stop), name="parent-watch", daemon=True).start()
    lock = threading.Lock()

    def send(value: object) -> None:
        with lock:
            if stop.is_set() and frames.closed:
                return
            try:
                write_frame(frames, value)
            except (BrokenPipeError, ValueError):  # the parent is gone: finish the run quietly, as a stopped one
                stop.set()
                with contextlib.suppress(OSError, ValueError):  # closing flushes into the broken pipe again
                    frames.close()

    send(run_job(job, stop, send))
    with contextlib.suppress(OSError):
        frames.close()
    return 0


if __name__ == "__main__":
    # Run the module's canonical copy, so pickled classes are engine.worker's, not __main__'s.
    from engine.worker import main as worker_main

    sys.exit(worker_main())
