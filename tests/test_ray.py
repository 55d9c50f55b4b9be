"""Runs on a real Ray cluster (two nodes on this machine, as `ray.cluster_utils.Cluster` starts them): the same
results as local workers, events streamed in order as they train, checkpoints and run folders back in this
machine's runs folder, Stop graceful first and by force after the grace period, no retries, the weights
released when their runs end, and the connection refused quickly and clearly when it cannot work."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_run_config
from test_scheduler import assert_same_results, results, run_grid

from engine.adapter import read_adapter
from engine.checkpoint import CHECKPOINT_FILE, read_checkpoint
from engine.errors import ConfigError
from engine.runs.grid import Grid
from engine.runs.local_workers import LocalWorkers, Slot
from engine.runs.ray_workers import CONNECT_TIMEOUT_S, RayRun, RayWorkers, ray_slots
from engine.runs.resume import resumed_config
from engine.runs.scheduler import Scheduler
from engine.train import StepDone

ROOT = Path(__file__).resolve().parents[1]
NODE_CPUS = (2, 2)  # a cluster of 4 CPUs on two nodes, whatever this machine has: tasks on the node without the driver get the weights shipped


def import_ray():
    if os.getenv("CI", "").strip().lower() in ("1", "true", "yes"):
        import ray  # CI installs requirements-ray.txt: a missing package is an error there

        return ray
    return pytest.importorskip("ray")


@pytest.fixture(scope="module")
def cluster():
    ray = import_ray()
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": NODE_CPUS[0], "object_store_memory": 100 * 2**20, "include_dashboard": False})
    for cpus in NODE_CPUS[1:]:
        cluster.add_node(num_cpus=cpus, object_store_memory=100 * 2**20)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="module")
def ray_workers_on(cluster):
    return RayWorkers(cluster.address, count=2)  # connects as `--ray ADDRESS` does


@pytest.fixture
def schedulers(tmp_path):
    """Make schedulers on given workers; each is closed after the test, passed or not (no task outlives it)."""
    made = []

    def make(workers):
        made.append(Scheduler(tmp_path / "runs", workers))
        return made[-1]

    yield make
    for scheduler in made:
        scheduler.close()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # nothing listens there once the socket closes


def wait_for(condition, what: str, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, what
        time.sleep(0.05)
    return value


class Watching:
    """Ray workers that also note, per run, every training step and every end that reached this process, and
    the weights the driver held meanwhile."""

    def __init__(self, workers) -> None:
        self.workers, self.slots = workers, workers.slots
        self.steps: dict[str, list[int]] = {}
        self.ends: dict[str, int] = {}
        self.weights_held: list[dict[str, int]] = []

    def describe(self) -> str:
        return self.workers.describe()

    def launch(self, config, slot, on_event, on_end, resume=False):
        label = Path(config.out_dir).name
        self.steps[label], self.ends[label] = [], 0

        def watch(event):
            if isinstance(event, StepDone):
                self.steps[label].append(event.step)
                self.weights_held.append(self.workers.weights.held())
            on_event(event)

        def end(ended):
            self.ends[label] += 1
            on_end(ended)

        return self.workers.launch(config, slot, watch, end)


# --- the slots, from the cluster's resources (no Ray needed) -----------------------------------------------------


@pytest.mark.parametrize("cores", sorted({2, 4, 8, os.cpu_count() or 1}))
def test_cpu_slots_share_the_cluster_without_overbooking_it(cores):
    for nodes in ([{"CPU": cores}], [{"CPU": cores}, {"CPU": cores}]):
        total = sum(node["CPU"] for node in nodes)
        slots = ray_slots(nodes, None)
        assert len(slots) == max(1, total // 2) and all(slot.num_gpus == 0 for slot in slots)
        assert all(1 <= slot.num_cpus <= cores for slot in slots) and sum(slot.num_cpus for slot in slots) <= max(total, len(slots))
        assert len(ray_slots(nodes, total)) == total
        with pytest.raises(ConfigError, match=f"from 1 to {total} on this Ray cluster"):
            ray_slots(nodes, total + 1)


@pytest.mark.parametrize("cores", [4, 8])
def test_gpu_slots_reserve_each_gpus_share_of_its_nodes_cpus(cores):
    nodes = [{"CPU": cores, "GPU": 2}, {"CPU": 2 * cores, "GPU": 2}, {"CPU": 64}]  # the CPU-only node holds no GPU task
    slots = ray_slots(nodes, None)
    assert len(slots) == 4 and all(slot.num_gpus == 1 and slot.num_cpus > 0 for slot in slots)
    for node in nodes[:2]:  # every GPU of every GPU node can take a task with its CPUs
        assert node["GPU"] * slots[0].num_cpus <= node["CPU"]
    assert slots[0].num_cpus == cores // 2  # all the smaller node's CPUs are shared among its GPUs
    with pytest.raises(ConfigError, match="from 1 to 4 on this Ray cluster"):
        ray_slots(nodes, 5)


# --- connecting ------------------------------------------------------------------------------------------------


def test_an_address_where_nothing_listens_is_refused_at_once():
    import_ray()
    address = f"127.0.0.1:{closed_port()}"
    outcome = {}

    def connect():
        try:
            RayWorkers(address)
        except Exception as error:
            outcome["error"] = error

    trying = threading.Thread(target=connect, daemon=True)
    trying.start()
    trying.join(CONNECT_TIMEOUT_S + 30)  # Ray alone would retry this address for about 14 minutes
    assert not trying.is_alive(), "the connection was not refused"
    assert isinstance(outcome.get("error"), ConfigError)
    message = str(outcome["error"])
    assert address in message and "nothing answers" in message and "ray start --head" in message


SILENT_SCRIPT = """
import sys, time
sys.path.insert(0, {root!r})
from engine.checkpoint import CHECKPOINT_FILE, read_checkpoint
from engine.errors import ConfigError
from engine.runs.ray_workers import RayWorkers
started = time.monotonic()
try:
    RayWorkers(sys.argv[1])
