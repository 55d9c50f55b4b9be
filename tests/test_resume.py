"""Resume: a run stopped at step 70 and resumed to 140 ends with the adapter of 140 steps without a break."""

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import gradio as gr
import pytest
import torch
from app_fixtures import train_controls
from conftest import tiny_run_config
from fake_workers import FakeWorkers

from engine.adapter import read_adapter
from engine.checkpoint import CHECKPOINT_FILE
from engine.cli import main
from engine.config import RunConfig
from engine.errors import ConfigError
from engine.runs.jobs import WorkerEnded, WorkerJob
from engine.runs.queue import QueueError, RunQueue
from engine.runs.record import RECORD_FILE
from engine.runs.resume import resume_problem, resumed_config
from engine.runs.run import fine_tune
from engine.runs.scheduler import Scheduler
from engine.runs.worker import run_job
from engine.train import StepDone
from ui.lab import Lab
from ui.runs_tab import RunsTab
from ui.settings import AppSettings
from ui.train_tab import TrainTab


def wait_for(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _adapter(folder: Path) -> dict[str, torch.Tensor]:
    return read_adapter(folder / "adapter")[1]


@pytest.mark.slow
@pytest.mark.parametrize(("preset", "batch_size", "eval_freq", "stop_at", "end_at"), [("recommended", 16, 30, 70, 140), ("book", 64, 5, 22, 40)])
def test_resuming_gives_the_adapter_of_never_stopping(
    tiny_model_dir: Path, prepared_data: Path, tmp_path: Path, preset: str, batch_size: int, eval_freq: int, stop_at: int, end_at: int
) -> None:
    # Epochs of ~65 (or 16) steps: the run stops in its second epoch after an estimate there, and resumes across the third.
    def config(out: Path, max_steps: int):
        cfg = tiny_run_config(tiny_model_dir, prepared_data, out, epochs=3, batch_size=batch_size, max_steps=max_steps, eval_freq=eval_freq)
        if preset == "book":  # the book's draws: one generator for the order and the estimates alike
            cfg = replace(cfg, draws="book", train=replace(cfg.train, padding="longest", group_by_length=False, eval_iter=1))
        return cfg

    list(fine_tune(config(tmp_path / "straight", end_at)))
    list(fine_tune(config(tmp_path / "parts", stop_at)))
    list(fine_tune(resumed_config(tmp_path / "parts", max_steps=end_at), resume=True))

    straight, parts = _adapter(tmp_path / "straight"), _adapter(tmp_path / "parts")
    assert straight.keys() == parts.keys()
    for name, tensor in straight.items():
        assert torch.allclose(tensor, parts[name], atol=1e-6), name
    record = json.loads((tmp_path / "parts" / RECORD_FILE).read_text())
    assert [(s["start_step"], s["end_step"], s["ended"]) for s in record["segments"]] == [(0, stop_at, "done"), (stop_at, end_at, "done")]
    assert record["steps"] == end_at and record["final"] is not None
    straight_losses = json.loads((tmp_path / "straight" / RECORD_FILE).read_text())["losses"]
    assert [p["step"] for p in record["losses"]] == [p["step"] for p in straight_losses]  # the curve goes on, once
    for resumed, unbroken in zip(record["losses"], straight_losses, strict=True):  # the estimates draw their batches as they would have
        assert resumed["train_loss"] == pytest.approx(unbroken["train_loss"], abs=1e-5)
        assert resumed["validation_loss"] == pytest.approx(unbroken["validation_loss"], abs=1e-5)


def test_a_run_without_checkpoint_or_finished_is_refused(trained_run: tuple, tmp_path: Path) -> None:
    cfg, _ = trained_run
    folder = Path(cfg.out_dir)
    with pytest.raises(ConfigError, match="already at step 40 of the 40"):
        list(fine_tune(resumed_config(folder, max_steps=40), resume=True))
    assert resume_problem(tmp_path) is not None and "not a run folder" in resume_problem(tmp_path)
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / RECORD_FILE).write_text((folder / RECORD_FILE).read_text())
    assert "no checkpoint" in resume_problem(bare)
    assert (folder / CHECKPOINT_FILE).is_file()
    assert resume_problem(folder) is None  # it stopped at its step limit: it may go on to its epochs
    complete = json.loads((folder / RECORD_FILE).read_text())
    complete["config"]["train"]["max_steps"] = None
    (bare / RECORD_FILE).write_text(json.dumps(complete))
    (bare / CHECKPOINT_FILE).write_bytes(b"")
    assert "is complete: to train it further, resume it with more --epochs" in resume_problem(bare)
    assert resume_problem(bare, further=True) is None


