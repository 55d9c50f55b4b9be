"""The run queue survives its own failures and never trusts its file: saves that fail, folders made
exclusively, entries checked one by one, fair turns across visitors."""

import json
import math
import threading
import time
from dataclasses import replace
from pathlib import Path

import orjson
import pytest

import engine.runs.queue as queue_module
from engine.config import RunConfig
from engine.errors import DiskFullError
from engine.runs.queue import QUEUE_FILE, QueueError, RunQueue, fair_place

BASE = RunConfig()


def full_disk(*args: object, **kwargs: object) -> None:
    raise DiskFullError("/the/runs")


def saved(root: Path) -> list[dict]:
    return json.loads((root / QUEUE_FILE).read_text())["runs"]


def waiting_visitors(queue: RunQueue) -> list[str]:
    return [run.visitor for run in queue.runs() if run.state == "queued"]


# --- fair turns and limits -----------------------------------------------------------------------


def test_waiting_runs_take_turns_across_visitors_and_the_file_lists_them_in_that_order(tmp_path: Path) -> None:
    queue = RunQueue(tmp_path)
    queue.add([BASE] * 3, visitor="ann")
    queue.claim_next("cpu 0")  # ann's first runs
    queue.add([BASE], visitor="bob")  # bob has none running: his first goes ahead of ann's second
    queue.add([BASE] * 2, visitor="cy")
    queue.add([BASE], visitor="bob")
    # round by round (a running run counts), in order of arrival within a round
    assert waiting_visitors(queue) == ["bob", "cy", "ann", "cy", "bob", "ann"]
    assert [entry["visitor"] for entry in saved(tmp_path) if entry["state"] == "queued"] == waiting_visitors(queue)  # the order they start in
    started = [queue.claim_next("cpu 0").visitor for _ in range(6)]
    assert started == ["bob", "cy", "ann", "cy", "bob", "ann"]


def test_one_visitor_alone_queues_in_order() -> None:
    runs = []
    for number in range(4):
        runs.insert(fair_place(runs, ""), queue_module.QueuedRun(str(number), BASE))
    assert [run.id for run in runs] == ["0", "1", "2", "3"]


def test_a_visitor_may_have_only_so_many_runs_waiting_and_a_grid_counts_each(tmp_path: Path) -> None:
    queue = RunQueue(tmp_path)
    queue.add([BASE, BASE], visitor="ann", max_waiting_per_visitor=3)
    with pytest.raises(QueueError, match=r"you have 2 runs waiting and may have at most 3 at once; this grid would add 2 .*cancel one on the Runs tab"):
        queue.add([BASE, BASE], ["rank1", "rank2"], visitor="ann", max_waiting_per_visitor=3)
    with pytest.raises(QueueError, match="this grid makes 4 runs, and each visitor may have at most 3 waiting at once .*choose fewer values"):
        queue.add([BASE] * 4, ["a", "b", "c", "d"], visitor="cy", max_waiting_per_visitor=3)
    queue.add([BASE] * 3, visitor="bob", max_waiting_per_visitor=3)  # each visitor has their own
    queue.add([BASE], visitor="ann", max_waiting_per_visitor=3)
    queue.claim_next("cpu 0")  # a run that starts frees a place
    queue.add([BASE], visitor="ann", max_waiting_per_visitor=3)
    assert [run.visitor for run in queue.runs()].count("ann") == 4


def test_a_visitor_moves_a_run_among_their_own_only(tmp_path: Path) -> None:
    queue = RunQueue(tmp_path)
    a1, a2 = queue.add([BASE, BASE], visitor="ann")
    (b1,) = queue.add([BASE], visitor="bob")
    assert [run.id for run in queue.runs()] == [a1.id, b1.id, a2.id]
    queue.move(a2.id, 5, among_own=True)  # as far up as they like: ahead of their own, never of bob's
    assert [run.id for run in queue.runs()] == [a2.id, b1.id, a1.id]
    queue.move(b1.id, 1)  # the presenter moves anyone's run past anyone
    assert [run.id for run in queue.runs()] == [b1.id, a2.id, a1.id]


# --- folders of their own ----------------------------------------------------------------------


def test_a_folder_someone_else_made_in_the_same_second_is_never_shared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(queue_module.time, "strftime", lambda _: "20261207-120000")
    theirs = tmp_path / "20261207-120000"
    theirs.mkdir()
    (theirs / "run.json").write_text("{}")  # another writer's run, made in this very second
    (run,) = RunQueue(tmp_path).add([BASE])
    assert run.id == "20261207-120000-2" and (tmp_path / run.id).is_dir() and (theirs / "run.json").read_text() == "{}"