except ConfigError as error:
    print(f"{{time.monotonic() - started:.1f}}", error, flush=True)
"""


@pytest.mark.slow
def test_an_address_that_never_answers_as_ray_fails_within_30_s(tmp_path):
    import_ray()
    with socket.socket() as silent:  # accepts connections (the kernel's backlog) and never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        script = SILENT_SCRIPT.format(root=str(ROOT))
        done = subprocess.run([sys.executable, "-c", script, address], capture_output=True, text=True, timeout=180, cwd=tmp_path)
    took, _, message = done.stdout.strip().partition(" ")
    assert message, done.stderr[-2000:]
    assert float(took) < 30 and address in message and "ray start --head" in message


ENGINE_SCRIPT = """
import sys
sys.path.insert(0, {root!r})  # this process finds engine; Ray's workers are not told where
import ray
from engine.checkpoint import CHECKPOINT_FILE, read_checkpoint
from engine.errors import ConfigError
from engine.runs.ray_workers import RayWorkers, job_files
ray.init(address=sys.argv[1], logging_level="ERROR")
try:
    RayWorkers(None)
    print("accepted without engine", flush=True)
except ConfigError as error:
    print("refused:", error, flush=True)
ray.shutdown()
with job_files() as env:
    ray.init(address=sys.argv[1], runtime_env=env, logging_level="ERROR")
