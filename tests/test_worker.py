"""One run in a worker: events back, stopping in every phase, failures sorted into what the user can fix and bugs.

`run_job` is what a worker process runs; the phases and failures are tested on it in this process
(a patched function does not cross into a worker process), the process plumbing on real workers.
"""

import logging
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import SMS_ZIP, sms_zip_bytes

from engine.classifier import Classifier
from engine.config import RunConfig
from engine.memory import ADVICE
from engine.runs.jobs import WorkerEnded, WorkerJob
from engine.runs.local_workers import LocalWorkers, local_slots
from engine.runs.recorder import RunRecorder
from engine.runs.scheduler import RunView, Scheduler
from engine.runs.worker import run_job
from engine.train import StepDone


def tiny_run(model: Path, tmp_path: Path, data: str | None, **train: object) -> RunConfig:
    cfg = RunConfig.from_preset("recommended", model=str(model), data=data, data_cache=str(tmp_path / "cache"), out_dir=str(tmp_path / "run"), device="cpu")
    return cfg.with_train(**{"epochs": 1, "max_steps": 12, "eval_freq": 5, "eval_iter": 2, **train})


def wait_for(scheduler: Scheduler, run_id: str, condition, timeout: float = 600.0) -> RunView:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = scheduler.view(run_id)
        if condition(view):
            return view
        time.sleep(0.05)
    raise AssertionError(f"condition not met in {timeout} s; last view: {scheduler.view(run_id)}")


@pytest.fixture
def scheduler(tmp_path: Path):
    scheduler = Scheduler(tmp_path / "runs", LocalWorkers(local_slots(1, "cpu")))
    yield scheduler
    scheduler.close()


@pytest.mark.slow
def test_a_run_downloads_data_from_its_urls_trains_and_saves(scheduler: Scheduler, tiny_model_dir: Path, tmp_path: Path, http_server) -> None:
    http_server.routes["/backup.zip"] = (200, sms_zip_bytes(), {})
    cfg = tiny_run(tiny_model_dir, tmp_path, data=None)
    (run,) = scheduler.submit([RunConfig(**{**cfg.__dict__, "data_urls": (http_server.url("/primary.zip"), http_server.url("/backup.zip"))})])
    assert scheduler.wait([run.id], timeout=600)
    view = scheduler.view(run.id)
    progress = view.progress
    assert view.run.state == "done", view.run.reason
    assert http_server.hits == ["/primary.zip", "/backup.zip"]  # primary 404s, backup serves
    assert progress.download is not None and progress.download.status == "done"
    assert progress.data is not None and progress.data.balanced == 1494
    assert progress.step == progress.total_steps == 12
    assert [p.step for p in progress.batch_losses] == list(range(1, 13))
    assert [p.examples_seen for p in progress.batch_losses] == [8 * step for step in range(1, 13)]
    assert [e.step for e in progress.estimates] == [0, 5, 10]  # the book's 0-based steps
    assert [e.epoch for e in progress.epoch_accuracies] == [1] and progress.baseline is not None
    assert [e.step for e in progress.live] == [0, 5, 10] and progress.live[-1].metrics.count == 149
    assert set(progress.final) == {"train", "validation", "test"}
    saved = progress.saved
    assert saved is not None and not saved.stopped and saved.out_dir == tmp_path / "runs" / run.id
    assert (saved.adapter_dir / "adapter.safetensors").is_file() and saved.record.is_file()


@pytest.mark.slow
def test_stop_ends_a_run_within_a_step_and_it_saves(scheduler: Scheduler, tiny_model_dir: Path, tmp_path: Path, sms_zip: Path) -> None:
    (run,) = scheduler.submit([tiny_run(tiny_model_dir, tmp_path, str(sms_zip), epochs=50, max_steps=None)])
    running = wait_for(scheduler, run.id, lambda v: v.progress is not None and v.progress.step >= 3)
    scheduler.stop(run.id)
    assert scheduler.wait([run.id], timeout=60)
    stopped = scheduler.view(run.id)
    assert stopped.run.state == "stopped" and stopped.run.reason is None
    assert running.progress.step <= stopped.progress.step < stopped.progress.total_steps
    assert stopped.progress.final is None  # a stopped run skips the full evaluation
    assert stopped.progress.saved.stopped and (stopped.progress.saved.adapter_dir / "adapter.safetensors").is_file()


@pytest.mark.slow
def test_a_failed_run_says_why_and_the_next_one_runs(scheduler: Scheduler, tiny_model_dir: Path, tmp_path: Path, sms_zip: Path) -> None:
    bad, good = scheduler.submit([tiny_run(tmp_path / "no-such-model", tmp_path, str(sms_zip)), tiny_run(tiny_model_dir, tmp_path, str(sms_zip), max_steps=2)])
    assert scheduler.wait(timeout=600)
    failed = scheduler.view(bad.id).run
    assert failed.state == "failed" and "unknown model" in failed.reason
    assert scheduler.view(good.id).run.state == "done"


