"""Where local workers go: a slot per GPU (pinned through CUDA_VISIBLE_DEVICES), else a share of the cores."""

import os

import pytest
import torch

from engine.errors import ConfigError
from engine.runs.local_workers import default_worker_count, local_slots, share_cores


@pytest.fixture
def two_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_one_worker_per_gpu_by_default_each_seeing_only_its_own(two_gpus: None) -> None:
    assert default_worker_count("auto") == default_worker_count("cuda") == 2
    slots = local_slots(None, "auto")
    assert [(s.name, s.device, dict(s.env), s.cores) for s in slots] == [
        ("cuda:0", "cuda", {"CUDA_VISIBLE_DEVICES": "0"}, None),
        ("cuda:1", "cuda", {"CUDA_VISIBLE_DEVICES": "1"}, None),
    ]


def test_more_workers_than_gpus_take_turns_and_a_named_gpu_takes_them_all(two_gpus: None) -> None:
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in local_slots(3, "cuda")] == ["0", "1", "0"]
    named = local_slots(2, "cuda:1")
    assert [(s.name, s.device, s.env["CUDA_VISIBLE_DEVICES"]) for s in named] == [("cuda:1", "cuda", "1")] * 2
    assert default_worker_count("cuda:1") == 1 and default_worker_count("cpu") == 1


def test_cpu_workers_share_the_cores_without_overlap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0, 1, 2, 3, 4}, raising=False)
    assert share_cores(2) == [(0, 1), (2, 3, 4)]
    assert share_cores(1) == [(0, 1, 2, 3, 4)]
    assert share_cores(7) == [(0,), (1,), (2,), (3,), (4,), (0,), (1,)]  # too few cores: a core each, shared
    assert [s.name for s in local_slots(2, "cpu")] == ["cpu 0-1", "cpu 2-4"]


@pytest.mark.parametrize("count", [0, -1, 2.5, 10_000])
def test_a_bad_worker_count_is_refused(count: object) -> None:
    with pytest.raises(ConfigError, match="--workers must be a whole number"):
        local_slots(count, "cpu")  # type: ignore[arg-type]
