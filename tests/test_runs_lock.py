"""One LoRA Lab owns a runs folder: a second app or sweep refuses at once, naming the folder and the holder;
a lock left by a killed process is taken over."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from app_fixtures import free_port

import app
import engine.runs.lock as lock_module
from engine.cli import main as engine_main
from engine.config import RunConfig
from engine.runs.lock import LOCK_FILE, FolderInUse, RunsFolderLock
from engine.runs.queue import QUEUE_FILE, RunQueue
from engine.runs.record import RECORD_FILE, this_process
from ui.lab import Lab
from ui.settings import AppSettings

HOLD = """
import sys, time
from engine.runs.lock import RunsFolderLock
RunsFolderLock.take(sys.argv[1], "a sweep")
print("held", flush=True)
time.sleep(600)
"""


def holder(root: Path) -> subprocess.Popen:
    """Another process holding `root`'s lock."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(root)], stdout=subprocess.PIPE, text=True, cwd=Path(app.__file__).parent)
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_second_owner_is_refused_naming_the_folder_and_the_holder(tmp_path: Path) -> None:
    process = holder(tmp_path / "runs")
    try:
        with pytest.raises(FolderInUse) as refused:
            RunsFolderLock.take(tmp_path / "runs", "a LoRA Lab app")
        message = str(refused.value)
        assert f"the runs folder {tmp_path / 'runs'} is in use by a sweep (process {process.pid} on " in message and "--out" in message
    finally:
        process.kill()
        process.wait()
    RunsFolderLock.take(tmp_path / "runs", "a LoRA Lab app").release()  # a killed holder's lock is taken over


def test_a_second_app_refuses_at_start_and_touches_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    settings = AppSettings(device="cpu", out=tmp_path / "runs", cache=tmp_path / "cache")
    first = Lab(settings)
    try:
        # the first app's running run: its record says running, in this process, which a second app must not settle as interrupted
        (run,) = first.scheduler.queue.add([RunConfig()])
        record = {"state": "running", "created": "2026-12-07T12:00:00+00:00", "config": RunConfig().to_dict(), "process": {**this_process(), "pid": 1}}
        (tmp_path / "runs" / run.id / RECORD_FILE).write_text(json.dumps(record))
        queue_before = (tmp_path / "runs" / QUEUE_FILE).read_text()
        monkeypatch.setattr(app, "launch", lambda *args, **kwargs: pytest.fail("the second app must not serve"))
        with pytest.raises(SystemExit, match=f"lora-lab: error: the runs folder {tmp_path / 'runs'} is in use by a LoRA Lab app \\(process {os.getpid()} "):
            app.main(["--out", str(tmp_path / "runs"), "--cache", str(tmp_path / "cache"), "--device", "cpu", "--no-browser", "--port", str(free_port())])
        assert json.loads((tmp_path / "runs" / run.id / RECORD_FILE).read_text())["state"] == "running"
        assert (tmp_path / "runs" / QUEUE_FILE).read_text() == queue_before
    finally:
        first.close()
    Lab(settings).close()  # once the first app stops, the folder is free


def test_a_sweep_on_a_folder_an_app_owns_refuses(tmp_path: Path, tiny_model_dir: Path, prepared_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lab = Lab(AppSettings(model=str(tiny_model_dir), device="cpu", out=tmp_path / "runs", cache=tmp_path / "cache"))
    try:
        argv = ["sweep", "--model", str(tiny_model_dir), "--data", str(prepared_data), "--rank", "1", "2", "--out", str(tmp_path / "runs")]
        assert engine_main(argv) != 0
        assert f"the runs folder {tmp_path / 'runs'} is in use by a LoRA Lab app" in capsys.readouterr().err
        assert RunQueue(tmp_path / "runs").runs() == []  # the sweep queued nothing there
    finally:
        lab.close()


def test_without_fcntl_the_lock_file_itself_is_the_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lock_module, "fcntl", None)  # as on Windows
    held = RunsFolderLock.take(tmp_path, "a LoRA Lab app")
    with pytest.raises(FolderInUse, match=f"process {os.getpid()}"):
        RunsFolderLock.take(tmp_path, "a sweep")
    held.release()
    assert not (tmp_path / LOCK_FILE).exists()
    dead = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead.send_signal(signal.SIGKILL)
    dead.wait()
    (tmp_path / LOCK_FILE).write_text(json.dumps({**this_process(), "pid": dead.pid, "purpose": "a killed app", "since": time.ctime()}))
    RunsFolderLock.take(tmp_path, "a LoRA Lab app").release()  # a dead process's file is taken over
