"""TrainingJob: one background run, watched through snapshots, stoppable, failing visibly."""

import dataclasses
import time
from pathlib import Path

import pytest
from conftest import sms_zip_bytes

from engine.config import RunConfig
from engine.download import DownloadProgress
from engine.job import JobSnapshot, TrainingJob, format_seconds


def tiny_run(model: Path, tmp_path: Path, data: str | None, **train: object) -> RunConfig:
    cfg = RunConfig.from_preset("recommended", model=str(model), data=data, data_cache=str(tmp_path / "cache"), out_dir=str(tmp_path / "run"), device="cpu")
    return cfg.with_train(**{"epochs": 1, "max_steps": 12, "eval_freq": 5, "eval_iter": 2, **train})


def wait_for(job: TrainingJob, condition, timeout: float = 60.0) -> JobSnapshot:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snapshot = job.snapshot()
        if condition(snapshot):
            return snapshot
        time.sleep(0.02)
    raise AssertionError(f"condition not met in {timeout} s; last status: {job.snapshot().status}")


def test_idle_job_has_an_empty_snapshot() -> None:
    snapshot = TrainingJob().snapshot()
    assert (snapshot.state, snapshot.losses, snapshot.config, snapshot.running) == ("idle", (), None, False)
    assert snapshot.status == "ready: no run yet"
    with pytest.raises(dataclasses.FrozenInstanceError):
        snapshot.state = "running"  # type: ignore[misc]


def test_run_downloads_data_from_its_urls_trains_and_saves(tiny_model_dir: Path, tmp_path: Path, http_server) -> None:
    http_server.routes["/backup.zip"] = (200, sms_zip_bytes(), {})
    job = TrainingJob(data_urls=[http_server.url("/primary.zip"), http_server.url("/backup.zip")])
    assert job.start(tiny_run(tiny_model_dir, tmp_path, data=None))
    assert job.wait(120)
    snapshot = job.snapshot()

    assert snapshot.state == "done", snapshot.status
    assert http_server.hits == ["/primary.zip", "/backup.zip"]  # primary 404s, backup serves
    assert snapshot.download is not None and snapshot.download.status == "done"
    assert snapshot.data is not None and snapshot.data.balanced == 1494
    assert snapshot.step == snapshot.total_steps == 12
    batch = [row for row in snapshot.losses if row.split == "batch"]
    assert [row.step for row in batch] == list(range(1, 13))
    assert [row.examples_seen for row in batch] == [8 * step for step in range(1, 13)]
    # estimates after steps 1, 6 and 11 (the book's steps 0, 5, 10)
    assert [row.step for row in snapshot.losses if row.split == "validation"] == [1, 6, 11]
    assert [(row.epoch, row.split) for row in snapshot.accuracies] == [(0, "train"), (0, "validation"), (1, "train"), (1, "validation")]
    assert snapshot.baseline is not None
    assert set(snapshot.final) == {"train", "validation", "test"}
    assert snapshot.saved is not None and not snapshot.saved.stopped
    assert (snapshot.saved.adapter_dir / "adapter.safetensors").is_file() and snapshot.saved.record.is_file()
    assert snapshot.status.startswith("done: step 12/12 in ") and str(tmp_path / "run") in snapshot.status


def test_second_start_is_refused_and_stop_ends_within_a_step(tiny_model_dir: Path, tmp_path: Path, sms_zip: Path) -> None:
    job = TrainingJob()
    assert job.start(tiny_run(tiny_model_dir, tmp_path, str(sms_zip), epochs=50, max_steps=None))
    running = wait_for(job, lambda s: s.step >= 3)
    assert running.running and running.status.startswith(f"running: step {running.step}/")
    assert "epoch 1/50" in running.status and "ETA" in running.status

    assert not job.start(tiny_run(tiny_model_dir, tmp_path / "other", str(sms_zip)))
    assert job.snapshot().config == running.config  # the refused start changed nothing

    assert job.stop()
    assert job.wait(10)
    stopped = job.snapshot()
    assert stopped.state == "stopped" and stopped.step < stopped.total_steps
    assert stopped.final is None  # a stopped run skips the full evaluation
    assert stopped.saved is not None and stopped.saved.stopped and (stopped.saved.adapter_dir / "adapter.safetensors").is_file()
    assert stopped.status.startswith(f"stopped: step {stopped.step}/{stopped.total_steps} in ")
    assert not job.stop()  # nothing to stop any more


def test_failure_is_reported_and_the_job_can_start_again(tiny_model_dir: Path, tmp_path: Path, sms_zip: Path) -> None:
    job = TrainingJob()
    assert job.start(tiny_run(tmp_path / "no-such-model", tmp_path, str(sms_zip)))
    assert job.wait(60)
    failed = job.snapshot()
    assert failed.state == "failed" and "unknown model" in (failed.error or "")
    assert failed.status == f"failed: {failed.error}"

    assert job.start(tiny_run(tiny_model_dir, tmp_path, str(sms_zip), max_steps=2))
    assert job.wait(60)
    again = job.snapshot()
    assert again.state == "done" and again.error is None and again.step == 2


def test_status_while_downloading_names_the_source() -> None:
    idle = TrainingJob().snapshot()
    downloading = dataclasses.replace(idle, state="running", phase="downloading data", download=DownloadProgress("http://mirror/sms.zip", 250_000, None))
    assert downloading.status == "running: downloading data from http://mirror/sms.zip (0.2 MB)"
    assert dataclasses.replace(idle, state="stopped").status.startswith("stopped: before training in ")


@pytest.mark.parametrize(("seconds", "text"), [(0, "0:00"), (59.6, "1:00"), (61, "1:01"), (3725, "1:02:05")])
def test_format_seconds(seconds: float, text: str) -> None:
    assert format_seconds(seconds) == text