def test_the_scheduler_queues_an_ended_run_to_resume_and_the_queue_remembers(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    workers = FakeWorkers()
    scheduler = Scheduler(root, workers)
    try:
        (run,) = scheduler.submit([RunConfig()], visitor="ann")
        wait_for(lambda: run.id.rsplit("/", 1)[-1] in workers.ends)
        with pytest.raises(QueueError, match="only a run that ended can resume"):
            scheduler.resume(run.id, RunConfig())
        workers.ends[run.id](WorkerEnded("stopped"))
        wait_for(lambda: scheduler.view(run.id).run.state == "stopped")
        workers.ends.clear()
        again = scheduler.resume(run.id, RunConfig().with_train(max_steps=9), visitor="bob")
        assert again.resume and again.visitor == "ann" and again.config.out_dir == str(root / run.id)  # still its owner's, in its folder
        wait_for(lambda: run.id in workers.ends)
        assert workers.resumed == {run.id}
        assert [(r.id, r.resume, r.config.train.max_steps) for r in RunQueue(root, persist=True).runs()] == [(run.id, True, 9)]
    finally:
        for end in list(workers.ends.values()):
            end(WorkerEnded("stopped"))
        scheduler.close()


@pytest.mark.slow
def test_a_worker_resumes_a_run_from_its_checkpoint(tiny_model_dir: Path, prepared_data: Path, tmp_path: Path) -> None:
    cfg = tiny_run_config(tiny_model_dir, prepared_data, tmp_path / "run", max_steps=6, eval_freq=3)
    list(fine_tune(cfg))
    sent: list = []
    ended = run_job(WorkerJob(resumed_config(tmp_path / "run", max_steps=9), resume=True), threading.Event(), sent.append)
    assert ended.state == "done", ended.failure
    assert next(e for e in sent if isinstance(e, StepDone)).step == 1  # the earlier steps come first, for the app's curves
    record = json.loads((tmp_path / "run" / RECORD_FILE).read_text())
    assert record["steps"] == 9 and [s["end_step"] for s in record["segments"]] == [6, 9]


@pytest.fixture
def room_lab(settings: AppSettings) -> Iterator[Lab]:
    """An app in room mode whose runs never train: one fake worker holds the running run."""
    settings = replace(settings, room=True, presenter_token="secret")
    lab = Lab(settings, scheduler=Scheduler(settings.out, FakeWorkers(1)))
    yield lab
    lab.close(timeout=1)


def test_in_a_room_a_visitor_resumes_their_own_stopped_run_and_the_presenter_any(room_lab: Lab) -> None:
    room, runs, train = room_lab.room, RunsTab(room_lab), TrainTab(room_lab)
    ann, bob = gr.Request(session_hash="ann"), gr.Request(session_hash="bob")
    presenter = gr.Request(session_hash="presenter", query_params={"presenter": "secret"})
    for request in (ann, bob, presenter):
        room.arrive("", request)
    run_id = train.start_training(train_controls(room_lab.settings.model), "Ann", ann)[12].value
    workers: FakeWorkers = room_lab.scheduler.workers  # type: ignore[assignment]
    wait_for(lambda: run_id in workers.ends)
    assert runs.controls_for(run_id, ann)[4].interactive is False  # running: nothing to resume
    workers.ends.pop(run_id)(WorkerEnded("stopped"))
    wait_for(lambda: room_lab.scheduler.queue.get(run_id).state == "stopped")
    folder = Path(room_lab.scheduler.queue.get(run_id).config.out_dir)
    config = room_lab.scheduler.queue.get(run_id).config
    (folder / RECORD_FILE).write_text(json.dumps({"state": "stopped", "config": config.to_dict(), "steps": 3}))  # what the run left
    assert runs.controls_for(run_id, ann)[4].interactive is False and train.poll(run_id, None, ann)[14].visible is False  # no checkpoint yet
    (folder / CHECKPOINT_FILE).write_bytes(b"")

    assert runs.controls_for(run_id, bob)[4].interactive is False and "is Ann's" in runs.controls_for(run_id, bob)[5]
    assert train.poll(run_id, None, bob)[14].visible is False
    with pytest.raises(gr.Error, match="is Ann's: only the visitor who started it, or the presenter, can resume it"):
        runs.resume(run_id, bob)
    assert runs.controls_for(run_id, ann)[4].interactive is True and train.poll(run_id, None, ann)[14].visible is True
    assert any("stopped, can resume" in label for label, value in runs.queue(None, ann)[1].choices if value == run_id)
    assert "queued to go on from its last checkpoint" in train.resume_training(run_id, ann)
    wait_for(lambda: run_id in workers.ends)
    assert workers.resumed == {run_id}
    workers.ends.pop(run_id)(WorkerEnded("stopped"))
    wait_for(lambda: room_lab.scheduler.queue.get(run_id).state == "stopped")
    assert "queued to resume" in runs.resume(run_id, presenter)  # the presenter resumes anyone's run


def test_the_command_line_refuses_to_resume_a_folder_without_a_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert f"{tmp_path} has no run record (run.json): it is not a run folder" in capsys.readouterr().err
