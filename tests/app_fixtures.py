"""Launching LoRA Lab in-process on a free 127.0.0.1 port, for the gradio_client and browser tests."""

import contextlib
import shutil
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import app
from engine.config import LORA_TARGETS
from ui.controls import Controls
from ui.guards import upload_folder
from ui.lab import Lab
from ui.settings import AppSettings

SPAM = "URGENT! You have won a 1 week FREE membership in our £100,000 prize Jackpot! Txt CLAIM to 81010"


@dataclass(frozen=True)
class RunningApp:
    url: str
    lab: Lab
    demo: Any  # the launched gr.Blocks


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def running_app(settings: AppSettings, auth: tuple[str, str] | None = None, lab: Lab | None = None) -> Iterator[RunningApp]:
    """The app launched as `python app.py` launches it, in this process; its running runs are stopped afterwards.

    `lab`: the app state a test already made for this runs folder (one app owns a folder), launched with `settings`' limits.
    """
    owned = lab is None
    lab = lab or Lab(settings)
    demo = app.build_ui(settings, lab)
    url = app.launch(demo, settings, "127.0.0.1", free_port(), auth=auth)
    try:
        yield RunningApp(url, lab, demo)
    finally:
        if owned:
            lab.close()
        demo.close()


def as_upload(path: Path, name: str | None = None) -> str:
    """A copy of `path` where Gradio keeps uploaded files: what a handler receives after a visitor's upload."""
    folder = upload_folder() / f"lora-lab-test-{uuid.uuid4().hex}"
    folder.mkdir(parents=True)
    target = folder / (name or path.name)
    shutil.copyfile(path, target) if path.is_file() else shutil.copytree(path, target)
    return str(target)


def upload_bytes(data: bytes, name: str) -> str:
    """`data` as an uploaded file called `name`."""
    folder = upload_folder() / f"lora-lab-test-{uuid.uuid4().hex}"
    folder.mkdir(parents=True)
    (folder / name).write_bytes(data)
    return str(folder / name)


def train_controls(model: str, **changes: Any) -> Controls:
    """The Train button's inputs as the widgets send them by default (numbers as floats)."""
    values: dict[str, Any] = dict(
        model=model,
        preset_name="recommended",
        rank=16.0,
        alpha=16.0,
        scaling="alpha_over_rank",
        targets=list(LORA_TARGETS),
        train_head=False,
        pooling="last_token",
        padding="batch",
        lr=8e-4,
        epochs=1.0,
        batch_size=8.0,
        max_steps=12.0,
        eval_freq=5.0,
        live_metrics=True,
    )
    return Controls(**{**values, **changes})


@pytest.fixture
def settings(tiny_model_dir: Path, tmp_path: Path) -> AppSettings:
    """The app on the tiny model, with its runs and data cache in a fresh folder."""
    return AppSettings(model=str(tiny_model_dir), device="cpu", out=tmp_path / "runs", cache=tmp_path / "cache")


@pytest.fixture
def lab(settings: AppSettings) -> Iterator[Lab]:
    lab = Lab(settings)
    yield lab
    lab.close()


@pytest.fixture
def trained_lab(lab: Lab, adapter_dir: Path) -> Lab:
    """A lab whose runs folder holds a finished run: Classify works without training first."""
    run = lab.settings.out / "20250101-000000"
    shutil.copytree(adapter_dir, run / "adapter")
    shutil.copyfile(adapter_dir.parent / "run.json", run / "run.json")  # only a complete run's adapter is used by default
    return lab