print("accepted:", RayWorkers(None).describe(), flush=True)
"""


@pytest.mark.slow
def test_ray_started_in_this_process_must_give_its_workers_the_engine(cluster, tmp_path):
    script = ENGINE_SCRIPT.format(root=str(ROOT))
    done = subprocess.run([sys.executable, "-c", script, cluster.address], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 2, done.stdout + done.stderr[-3000:]
    assert lines[0].startswith("refused:") and "cannot use LoRA Lab's engine" in lines[0] and "ray.shutdown()" in lines[0]
    assert lines[1].startswith("accepted: ") and "Ray worker" in lines[1]


# --- runs on the cluster ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_ray_returns_the_same_adapters_and_metrics_as_local_workers(ray_workers_on, tiny_model_dir, small_data, tmp_path):
    ray = import_ray()
    cpus = int(ray.cluster_resources()["CPU"])
    assert ray_workers_on.describe() == f"2 Ray workers ({cpus // 2} CPU{'s' if cpus // 2 != 1 else ''} each)"
    runs = Grid(rank=(1, 4)).expand(tiny_run_config(tiny_model_dir, small_data, tmp_path, max_steps=6, eval_freq=3))
    watching = Watching(ray_workers_on)
    on_ray = run_grid(tmp_path / "ray", runs, watching)
    local = run_grid(tmp_path / "local", runs, LocalWorkers(local_slots_like(ray_workers_on.slots)))
    assert_same_results(results(on_ray), results(local))
    local_folders = {view.run.id.rsplit("/", 1)[-1]: Path(view.run.config.out_dir) for view in local}
    # every step streamed back as it happened, in order, once (a retried task would say its steps again), and one end per run
    assert watching.steps == {label: list(range(1, 7)) for label, _ in runs} and watching.ends == {label: 1 for label, _ in runs}
    model = str(tiny_model_dir)
    assert any(held.get(model) for held in watching.weights_held)  # shipped to the node without the driver while runs needed it
    assert ray_workers_on.weights.held() == {}  # and let go once they ended
    for view in on_ray:
        out = Path(view.run.config.out_dir)
        assert view.progress.saved.out_dir == out and (out / "adapter" / "adapter.safetensors").is_file() and (out / "loss.png").is_file()
        record = json.loads((out / "run.json").read_text())
        assert record["config"]["out_dir"] == str(out) and record["config"]["model"] == model  # this machine's paths, not the task's
        assert record["ray_node"] and record["state"] == "done"
        assert record["best"]["adapter"] == "adapter-best"  # best at an estimate (after step 1 or 4), never the last step (6)
        best_there, best_here = (read_adapter(folder / "adapter-best")[1] for folder in (out, local_folders[view.run.id.rsplit("/", 1)[-1]]))
        assert best_there.keys() == best_here.keys() and all(torch.equal(best_there[name], best_here[name]) for name in best_here)  # back like the last


def local_slots_like(ray_slots) -> list[Slot]:
    """Local worker slots with as many threads as the Ray slots (results are bitwise equal only with equal threads)."""
    cores = sorted(os.sched_getaffinity(0))
    threads = int(ray_slots[0].num_cpus)
    return [Slot(f"cpu {i}", "cpu", tuple(cores[(i * threads + j) % len(cores)] for j in range(threads))) for i in range(len(ray_slots))]


def long_run(tiny_model_dir, prepared_data, tmp_path):
    return tiny_run_config(tiny_model_dir, prepared_data, tmp_path, max_steps=None, epochs=30, eval_freq=2)


def checkpoint_here(scheduler, run_id) -> dict | None:
    """The run's record in this machine's runs folder once a checkpoint (adapter + record) has come back."""
    out = Path(scheduler.view(run_id).run.config.out_dir)
    try:
        record = json.loads((out / "run.json").read_text())
    except (OSError, ValueError):
        return None
    return record if record.get("checkpoint_step") and (out / "adapter" / "adapter.safetensors").is_file() else None


@pytest.mark.slow
def test_a_ray_run_stops_within_a_step_saves_here_and_resumes_on_the_cluster(ray_workers_on, schedulers, tiny_model_dir, prepared_data, tmp_path):
    scheduler = schedulers(ray_workers_on)
    (run,) = scheduler.submit([long_run(tiny_model_dir, prepared_data, tmp_path)])
    wait_for(lambda: (view := scheduler.view(run.id)).progress is not None and view.progress.step >= 2, "the run never trained")
    scheduler.stop(run.id)
    assert scheduler.wait([run.id], timeout=120)
    stopped = scheduler.view(run.id)
    assert stopped.run.state == "stopped" and stopped.run.reason is None and stopped.progress.step < stopped.progress.total_steps
    out = Path(stopped.run.config.out_dir)
    assert (out / "adapter" / "adapter.safetensors").is_file() and (out / "loss.png").is_file()  # saved by the run itself
    assert json.loads((out / "run.json").read_text())["state"] == "stopped"
    assert (out / CHECKPOINT_FILE).is_file()  # the training state came back with the run's files
    assert ray_workers_on.weights.held() == {}  # no run in flight needs the weights any more

    # Resumed on the cluster: the task starts from this machine's folder and its files come back to it.
    reached = stopped.progress.step
    scheduler.resume(run.id, resumed_config(out, max_steps=reached + 2))
    assert scheduler.wait([run.id], timeout=120)
    resumed = json.loads((out / "run.json").read_text())
    assert scheduler.view(run.id).run.state == "done" and resumed["state"] == "done" and resumed["steps"] == reached + 2
    assert [(s["start_step"], s["end_step"]) for s in resumed["segments"]] == [(0, reached), (reached, reached + 2)]
    assert resumed["config"]["out_dir"] == str(out) and read_checkpoint(out / CHECKPOINT_FILE).position.step == reached + 2


@pytest.mark.slow
def test_a_ray_run_deaf_to_stop_is_cancelled_after_the_grace_period_and_keeps_its_checkpoint(
    ray_workers_on, schedulers, tiny_model_dir, prepared_data, tmp_path, monkeypatch
):
    monkeypatch.setattr(RayRun, "_ask_to_stop", lambda self: None)  # the run never hears Stop: only the hard stop can end it
    monkeypatch.setattr(ray_workers_on, "stop_grace_s", 1.0)
    scheduler = schedulers(ray_workers_on)
    (run,) = scheduler.submit([long_run(tiny_model_dir, prepared_data, tmp_path)])
    record = wait_for(lambda: checkpoint_here(scheduler, run.id), "no checkpoint came back")
    scheduler.stop(run.id)
    assert scheduler.wait([run.id], timeout=120)
    ended = scheduler.view(run.id).run
    assert ended.state == "stopped" and "cancelled" in ended.reason and "adapter saved at step" in ended.reason
    wait_for(lambda: not process_alive(record["process"]["pid"]), "the task's process outlived its cancellation", timeout=60)
    out = Path(ended.config.out_dir)
    closed = json.loads((out / "run.json").read_text())
    assert closed["state"] == "stopped" and closed["checkpoint_step"] >= record["checkpoint_step"] and (out / "adapter" / "adapter.safetensors").is_file()
    assert not (out / "loss.png").exists()  # the run itself never got to save: what is here came with its checkpoints


@pytest.mark.slow
def test_a_killed_ray_task_fails_once_with_its_reason_and_leaves_its_checkpoint_here(ray_workers_on, schedulers, tiny_model_dir, prepared_data, tmp_path):
    watching = Watching(ray_workers_on)
    scheduler = schedulers(watching)
    (run,) = scheduler.submit([long_run(tiny_model_dir, prepared_data, tmp_path)])
    record = wait_for(lambda: checkpoint_here(scheduler, run.id), "no checkpoint came back")
    os.kill(record["process"]["pid"], signal.SIGKILL)  # as the kernel's OOM killer would
    assert scheduler.wait([run.id], timeout=120)
    ended = scheduler.view(run.id).run
    assert ended.state == "failed" and "the Ray task failed" in ended.reason and "adapter saved at step" in ended.reason
    steps = next(iter(watching.steps.values()))
    assert steps == list(range(1, len(steps) + 1)) and next(iter(watching.ends.values())) == 1  # not run again
    out = Path(ended.config.out_dir)
    closed = json.loads((out / "run.json").read_text())
    assert closed["state"] == "failed" and closed["error"] == ended.reason and (out / "adapter" / "adapter.safetensors").is_file()


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
