"""Room mode: each browser is a visitor, the presenter link manages every run, visitors act on their own,
take turns, and are limited; Classify and Evaluate answer with one visitor's own model by default.

The runs here never train: fake workers hold them (tests/fake_workers.py), and finished runs are a trained
tiny run's files copied into their folders."""

import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import gradio as gr
import pytest
from app_fixtures import SPAM, train_controls
from fake_workers import FakeWorkers

import app
from engine.runs.jobs import WorkerEnded
from engine.runs.scheduler import Scheduler
from engine.runs.wait import expected_wait_s
from engine.train import StepDone, TrainStarted
from ui.classify_tab import ClassifyTab
from ui.controls import run_config
from ui.evaluate_tab import EvaluateTab
from ui.lab import Lab
from ui.room import PRESENTER, Room
from ui.runs_tab import RunsTab
from ui.settings import AppSettings
from ui.train_tab import TrainTab

TOKEN = "the-presenters-secret"


def page(room: Room, session: str, secret: str = "", **request: object) -> tuple[gr.Request, str]:
    """A page load: its request (as each later event of that page carries it) and the secret its browser keeps."""
    loaded = gr.Request(session_hash=session, **request)
    return loaded, room.arrive(secret, loaded)


def test_a_browser_is_one_visitor_across_reloads_and_the_presenter_link_makes_the_presenter() -> None:
    room = Room(True, TOKEN)
    ann, ann_secret = page(room, "ann-1")
    reloaded, kept = page(room, "ann-2", ann_secret)
    bob, _ = page(room, "bob-1")
    assert kept == ann_secret and room.visitor(reloaded) == room.visitor(ann) != room.visitor(bob)
    assert not room.visitor(ann).presenter and ann_secret not in room.visitor(ann).key  # the key never shows the secret
    presenter, _ = page(room, "presenter-1", query_params={"presenter": TOKEN})
    guess, _ = page(room, "guess-1", query_params={"presenter": "the-presenters-secreT"})
    assert room.visitor(presenter).presenter and room.visitor(presenter).key == PRESENTER and not room.visitor(guess).presenter
    script = gr.Request(session_hash="client-1")  # gradio_client: no page load, one visitor per client
    assert room.visitor(script) == room.visitor(gr.Request(session_hash="client-1")) != room.visitor(gr.Request(session_hash="client-2"))
    assert room.visitor(gr.Request(session_hash="client-3", headers={"x-lora-lab-presenter": TOKEN})).presenter
    first, _ = page(room, "login-1", username="ann")
    second, _ = page(room, "login-2", username="ann")  # under --auth, the login name is the visitor
    assert room.visitor(first) == room.visitor(second) and room.visitor(first) != room.visitor(gr.Request(session_hash="x", username="bo"))
    off = Room(False, TOKEN)
    assert off.visitor(bob).presenter and off.visitor(bob) == off.visitor(ann)  # the room off: one person, every power


def test_room_mode_is_on_when_others_can_reach_the_app(monkeypatch: pytest.MonkeyPatch) -> None:
    assert app.parse_args([]).room is False
    assert app.parse_args(["--host", "0.0.0.0"]).room is True and app.parse_args(["--share"]).room is True
    assert app.parse_args(["--host", "0.0.0.0", "--no-room"]).room is False and app.parse_args(["--room"]).room is True
    assert app.parse_args(["--room", "--max-waiting-per-visitor", "5"]).max_waiting_per_visitor == 5
    for bad in (["--room", "--no-room"], ["--max-waiting-per-visitor", "0"], ["--max-waiting-per-visitor", "99999999999999999999"]):
        with pytest.raises(SystemExit):
            app.parse_args(bad)


