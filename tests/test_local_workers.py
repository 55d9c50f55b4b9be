"""Where local workers go: a slot per GPU (pinned through CUDA_VISIBLE_DEVICES), else a share of the cores;
how many a machine takes; where the app's own process runs the model; and all of it without PyTorch."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.device import DeviceFacts
from engine.errors import ConfigError
from engine.runs.local_workers import app_device, check_worker_count, default_worker_count, local_slots, share_cores

TWO_GPUS = DeviceFacts(cuda_count=2, cuda_bf16=True, cuda_names=("gpu a", "gpu b"))
MAC = DeviceFacts(mps=True, mps_bf16=True)
NO_GPU = DeviceFacts()
ROOT = Path(__file__).resolve().parents[1]


def test_one_worker_per_gpu_by_default_each_seeing_only_its_own() -> None:
    assert default_worker_count("auto", TWO_GPUS) == default_worker_count("cuda", TWO_GPUS) == 2
    slots = local_slots(None, "auto", TWO_GPUS)
    assert [(s.name, s.device, dict(s.env), s.cores) for s in slots] == [
        ("cuda:0", "cuda", {"CUDA_VISIBLE_DEVICES": "0"}, None),
        ("cuda:1", "cuda", {"CUDA_VISIBLE_DEVICES": "1"}, None),
    ]


def test_more_workers_than_gpus_take_turns_and_a_named_gpu_takes_them_all() -> None:
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in local_slots(3, "cuda", TWO_GPUS)] == ["0", "1", "0"]
    named = local_slots(2, "cuda:1", TWO_GPUS)
    assert [(s.name, s.device, s.env["CUDA_VISIBLE_DEVICES"]) for s in named] == [("cuda:1", "cuda", "1")] * 2
    assert default_worker_count("cuda:1", TWO_GPUS) == 1 and default_worker_count("cpu", TWO_GPUS) == 1


def test_cpu_workers_share_the_cores_without_overlap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0, 1, 2, 3, 4}, raising=False)
    assert share_cores(2) == [(0, 1), (2, 3, 4)]
    assert share_cores(1) == [(0, 1, 2, 3, 4)]
    assert share_cores(7) == [(0,), (1,), (2,), (3,), (4,), (0,), (1,)]  # too few cores: a core each, shared
    assert [s.name for s in local_slots(2, "cpu", NO_GPU)] == ["cpu 0-1", "cpu 2-4"]


@pytest.mark.parametrize("count", [0, -1, 2.5, 10_000, True])
def test_a_bad_worker_count_is_refused(count: object) -> None:
    with pytest.raises(ConfigError, match="--workers must be a whole number"):
        local_slots(count, "cpu", NO_GPU)  # type: ignore[arg-type]


def test_more_workers_than_cores_or_gpus_are_refused_in_one_line_unless_forced() -> None:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    check_worker_count(cores, "cpu", facts=NO_GPU)  # as many as the machine has: fine
    with pytest.raises(ConfigError, match=rf"^--workers {cores + 1} is more than the {cores} CPU cores .* add --force to start them anyway$") as refused:
        check_worker_count(cores + 1, "cpu", facts=NO_GPU)
    assert "\n" not in str(refused.value)
    check_worker_count(cores + 1, "cpu", force=True, facts=NO_GPU)
    check_worker_count(2, "auto", facts=TWO_GPUS)
    with pytest.raises(ConfigError, match=r"^--workers 3 is more than the 2 GPUs runs train on here"):
        check_worker_count(3, "auto", facts=TWO_GPUS)
    with pytest.raises(ConfigError, match=r"^--workers 2 is more than the 1 GPU \(cuda:1\) runs train on here"):
        check_worker_count(2, "cuda:1", facts=TWO_GPUS)
    with pytest.raises(ConfigError, match=r"^--workers 2 is more than the 1 GPU \(mps\)"):
        check_worker_count(2, "auto", facts=MAC)
    check_worker_count(None, "auto", facts=TWO_GPUS)  # the default, one per GPU, is never refused


def test_the_app_keeps_off_the_gpus_its_workers_train_on() -> None:
    assert app_device("auto", "auto", None, None, TWO_GPUS) == "cpu"  # a worker on each GPU
    assert app_device("auto", "auto", 1, None, TWO_GPUS) == "cuda:1"  # one worker, on GPU 0: GPU 1 is free
    assert app_device("auto", "cuda:0", 2, None, TWO_GPUS) == "cuda:1"
    assert app_device("auto", "cpu", None, None, TWO_GPUS) == "cuda:0"  # runs on the CPU leave every GPU free
    assert app_device("auto", "auto", 1, "auto", TWO_GPUS) == "cpu"  # a Ray cluster may train on this machine's GPUs
    assert app_device("auto", "auto", None, None, MAC) == "cpu" and app_device("auto", "cpu", None, None, MAC) == "mps"
    assert app_device("auto", "auto", None, None, NO_GPU) == "cpu"
    assert app_device("cuda:0", "auto", None, None, TWO_GPUS) == "cuda:0"  # told to: shared on purpose
    with pytest.raises(ConfigError, match="'cuda:2' requested but this machine has 2 CUDA GPU"):
        app_device("cuda:2", "auto", None, None, TWO_GPUS)


@pytest.mark.slow
def test_handing_out_runs_neither_imports_pytorch_nor_initialises_cuda() -> None:
    """The app's side of the workers learns the machine's devices from a probe in a process of its own."""
    script = (
        "import sys; from engine.runs.local_workers import LocalWorkers, local_slots, app_device; "
        "from engine.device import check_device, probed_facts; "
        "check_device('auto'); LocalWorkers(local_slots(None, 'auto')); app_device('auto'); "
        "print(probed_facts().cuda_count >= 0, 'torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300, check=True)
    assert done.stdout.split() == ["True", "False"]


def test_a_sweep_with_more_workers_than_cores_is_refused_before_any_data(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from engine.cli import main

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    code = main(["sweep", "--device", "cpu", "--workers", str(cores + 1), "--rank", "1", "2", "--cache", str(tmp_path / "cache"), "--out", str(tmp_path)])
    said = capsys.readouterr().err
    assert code == 2 and said.startswith(f"error: --workers {cores + 1} is more than the {cores} CPU cores") and said.count("\n") == 1
    assert not (tmp_path / "cache").exists()  # refused before preparing anything
