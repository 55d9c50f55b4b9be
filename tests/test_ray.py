"""Runs on a real Ray cluster (a local one, as `ray.init` starts it): the same results as local workers, events while
they train, and the run folders back in this machine's runs folder."""

import json
import os
from pathlib import Path

import pytest
from conftest import tiny_run_config
from test_scheduler import assert_same_results, grid_of_four, results, run_grid

from engine.runs.local_workers import LocalWorkers, local_slots
from engine.train import StepDone

if os.getenv("CI", "").strip().lower() in ("1", "true", "yes"):
    import ray  # CI installs requirements-ray.txt: a missing package is an error there
else:
    ray = pytest.importorskip("ray")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_workers():
    from engine.runs.ray_workers import RayWorkers

    workers = RayWorkers(None, count=2)  # starts a local cluster, as `--ray` with no cluster running would not: the test's own
    yield workers
    ray.shutdown()


class Watching:
    """Ray workers that also note the training steps that reached this process while the runs went on."""

    def __init__(self, workers) -> None:
        self.workers, self.slots = workers, workers.slots
        self.steps_seen: dict[str, int] = {}

    def describe(self) -> str:
        return self.workers.describe()

    def launch(self, config, slot, on_event, on_end):
        def watch(event):
            if isinstance(event, StepDone):
                self.steps_seen[Path(config.out_dir).name] = event.step
            on_event(event)

        return self.workers.launch(config, slot, watch, on_end)


def test_ray_returns_the_same_adapters_and_metrics_as_local_workers(ray_workers, tiny_model_dir, prepared_data, tmp_path):
    assert ray_workers.describe() == "2 Ray workers (1 CPUs each)"
    base = tiny_run_config(tiny_model_dir, prepared_data, tmp_path, max_steps=6, eval_freq=3)
    runs = grid_of_four(base)
    watching = Watching(ray_workers)
    on_ray = run_grid(tmp_path / "ray", runs, watching)
    local = run_grid(tmp_path / "local", runs, LocalWorkers(local_slots(2, "cpu")))
    assert_same_results(results(on_ray), results(local))
    assert watching.steps_seen == {label: 6 for label, _ in runs}  # every step streamed back as it happened
    for view in on_ray:
        out = Path(view.run.config.out_dir)
        assert view.progress.saved.out_dir == out and (out / "adapter" / "adapter.safetensors").is_file() and (out / "loss.png").is_file()
        record = json.loads((out / "run.json").read_text())
        assert record["config"]["out_dir"] == str(out) and record["config"]["model"] == str(tiny_model_dir)  # this machine's paths, not the task's
        assert record["ray_node"]


def test_a_ray_run_stops_within_a_step_and_saves_here(ray_workers, tiny_model_dir, prepared_data, tmp_path):
    import time

    from engine.runs.scheduler import Scheduler

    scheduler = Scheduler(tmp_path / "runs", ray_workers)
    (run,) = scheduler.submit([tiny_run_config(tiny_model_dir, prepared_data, tmp_path, max_steps=None, epochs=30, eval_freq=1000)])
    deadline = time.monotonic() + 300
    while (view := scheduler.view(run.id)).progress is None or view.progress.step < 2:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    scheduler.stop(run.id)
    assert scheduler.wait([run.id], timeout=120)
    scheduler.close()
    stopped = scheduler.view(run.id)
    assert stopped.run.state == "stopped" and stopped.progress.step < stopped.progress.total_steps
    assert (Path(stopped.run.config.out_dir) / "adapter" / "adapter.safetensors").is_file()
