"""The app's devices at start: workers beyond the machine refused in one line (unless --force), and where
the app's own process runs the model (--app-device), learnt without initialising CUDA in the web process;
and the precision control, which the presets set and Start passes on."""

import os

import pytest
from app_fixtures import train_controls

import app
from engine.config import PRECISIONS
from engine.device import probed_facts
from ui.controls import PRESET_FIELDS, run_config
from ui.lab import Lab
from ui.model_tab import PRECISION_CHOICES, ModelTab
from ui.settings import AppSettings


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def test_more_workers_than_cores_are_refused_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        app.parse_args(["--device", "cpu", "--workers", str(cores() + 1)])
    assert exited.value.code == 2
    said = capsys.readouterr().err
    assert said.count("\n") == 1 and said.startswith(f"lora-lab: error: --workers {cores() + 1} is more than the {cores()} CPU cores")
    assert "--force" in said
    assert app.parse_args(["--device", "cpu", "--workers", str(cores() + 1), "--force"]).workers == cores() + 1


def test_the_app_device_is_the_cpu_unless_a_gpu_is_free_or_named(capsys: pytest.CaptureFixture[str]) -> None:
    args = app.parse_args(["--device", "cpu"])
    facts = probed_facts()
    assert args.app_device == ("cuda:0" if facts.cuda_count else "mps" if facts.mps else "cpu")  # runs on the CPU leave any GPU free
    assert app.parse_args([]).app_device == "cpu"  # by default a worker trains on every GPU (or on the CPU, where there is none)
    if not facts.cuda_count:
        with pytest.raises(SystemExit):
            app.parse_args(["--app-device", "cuda"])
        assert "no CUDA GPU is available" in capsys.readouterr().err
    assert AppSettings().app_device == "cpu"  # built without the command line: the CPU


def test_the_presets_set_the_precision_and_start_passes_it_on(lab: Lab) -> None:
    assert [value for _, value in PRECISION_CHOICES] == list(PRECISIONS)  # every choice the engine knows, in its words
    tab = ModelTab(lab)
    assert dict(zip(PRESET_FIELDS, tab.apply_preset("book"), strict=True))["precision"] == "fp32"
    assert dict(zip(PRESET_FIELDS, tab.apply_preset("recommended"), strict=True))["precision"] == "auto"
    assert run_config(lab.settings, train_controls(lab.settings.model, precision="bf16")).train.precision == "bf16"
