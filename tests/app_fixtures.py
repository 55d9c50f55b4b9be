"""Launching LoRA Lab in-process on a free 127.0.0.1 port, for the gradio_client and browser tests."""

import contextlib
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import app


@dataclass(frozen=True)
class RunningApp:
    url: str
    lab: app.Lab


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def running_app(settings: app.AppSettings) -> Iterator[RunningApp]:
    """The app launched as `python app.py` launches it, in this process; its job is stopped afterwards."""
    lab = app.Lab(settings)
    demo = app.build_ui(settings, lab)
    url = app.launch(demo, settings, "127.0.0.1", free_port(), block=False)
    try:
        yield RunningApp(url, lab)
    finally:
        lab.job.stop()
        lab.job.wait(30)
        demo.close()
