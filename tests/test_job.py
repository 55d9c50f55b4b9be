"""TrainingJob: one background run, watched through snapshots, stoppable, failing visibly."""

import dataclasses
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import SMS_ZIP, sms_zip_bytes

from engine.classifier import Classifier
from engine.config import RunConfig
from engine.download import DownloadProgress
from engine.job import JobSnapshot, TrainingJob, format_seconds
from engine.memory import ADVICE
from engine.train import StepDone


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
    # the full validation set at each estimate, kept for a page that attaches later
    assert [e.step for e in snapshot.live] == [0, 5, 10] and snapshot.live[-1].metrics.count == 149
    assert snapshot.class_names == ("ham", "spam")
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


# --- stopping in every phase, running out of memory ----------------------------------------------------


def test_stop_during_the_download_returns_to_ready_and_keeps_no_partial_file(tiny_model_dir: Path, tmp_path: Path, http_server) -> None:
    http_server.routes["/slow.zip"] = (200, sms_zip_bytes(), {})
    http_server.trickle["/slow.zip"] = 0.02  # ~2.5 s for the whole zip
    job = TrainingJob(data_urls=[http_server.url("/slow.zip"), http_server.url("/backup.zip")])
    assert job.start(tiny_run(tiny_model_dir, tmp_path, data=None))
    wait_for(job, lambda s: s.download is not None and s.download.received > 0)
    assert job.stop()
    assert job.wait(5)
    stopped = job.snapshot()
    assert stopped.state == "stopped" and stopped.error is None, stopped.status
    assert stopped.status.startswith("stopped: before training")
    assert http_server.hits == ["/slow.zip"]  # stopping does not fall through to the backup source
    assert not [p for p in (tmp_path / "cache").glob("*") if p.is_file()]  # no partial zip left
    assert job.start(tiny_run(tiny_model_dir, tmp_path, data=str(SMS_ZIP), max_steps=2))  # ready for the next run
    assert job.wait(60) and job.snapshot().state == "done"


def evaluation_that_waits_for_stop(monkeypatch: pytest.MonkeyPatch, phase: str) -> threading.Event:
    """Make fine_tune's baseline or final evaluation block until Stop is pressed."""
    import engine.run

    entered = threading.Event()
    name = "evaluate" if phase == "baseline" else "evaluate_with_scores"
    real = getattr(engine.run, name)

    def waiting(model, loader, device, pooling, num_batches=None, should_stop=None, **options):
        entered.set()
        deadline = time.monotonic() + 20
        while should_stop is not None and not should_stop() and time.monotonic() < deadline:
            time.sleep(0.01)
        return real(model, loader, device, pooling, num_batches, should_stop, **options)

    monkeypatch.setattr(engine.run, name, waiting)
    return entered


@pytest.mark.parametrize("phase", ["baseline", "final"])
def test_stop_during_evaluation_keeps_a_usable_adapter(
    tiny_model_dir: Path, tmp_path: Path, sms_zip: Path, monkeypatch: pytest.MonkeyPatch, phase: str
) -> None:
    entered = evaluation_that_waits_for_stop(monkeypatch, phase)
    job = TrainingJob()
    assert job.start(tiny_run(tiny_model_dir, tmp_path, str(sms_zip), max_steps=4))
    assert entered.wait(60), f"the run never reached the evaluation: {job.snapshot().status}"
    assert job.snapshot().phase == ("measuring baseline accuracy" if phase == "baseline" else "final evaluation")
    assert job.stop()
    assert job.wait(10)
    stopped = job.snapshot()
    assert stopped.state == "stopped" and stopped.error is None
    assert stopped.final is None  # partial metrics are never shown as the final ones
    assert stopped.step == (0 if phase == "baseline" else 4)  # the last completed step
    if phase == "baseline":
        assert stopped.baseline is None and stopped.accuracies == ()
    adapter = stopped.saved.adapter_dir
    (prediction,) = Classifier.load(adapter, torch.device("cpu")).classify("Call now to claim your prize")
    assert prediction.label in ("ham", "spam")


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("MPS backend out of memory (MPS allocated: 8.00 GB)"),
        MemoryError(),
    ],
    ids=["cuda", "mps", "host"],
)
def test_out_of_memory_fails_with_advice_and_the_next_run_works(
    tiny_model_dir: Path, tmp_path: Path, sms_zip: Path, monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> None:
    import engine.job

    real = engine.job.fine_tune

    def exhausted(cfg, stop=None, on_download=None):
        events = real(cfg, stop, on_download)
        for event in events:
            yield event
            if isinstance(event, StepDone):
                raise error

    monkeypatch.setattr(engine.job, "fine_tune", exhausted)
    job = TrainingJob()
    assert job.start(tiny_run(tiny_model_dir, tmp_path, str(sms_zip)))
    assert job.wait(60)
    failed = job.snapshot()
    assert failed.state == "failed"
    assert failed.error == f"out of memory on cpu while training: {ADVICE}"
    assert "smaller model size" in ADVICE and "smaller batch size" in ADVICE

    monkeypatch.setattr(engine.job, "fine_tune", real)
    assert job.start(tiny_run(tiny_model_dir, tmp_path / "again", str(sms_zip), max_steps=2))
    assert job.wait(60) and job.snapshot().state == "done"


def test_an_unexpected_bug_fails_the_run_visibly(tiny_model_dir: Path, tmp_path: Path, sms_zip: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import engine.job

    def broken(cfg, stop=None, on_download=None):
        raise RuntimeError("CUDA error: device-side assert triggered")
        yield

    monkeypatch.setattr(engine.job, "fine_tune", broken)
    job = TrainingJob()
    assert job.start(tiny_run(tiny_model_dir, tmp_path, str(sms_zip)))
    assert job.wait(10)
    assert job.snapshot().error == "RuntimeError: CUDA error: device-side assert triggered"  # not mistaken for out of memory
