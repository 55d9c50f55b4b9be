"""The run queue on real worker processes: grids, results equal to lone runs, a killed worker, a restart, concurrent visitors."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import tiny_run_config
from safetensors.torch import load_file

from engine.runs.grid import Grid
from engine.runs.local_workers import LocalWorkers, local_slots
from engine.runs.queue import QUEUE_FILE, QueueError, RunQueue
from engine.runs.scheduler import RunView, Scheduler

pytestmark = pytest.mark.slow


def grid_of_four(base):
    return Grid(rank=(1, 4), seed=(1, 2)).expand(base)


def results(views: list[RunView]) -> dict[str, tuple]:
    """Per run label: its state, final metrics and adapter tensors."""
    out = {}
    for view in views:
        tensors = load_file(str(Path(view.run.config.out_dir) / "adapter" / "adapter.safetensors"))
        final = {name: (m.loss, m.accuracy, m.confusion) for name, m in view.progress.final.items()}
        out[view.run.id.rsplit("/", 1)[-1]] = (view.run.state, final, tensors)
    return out


def run_grid(root: Path, runs, workers: LocalWorkers) -> list[RunView]:
    scheduler = Scheduler(root, workers)
    queued = scheduler.submit([cfg for _, cfg in runs], [label for label, _ in runs])
    assert scheduler.wait([r.id for r in queued], timeout=600)
    scheduler.close()
    return [v for v in scheduler.views() if v.run.id in {r.id for r in queued}]


def assert_same_results(left: dict, right: dict) -> None:
    assert left.keys() == right.keys()
    for label in left:
        (state_a, final_a, tensors_a), (state_b, final_b, tensors_b) = left[label], right[label]
        assert state_a == state_b == "done", label
        assert final_a == final_b, label
        assert tensors_a.keys() == tensors_b.keys()
        for key in tensors_a:
            torch.testing.assert_close(tensors_a[key], tensors_b[key], rtol=0, atol=0, msg=f"{label} {key}")


def test_two_workers_finish_a_grid_and_each_run_equals_the_same_run_alone(tiny_model_dir, prepared_data, tmp_path):
    base = tiny_run_config(tiny_model_dir, prepared_data, tmp_path, max_steps=6, eval_freq=3)
    runs = grid_of_four(base)
    slots = local_slots(2, "cpu")
    together = run_grid(tmp_path / "together", runs, LocalWorkers(slots))
    assert sorted(v.run.worker for v in together) == sorted([slot.name for slot in slots] * 2)  # both workers took runs (names from this machine's cores)
    # Each run alone: the same slot layout (a core each), one run in the queue at a time.
    alone = [view for label, cfg in runs for view in run_grid(tmp_path / "alone" / label, [(label, cfg)], LocalWorkers(local_slots(2, "cpu")))]
    assert_same_results(results(together), results(alone))
    record = json.loads((Path(together[0].run.config.out_dir) / "run.json").read_text())
    assert record["config"]["lora"]["rank"] == 1 and record["config"]["train"]["seed"] == 1


class SpyWorkers(LocalWorkers):
    """Real local workers that also keep each launched process, so a test can kill one."""

    def __init__(self, slots) -> None:
        super().__init__(slots)
        self.launched = {}

    def launch(self, config, slot, on_event, on_end, resume=False):
        worker = super().launch(config, slot, on_event, on_end)
        self.launched[Path(config.out_dir).name] = worker
        return worker


def test_a_killed_worker_fails_its_run_only_and_the_queue_goes_on(tiny_model_dir, prepared_data, tmp_path):
    base = tiny_run_config(tiny_model_dir, prepared_data, tmp_path, max_steps=None, epochs=3, eval_freq=1000)
    runs = [("victim", base), ("neighbour", base.with_train(max_steps=4)), ("next", base.with_train(max_steps=4))]
    workers = SpyWorkers(local_slots(2, "cpu"))
    scheduler = Scheduler(tmp_path / "runs", workers)
    queued = scheduler.submit([cfg for _, cfg in runs], [label for label, _ in runs])
    victim = queued[0].id
    deadline = time.monotonic() + 120
    while (view := scheduler.view(victim)).progress is None or view.progress.step < 2:
        assert time.monotonic() < deadline, "the run never started training"
        time.sleep(0.05)
    os.kill(workers.launched["victim"].pid, signal.SIGKILL)
    assert scheduler.wait(timeout=600)
    scheduler.close()
    states = {v.run.id.rsplit("/", 1)[-1]: (v.run.state, v.run.reason) for v in scheduler.views()}
    assert states["victim"][0] == "failed" and "killed by SIGKILL" in states["victim"][1]
    assert states["neighbour"] == ("done", None) and states["next"] == ("done", None)


RESTART_SCRIPT = """
import sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
from engine.config import RunConfig
from engine.runs.local_workers import LocalWorkers, local_slots
from engine.runs.scheduler import Scheduler
config = RunConfig.from_dict(__import__("json").loads(sys.argv[1]))
scheduler = Scheduler(Path(sys.argv[2]), LocalWorkers(local_slots(1, "cpu")))
queued = scheduler.submit([config, config.with_train(max_steps=3), config.with_train(max_steps=3)])
while (view := scheduler.view(queued[0].id)).progress is None or view.progress.step < 1:
    time.sleep(0.05)
