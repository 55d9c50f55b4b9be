"""The scheduler never dies silently: whatever fails while starting or ending a run fails that run,
with its reason, logged once, and the slot always comes back (fake workers: no process starts)."""

import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fake_workers import FakeWorkers

import engine.runs.queue as queue_module
from engine.config import RunConfig
from engine.errors import DiskFullError
from engine.runs.jobs import WorkerEnded
from engine.runs.scheduler import Scheduler
from engine.train import TrainStarted


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture
def scheduler(tmp_path: Path):
    scheduler = Scheduler(tmp_path / "runs", FakeWorkers())
    yield scheduler
    scheduler.close(timeout=1)


def states(scheduler: Scheduler) -> list[tuple[str, str]]:
    return [(run.state, run.reason or "") for run in scheduler.queue.runs()]


def full_disk(*args: object, **kwargs: object) -> None:
    raise DiskFullError("/the/runs")


def test_a_full_disk_as_a_run_ends_fails_it_frees_the_slot_and_the_queue_goes_on(
    scheduler: Scheduler, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    workers: FakeWorkers = scheduler.workers  # type: ignore[assignment]
    first, second = scheduler.submit([RunConfig(), RunConfig()])
    wait_for(lambda: first.id in workers.ends)
    with monkeypatch.context() as patched, caplog.at_level(logging.ERROR):
        patched.setattr(queue_module, "write_text_atomic", full_disk)
        workers.ends[first.id](WorkerEnded("done"))  # its end cannot be saved; the next run cannot be marked started either
        wait_for(lambda: [state for state, _ in states(scheduler)] == ["failed", "failed"])
    (first_state, first_reason), (second_state, second_reason) = states(scheduler)
    assert "it ended (done) but the run queue could not be saved" in first_reason and "disk is full" in first_reason
    assert second_reason.startswith("it could not start: the run queue could not be saved")
    assert [record.levelname for record in caplog.records] == ["ERROR", "ERROR"]  # once each
    (third,) = scheduler.submit([RunConfig()])  # the disk has room again: the slot was given back, the dispatcher lives
    wait_for(lambda: third.id in workers.ends)
    workers.ends[third.id](WorkerEnded("done"))
    assert scheduler.wait([third.id], timeout=30) and scheduler.queue.get(third.id).state == "done"


def test_a_worker_that_cannot_start_fails_its_run_only(scheduler: Scheduler, caplog: pytest.LogCaptureFixture) -> None:
    workers: FakeWorkers = scheduler.workers  # type: ignore[assignment]
    workers.refuse = True
    with caplog.at_level(logging.ERROR):
        (refused,) = scheduler.submit([RunConfig()])
        assert scheduler.wait([refused.id], timeout=30)
    assert states(scheduler) == [("failed", "the worker could not start: RuntimeError: no such interpreter")]
    assert len(caplog.records) == 1
    workers.refuse = False
    (next_run,) = scheduler.submit([RunConfig()])
    wait_for(lambda: next_run.id in workers.ends)


def test_a_fault_of_ours_while_a_run_ends_fails_it_and_frees_the_slot(
    scheduler: Scheduler, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    workers: FakeWorkers = scheduler.workers  # type: ignore[assignment]
    first, second = scheduler.submit([RunConfig(), RunConfig()])
    wait_for(lambda: first.id in workers.ends)

    def broken(*args: object, **kwargs: object) -> None:
        raise KeyError("a bug")

    with caplog.at_level(logging.ERROR):
        monkeypatch.setattr(scheduler.queue, "finish", broken)
        workers.ends[first.id](WorkerEnded("done"))
        wait_for(lambda: second.id in workers.ends)  # the slot came back
    assert scheduler.queue.get(first.id).state == "failed" and "its end could not be recorded: KeyError" in scheduler.queue.get(first.id).reason
    assert len([r for r in caplog.records if "its end could not be recorded" in r.getMessage()]) == 1 and caplog.records[0].exc_info


def test_a_fault_while_starting_fails_that_run_once_not_forever(
    scheduler: Scheduler, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls = []

    def broken(worker: str) -> None:
        calls.append(worker)
        raise ValueError("a bug in claiming")

    with caplog.at_level(logging.ERROR):
        monkeypatch.setattr(scheduler.queue, "claim_next", broken)
        (run,) = scheduler.submit([RunConfig()])
        assert scheduler.wait([run.id], timeout=30)
    assert scheduler.queue.get(run.id).state == "failed" and "ValueError: a bug in claiming" in scheduler.queue.get(run.id).reason
    assert len(calls) == 1 and len(caplog.records) == 1


def test_an_event_that_cannot_be_shown_is_logged_once_and_the_run_goes_on(scheduler: Scheduler, caplog: pytest.LogCaptureFixture) -> None:
    workers: FakeWorkers = scheduler.workers  # type: ignore[assignment]
    (run,) = scheduler.submit([RunConfig()])
    wait_for(lambda: run.id in workers.events)
    with caplog.at_level(logging.ERROR):
        for _ in range(3):
            workers.events[run.id](TrainStarted(total_steps=10, steps_per_epoch=0, epochs=1, train_examples=0))  # the recorder divides by zero
    workers.ends[run.id](WorkerEnded("done"))
    assert scheduler.wait([run.id], timeout=30) and scheduler.queue.get(run.id).state == "done"
    assert len(caplog.records) == 1
