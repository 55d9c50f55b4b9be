"""One run in a worker process of its own: `python -m engine.runs.worker`, started by `LocalWorkers`.

A run in its own process can run out of memory or crash without taking the app down. The parent
sends the job as one frame on the worker's stdin; the worker sends back every event of the run and,
last, a `WorkerEnded`, as frames on its original stdout (library output printed to stdout is sent to
stderr instead, so it cannot corrupt a frame). Any frame on stdin afterwards, or stdin closing
because the parent went away, stops the run at its next step; it then saves like any stopped run.

The job, the last word and the frames are engine.runs.jobs's.
"""

import contextlib
import os
import sys
import threading
from collections.abc import Callable
from typing import BinaryIO

from engine.errors import Cancelled
from engine.failure import failure_of
from engine.runs.jobs import WorkerEnded, WorkerJob, read_frame, write_frame


def run_job(job: WorkerJob, stop: threading.Event, send: Callable[[object], None]) -> WorkerEnded:
    """Run the job's config, sending each event as it happens; never raises."""
    from engine.runs.recorder import PHASE_WORDS, RunRecorder
    from engine.runs.run import fine_tune

    pin_to_cores(job.cores)
    recorder = RunRecorder(job.config.train.eval_freq)

    def report(event: object) -> None:
        recorder.record(event)  # type: ignore[arg-type]
        send(event)

    try:
        for event in fine_tune(job.config, stop, on_download=report, weights_at=job.weights_at, resume=job.resume):
            report(event)
    except Cancelled:
        return WorkerEnded("stopped")
    except Exception as error:
        progress = recorder.progress()
        device = progress.model.device if progress.model else job.config.device
        return WorkerEnded("failed", failure_of(error, device, PHASE_WORDS[progress.phase]))
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
        print("engine.runs.worker: expected a job on stdin; this program is started by LoRA Lab", file=sys.stderr)
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
    # Run the module's canonical copy, so pickled classes are engine.runs.worker's, not __main__'s.
    from engine.runs.worker import main as worker_main

    sys.exit(worker_main())