print("training", flush=True)
time.sleep(600)
"""


def test_the_queue_survives_a_killed_app(tiny_model_dir, prepared_data, tmp_path):
    long_run = tiny_run_config(tiny_model_dir, prepared_data, tmp_path, max_steps=None, epochs=20, eval_freq=1000)
    root = tmp_path / "runs"
    script = RESTART_SCRIPT.format(root=str(Path(__file__).resolve().parents[1]))
    app = subprocess.Popen([sys.executable, "-c", script, json.dumps(long_run.to_dict()), str(root)], stdout=subprocess.PIPE, text=True)
    try:
        assert app.stdout.readline().strip() == "training"
    finally:
        app.kill()  # SIGKILL: no cleanup at all
        app.wait()
    before = RunQueue(root).runs()
    assert [run.state for run in before] == ["interrupted", "queued", "queued"]
    assert "app stopped" in before[0].reason
    scheduler = Scheduler(root, LocalWorkers(local_slots(1, "cpu")))  # the app started again
    assert scheduler.wait(timeout=600)
    scheduler.close()
    assert [run.state for run in RunQueue(root).runs()] == ["interrupted", "done", "done"]
    # the orphaned worker noticed its parent was gone, stopped and saved what it had
    interrupted = Path(before[0].config.out_dir)
    deadline = time.monotonic() + 60
    while not (interrupted / "adapter" / "adapter.safetensors").is_file():
        assert time.monotonic() < deadline, "the orphaned worker saved nothing"
        time.sleep(0.2)


def test_runs_added_together_get_folders_of_their_own(tmp_path, tiny_model_dir, prepared_data):
    queue = RunQueue(tmp_path)
    base = tiny_run_config(tiny_model_dir, prepared_data, tmp_path)
    added = queue.add([base, base.with_train(max_steps=3), base.with_train(max_steps=4)])  # in one second, surely
    assert len({run.id for run in added}) == 3 and len({run.config.out_dir for run in added}) == 3
    assert [run.config.train.max_steps for run in RunQueue(tmp_path).runs()] == [base.train.max_steps, 3, 4]


def test_visitors_adding_at_the_same_instant_get_each_run_exactly_once(tmp_path, tiny_model_dir, prepared_data):
    queue = RunQueue(tmp_path)
    base = tiny_run_config(tiny_model_dir, prepared_data, tmp_path)
    start = threading.Barrier(8)
    added: list = []

    def visitor(number: int) -> None:
        start.wait()
        added.extend(queue.add([replace(base, owner=f"visitor {number}")] * 3))

    threads = [threading.Thread(target=visitor, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ids = [run.id for run in added]
    assert len(ids) == 24 and len(set(ids)) == 24
    saved = RunQueue(tmp_path).runs()  # what the file kept
    assert sorted(run.id for run in saved) == sorted(ids)
    assert sorted(run.config.owner for run in saved) == sorted(f"visitor {n}" for n in range(8) for _ in range(3))
    assert all(run.config.out_dir == str(tmp_path / run.id) for run in saved)


def test_queued_runs_move_and_cancel_and_limits_refuse_with_a_message(tmp_path, tiny_model_dir, prepared_data):
    queue = RunQueue(tmp_path, max_waiting=3)
    base = tiny_run_config(tiny_model_dir, prepared_data, tmp_path)
    a, b, c = queue.add([base, base, base])
    queue.move(c.id, 2)
    assert [run.id for run in queue.runs()] == [c.id, a.id, b.id]
    queue.move(c.id, -1)
    assert [run.id for run in queue.runs()] == [a.id, c.id, b.id]
    with pytest.raises(QueueError, match="at most 3"):
        queue.add([base])
    queue.cancel(b.id)
    assert queue.get(b.id).state == "cancelled"
    with pytest.raises(QueueError, match="only a waiting run"):
        queue.cancel(b.id)
    queue.add([base])  # a cancelled run frees its place
    assert queue.claim_next("cpu 0").id == a.id
    with pytest.raises(QueueError, match="only a waiting run can be moved"):
        queue.move(a.id, 1)


def test_an_unreadable_queue_file_is_kept_aside_not_lost(tmp_path):
    (tmp_path / QUEUE_FILE).write_text("{broken")
    assert RunQueue(tmp_path).runs() == []
    kept = list(tmp_path.glob(f"{QUEUE_FILE}.unreadable-*"))
    assert len(kept) == 1 and kept[0].read_text() == "{broken"