@pytest.mark.slow
def test_stop_during_the_download_keeps_no_partial_file(scheduler: Scheduler, tiny_model_dir: Path, tmp_path: Path, http_server) -> None:
    http_server.routes["/slow.zip"] = (200, sms_zip_bytes(), {})
    http_server.trickle["/slow.zip"] = 0.05  # ~6 s for the whole zip
    cfg = tiny_run(tiny_model_dir, tmp_path, data=None)
    (run,) = scheduler.submit([RunConfig(**{**cfg.__dict__, "data_urls": (http_server.url("/slow.zip"), http_server.url("/backup.zip"))})])
    wait_for(scheduler, run.id, lambda v: v.progress is not None and v.progress.download is not None and v.progress.download.received > 0)
    scheduler.stop(run.id)
    assert scheduler.wait([run.id], timeout=60)
    stopped = scheduler.view(run.id)
    assert stopped.run.state == "stopped" and stopped.run.reason is None
    assert http_server.hits == ["/slow.zip"]  # stopping does not fall through to the backup source
    assert not [p for p in (tmp_path / "cache").glob("*") if p.is_file()]  # no partial zip left


def run_in_process(cfg: RunConfig, stop: threading.Event | None = None) -> tuple[WorkerEnded, RunRecorder]:
    """What a worker process does with `cfg`, in this process (so tests can patch what it calls)."""
    recorder = RunRecorder()
    ended = run_job(WorkerJob(cfg), stop or threading.Event(), recorder.record)
    return ended, recorder


def evaluation_that_waits_for_stop(monkeypatch: pytest.MonkeyPatch, phase: str) -> threading.Event:
    """Make fine_tune's baseline or final evaluation block until Stop is pressed."""
    import engine.runs.run

    entered = threading.Event()
    name = "evaluate" if phase == "baseline" else "evaluate_with_scores"
    real = getattr(engine.runs.run, name)

    def waiting(model, loader, device, pooling, num_batches=None, should_stop=None, **options):
        entered.set()
        deadline = time.monotonic() + 20
        while should_stop is not None and not should_stop() and time.monotonic() < deadline:
            time.sleep(0.01)
        return real(model, loader, device, pooling, num_batches, should_stop, **options)

    monkeypatch.setattr(engine.runs.run, name, waiting)
    return entered


@pytest.mark.parametrize("phase", ["baseline", "final"])
def test_stop_during_evaluation_keeps_a_usable_adapter(tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, phase: str) -> None:
    entered = evaluation_that_waits_for_stop(monkeypatch, phase)
    stop = threading.Event()
    result: list = []
    worker = threading.Thread(target=lambda: result.append(run_in_process(tiny_run(tiny_model_dir, tmp_path, str(SMS_ZIP), max_steps=4), stop)))
    worker.start()
    assert entered.wait(60), "the run never reached the evaluation"
    stop.set()
    worker.join(30)
    ended, recorder = result[0]
    progress = recorder.progress()
    assert ended == WorkerEnded("stopped")
    assert progress.final is None  # partial metrics are never shown as the final ones
    assert progress.step == (0 if phase == "baseline" else 4)  # the last completed step
    if phase == "baseline":
        assert progress.baseline is None  # cut short, its accuracies would cover too few batches
    (prediction,) = Classifier.load(progress.saved.adapter_dir, torch.device("cpu")).classify("Call now to claim your prize")
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
def test_out_of_memory_fails_with_advice(tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: BaseException) -> None:
    import engine.runs.run

    real = engine.runs.run.fine_tune

    def exhausted(cfg, stop=None, on_download=None, weights_at=None, resume=False):
        for event in real(cfg, stop, on_download, weights_at, resume):
            yield event
            if isinstance(event, StepDone):
                raise error

    monkeypatch.setattr(engine.runs.run, "fine_tune", exhausted)
    ended, _ = run_in_process(tiny_run(tiny_model_dir, tmp_path, str(SMS_ZIP)))
    assert ended.state == "failed" and ended.failure.kind == "out of memory"
    assert ended.failure.message == f"out of memory on cpu while training: {ADVICE}"
    assert "smaller model size" in ADVICE and "smaller batch size" in ADVICE


def test_a_bug_is_an_internal_error_with_its_traceback_logged(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import engine.runs.run

    def broken(cfg, stop=None, on_download=None, weights_at=None, resume=False):
        raise ValueError("zip() argument 2 is shorter than argument 1")  # a bug, though a ValueError: not the user's input
        yield

    monkeypatch.setattr(engine.runs.run, "fine_tune", broken)
    with caplog.at_level(logging.ERROR):
        ended, _ = run_in_process(tiny_run(tiny_model_dir, tmp_path, str(SMS_ZIP)))
    assert ended.state == "failed" and ended.failure.kind == "internal"
    assert "ValueError: zip() argument 2 is shorter than argument 1" in ended.failure.message
    assert "a fault in LoRA Lab" in ended.failure.message
    assert any(record.exc_info and "zip() argument 2" in str(record.exc_info[1]) for record in caplog.records)  # the traceback is logged


def test_bad_input_is_the_users_to_fix(tmp_path: Path) -> None:
    ended, _ = run_in_process(tiny_run(tmp_path / "missing-model", tmp_path, str(SMS_ZIP)))
    assert ended.state == "failed" and ended.failure.kind == "bad input" and "unknown model" in ended.failure.message