def test_two_queues_adding_at_once_never_get_one_folder(tmp_path: Path) -> None:
    """Two writers on one folder (what the folder lock prevents for apps): each folder is made by exactly one of them."""
    queues, added = [RunQueue(tmp_path / "runs"), RunQueue(tmp_path / "runs")], []
    start = threading.Barrier(8)

    def add(queue: RunQueue) -> None:
        start.wait()
        added.extend(queue.add([BASE] * 3))

    threads = [threading.Thread(target=add, args=(queues[n % 2],)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({run.id for run in added}) == 24 and all((tmp_path / "runs" / run.id).is_dir() for run in added)


# --- saves that fail -----------------------------------------------------------------------------


def test_a_start_refused_for_a_full_disk_is_not_queued(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    queue = RunQueue(tmp_path)
    (kept,) = queue.add([BASE])
    monkeypatch.setattr(queue_module, "write_text_atomic", full_disk)
    with pytest.raises(QueueError, match="could not be saved.*disk is full"):
        queue.add([BASE, BASE], ["a", "b"])
    with pytest.raises(QueueError, match="could not be saved"):
        queue.cancel(kept.id)
    assert [(run.id, run.state) for run in queue.runs()] == [(kept.id, "queued")]  # memory unchanged
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([QUEUE_FILE, kept.id])  # no folder left behind


def test_transitions_that_cannot_be_saved_fail_their_run_and_are_saved_later(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    queue = RunQueue(tmp_path)
    first, second = queue.add([BASE, BASE])
    running = queue.claim_next("cpu 0")
    monkeypatch.setattr(queue_module, "write_text_atomic", full_disk)
    with pytest.raises(QueueError, match=f"the end of run {first.id} could not be saved"):
        queue.finish(running.id, "done")
    assert queue.get(first.id).state == "failed" and "it ended (done) but the run queue could not be saved" in queue.get(first.id).reason
    with pytest.raises(QueueError, match=f"run {second.id} could not start"):
        queue.claim_next("cpu 0")
    assert queue.get(second.id).state == "failed" and queue.claim_next("cpu 0") is None  # never claimed twice
    monkeypatch.undo()
    queue.add([BASE])  # the next save that works writes what happened meanwhile
    assert [entry["state"] for entry in saved(tmp_path)] == ["failed", "failed", "queued"]


# --- the file is not trusted ---------------------------------------------------------------------


def entry(run_id: str, **changes: object) -> dict:
    config = replace(BASE, out_dir=f"/elsewhere/{run_id}").to_dict()
    return {"id": run_id, "config": config, "grid": None, "state": "queued", "queued_at": 1.0e9, "visitor": "", **changes}


def write_queue(root: Path, entries: list) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / QUEUE_FILE).write_text(json.dumps({"format_version": 1, "runs": entries}))


def test_each_entry_is_checked_and_a_bad_one_costs_only_itself(tmp_path: Path) -> None:
    huge = entry("huge-seed")
    huge["config"]["train"]["seed"] = 99999999999999999999999
    write_queue(tmp_path, [entry(f"good-{n}") for n in range(5)] + [entry("odd-state", state="paused"), huge, entry("../escape"), entry("good-0")])
    runs = {run.id: run for run in RunQueue(tmp_path).runs()}
    assert list(runs) == [f"good-{n}" for n in range(5)] + ["odd-state", "huge-seed"]  # no path outside, no repeated id
    assert all(runs[f"good-{n}"].state == "queued" for n in range(5))  # five queued runs kept
    assert runs["odd-state"].state == "failed" and "its state 'paused' is not one of" in runs["odd-state"].reason
    assert runs["huge-seed"].state == "failed" and "seed must be a whole number from 0 to 4,294,967,295" in runs["huge-seed"].reason
    assert not runs["huge-seed"].settings_known
    assert all(run.config.out_dir == str(tmp_path / run.id) for run in runs.values())  # each in its own place, never /elsewhere
    orjson.dumps([run.to_dict() for run in runs.values()])  # what the page is sent is 64-bit and JSON safe
    assert list(tmp_path.glob(f"{QUEUE_FILE}.unreadable-*")) == []
    # a number longer than Python reads (4,300 digits) fails its entry only, not the file
    longer = entry("longer-than-python-reads")
    longer["config"]["train"]["seed"] = 424242
    write_queue(tmp_path / "again", [entry("fine"), longer])
    raw = (tmp_path / "again" / QUEUE_FILE).read_text().replace("424242", "9" * 5000)
    (tmp_path / "again" / QUEUE_FILE).write_text(raw)
    states = {run.id: run.state for run in RunQueue(tmp_path / "again").runs()}
    assert states == {"fine": "queued", "longer-than-python-reads": "failed"}


def test_waiting_runs_read_back_train_with_the_owner_s_data_and_device(tmp_path: Path) -> None:
    poisoned = entry("poisoned", config={**entry("x")["config"], "data_cache": "/home/someone", "data_urls": ["http://10.0.0.1/x"], "device": "cuda:7"})
    write_queue(tmp_path, [poisoned, entry("ended", state="done")])

    def rebase(cfg: RunConfig) -> RunConfig:
        return replace(cfg, data=None, data_cache=str(tmp_path / "cache"), data_urls=("http://mirror/sms.zip",), device="cpu")

    runs = {run.id: run for run in RunQueue(tmp_path, rebase=rebase).runs()}
    cfg = runs["poisoned"].config
    assert (cfg.data_cache, cfg.data_urls, cfg.device, cfg.out_dir) == (str(tmp_path / "cache"), ("http://mirror/sms.zip",), "cpu", str(tmp_path / "poisoned"))


def test_times_and_texts_of_an_entry_are_checked_too(tmp_path: Path) -> None:
    write_queue(tmp_path, [entry("late", queued_at=1e300), entry("named", reason={"not": "text"}), entry("fine")])
    runs = {run.id: run for run in RunQueue(tmp_path).runs()}
    assert runs["late"].state == "failed" and runs["late"].queued_at == 0.0 and math.isfinite(runs["late"].queued_at)
    assert runs["named"].state == "failed" and runs["fine"].state == "queued"


def test_an_added_run_reaches_the_file_before_add_returns(tmp_path: Path) -> None:
    queue = RunQueue(tmp_path)
    before = time.time()
    (run,) = queue.add([BASE], visitor="ann")
    assert saved(tmp_path)[0]["id"] == run.id and saved(tmp_path)[0]["visitor"] == "ann" and run.queued_at >= before