def test_the_terminal_prints_the_presenter_link(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    monkeypatch.setattr(app, "launch", lambda *args, **kwargs: "http://127.0.0.1:7860/")
    monkeypatch.setattr(app, "has_desktop", lambda: False)
    monkeypatch.setenv("LORA_LAB_PRESENTER_TOKEN", TOKEN)
    monkeypatch.delenv("LORA_LAB_AUTH", raising=False)
    app.main(["--room", "--out", str(tmp_path / "runs"), "--cache", str(tmp_path / "cache")])
    printed = capsys.readouterr().out
    assert f"Presenter link (it stops, cancels and moves any run; keep it to yourself): http://127.0.0.1:7860/?presenter={TOKEN}" in printed
    assert "at most 3 waiting at once" in printed
    monkeypatch.delenv("LORA_LAB_PRESENTER_TOKEN")
    assert Room(True).presenter_token != Room(True).presenter_token  # else a random one per start


@pytest.fixture
def room_lab(settings: AppSettings) -> Iterator[Lab]:
    """An app in room mode whose runs never train: one fake worker holds the running run."""
    settings = replace(settings, room=True, presenter_token=TOKEN)
    lab = Lab(settings, scheduler=Scheduler(settings.out, FakeWorkers(1)))
    yield lab
    lab.close(timeout=1)


def wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def started(lab: Lab, owner: str, request: gr.Request, **changes: object) -> str:
    """Start a run as a visitor's page does; its id (the run the page now follows)."""
    return TrainTab(lab).start_training(train_controls(lab.settings.model, **changes), owner, request)[12].value


def test_visitors_act_on_their_own_runs_and_the_presenter_on_all(room_lab: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    room, train, runs = room_lab.room, TrainTab(room_lab), RunsTab(room_lab)
    ann, _ = page(room, "ann")
    bob, _ = page(room, "bob")
    presenter, _ = page(room, "presenter", query_params={"presenter": TOKEN})
    ann_running = started(room_lab, "Ann", ann)
    assert f"Run {ann_running} starts now" in capsys.readouterr().out
    wait_for(lambda: ann_running in room_lab.scheduler.workers.ends)
    ann_waiting = started(room_lab, "Ann", ann)
    bob_waiting = started(room_lab, "", bob)
    said = capsys.readouterr().out
    assert f"Run {bob_waiting} is 1st in line (1 run running, 0 runs waiting ahead of it)" in said  # his first goes ahead of Ann's second
    assert "no run has finished on this machine yet, so its wait cannot be estimated" in said
    assert [run.id for run in room_lab.scheduler.queue.runs() if run.state == "queued"] == [bob_waiting, ann_waiting]

    for act in (lambda: runs.stop(ann_running, bob), lambda: runs.cancel(ann_waiting, bob), lambda: runs.move_up(ann_waiting, bob)):
        with pytest.raises(gr.Error, match="is Ann's: only the visitor who started it, or the presenter, can (stop|cancel|move) it"):
            act()
    with pytest.raises(gr.Error, match="is Ann's"):
        train.stop_training(ann_running, bob)
    up, down, cancel, stop, _, note = runs.controls_for(ann_waiting, bob)
    assert [button.interactive for button in (up, down, cancel, stop)] == [False] * 4 and "is Ann's" in note
    assert [button.interactive for button in runs.controls_for(bob_waiting, bob)[:4]] == [True] * 4
    watching = train.poll(ann_running, None, bob)  # anyone may watch any run; the Stop button says why it is off
    assert watching[13].interactive is False and "only the visitor who started it, or the presenter, can stop it" in watching[0]
    assert train.poll(None, None, bob)[0].startswith(f"**Run {bob_waiting}**")  # each page follows its own latest run
    assert train.poll(None, None, ann)[0].startswith(f"**Run {ann_waiting}**")
    table = runs.queue(None, bob)[0]
    assert dict(zip(table["run"], table["who"], strict=True)) == {bob_waiting: "you", ann_waiting: "Ann", ann_running: "Ann"}

    runs.move_up(ann_waiting, presenter)  # the presenter moves anyone past anyone, and stops anyone's run
    assert [run.id for run in room_lab.scheduler.queue.runs() if run.state == "queued"] == [ann_waiting, bob_waiting]
    assert runs.stop(ann_running, presenter).startswith(f"Stopping {ann_running}")
    assert runs.cancel(bob_waiting, bob).startswith(f"Cancelled {bob_waiting}")  # and each visitor their own
    wait_for(lambda: room_lab.scheduler.queue.get(ann_running).state == "stopped")


def test_a_visitor_may_have_three_waiting_runs_and_the_presenter_changes_that(room_lab: Lab) -> None:
    room, runs = room_lab.room, RunsTab(room_lab)
    ann, _ = page(room, "ann")
    presenter, _ = page(room, "presenter", query_params={"presenter": TOKEN})
    first = started(room_lab, "", ann)
    wait_for(lambda: room_lab.scheduler.queue.get(first).state == "running")
    for _ in range(3):
        started(room_lab, "", ann)
    with pytest.raises(gr.Error, match="you have 3 runs waiting and may have at most 3 at once; this would be one more: wait until one of yours starts"):
        started(room_lab, "", ann)
    with pytest.raises(gr.Error, match="only the presenter can change the room's limits"):
        runs.set_room_limit(10, ann)
    for bad, shown in ((0, "0"), (1e30, "1e\\+30"), (float("nan"), "nan")):
        with pytest.raises(gr.Error, match=f"must be a whole number from 1 to 500, got {shown}"):
            runs.set_room_limit(bad, presenter)
    assert runs.set_room_limit(4.0, presenter).startswith("Each visitor may now have at most 4 waiting runs")
    started(room_lab, "", ann)
    for _ in range(5):
        started(room_lab, "", presenter)  # the presenter has no limit
    assert runs.room_panel(presenter)[0].visible is True and runs.room_panel(ann)[0].visible is False


def test_the_expected_wait_comes_from_the_runs_ahead_at_the_measured_speed(room_lab: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    room = room_lab.room
    ann, _ = page(room, "ann")
    bob, _ = page(room, "bob")
    workers: FakeWorkers = room_lab.scheduler.workers  # type: ignore[assignment]
    measured = started(room_lab, "", ann, max_steps=20.0)
    wait_for(lambda: measured in workers.events)
    workers.events[measured](TrainStarted(total_steps=20, steps_per_epoch=20, epochs=1, train_examples=160))
    workers.events[measured](StepDone(step=20, total_steps=20, epoch=1, examples_seen=160, loss=0.1, elapsed_s=1.0, eta_s=0.0))
    time.sleep(0.2)
    workers.ends[measured](WorkerEnded("done"))
    running = started(room_lab, "", ann, max_steps=20.0)
    wait_for(lambda: running in workers.events)
    queued = started(room_lab, "", bob, max_steps=20.0)
    views = room_lab.scheduler.views()
    done = room_lab.scheduler.queue.get(measured)
    rate = (done.ended_at - done.started_at) / 20
    assert expected_wait_s(views, queued, 1, lambda cfg: 20) == pytest.approx(20 * rate)  # the running run's 20 steps
    assert expected_wait_s(views, queued, 2, lambda cfg: 20) == 0.0  # a second slot is free
    assert f"Run {queued} is 1st in line (1 run running, 0 runs waiting ahead of it): it should start within a minute" in capsys.readouterr().out


# --- which model answers ----------------------------------------------------------------------------


def finished(lab: Lab, request: gr.Request, adapter_dir: Path, created: str, grid: bool = False, state: str = "done") -> str:
    """A run of the visitor that ended `state`, with a trained run's files (its record's creation time set to order them)."""
    queue = lab.scheduler.queue
    visitor = lab.room.visitor(request).key
    (run,) = lab.scheduler.submit([run_config(lab.settings, train_controls(lab.settings.model))], ["run"] if grid else None, visitor=visitor)
    wait_for(lambda: queue.get(run.id).state == "running")
    folder = Path(run.config.out_dir)
    shutil.copytree(adapter_dir, folder / "adapter")
    record = json.loads((adapter_dir.parent / "run.json").read_text())
    (folder / "run.json").write_text(json.dumps({**record, "created": created, "state": state}))
    lab.scheduler.workers.ends[folder.name](WorkerEnded(state))  # type: ignore[attr-defined]
    wait_for(lambda: queue.get(run.id).ended)
    return run.id


def test_each_visitor_is_answered_by_their_own_latest_finished_run_else_the_presenter_s(room_lab: Lab, adapter_dir: Path) -> None:
    room, classify, evaluate = room_lab.room, ClassifyTab(room_lab), EvaluateTab(room_lab)
    ann, _ = page(room, "ann")
    bob, _ = page(room, "bob")
    presenter, _ = page(room, "presenter", query_params={"presenter": TOKEN})
    presenters = finished(room_lab, presenter, adapter_dir, "2026-12-07T10:00:00+00:00")
    anns = finished(room_lab, ann, adapter_dir, "2026-12-07T11:00:00+00:00")
    anns_grid = finished(room_lab, ann, adapter_dir, "2026-12-07T12:00:00+00:00", grid=True)  # newer, but a grid's
    finished(room_lab, ann, adapter_dir, "2026-12-07T13:00:00+00:00", state="stopped")  # newest, but stopped
    bobs_other = finished(room_lab, bob, adapter_dir, "2026-12-07T09:00:00+00:00", grid=True)

    listed = [run.name for run in room_lab.finished_runs()]
    assert listed == [anns_grid, anns, presenters, bobs_other]  # finished runs only, newest first
    for visitor, default in ((ann, anns), (bob, presenters), (presenter, presenters)):
        assert classify.run_choices(None, visitor).value == evaluate.evaluation_choices(None, visitor).value == default
        assert [value for _, value in classify.run_choices(None, visitor).choices] == listed  # one list for both tabs
        assert f"Answered by run {default};" in classify.classify(SPAM, None, None, visitor)[2]
        assert classify.adapter_info(None, None, visitor).startswith(f"**Answering: run {default} ")
    assert "yours" in dict((v, label) for label, v in classify.run_choices(None, ann).choices)[anns]
    assert f"Answered by run {anns_grid};" in classify.classify(SPAM, None, anns_grid, bob)[2]  # anyone may choose any finished run
    assert classify.run_choices(anns_grid, bob).value == anns_grid  # and it stays chosen
    with pytest.raises(gr.Error, match="no finished run called 'nothing-here'"):
        classify.classify(SPAM, None, "nothing-here", bob)


def test_nothing_answers_silently_when_only_grids_or_others_finished(room_lab: Lab, adapter_dir: Path) -> None:
    room, classify = room_lab.room, ClassifyTab(room_lab)
    ann, _ = page(room, "ann")
    bob, _ = page(room, "bob")
    finished(room_lab, ann, adapter_dir, "2026-12-07T11:00:00+00:00")
    with pytest.raises(gr.Error, match="None of the finished runs is yours or the presenter's: choose one from the list"):
        classify.classify(SPAM, None, None, bob)
    assert EvaluateTab(room_lab).evaluate(None, "validation", 0.5)[0].startswith("No run chosen")
