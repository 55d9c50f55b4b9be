"""Scripting with gradio_client: every run control takes any run id of queue.json, and the README's
script (start a run, wait for it, classify with it) runs as written."""

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from app_fixtures import RunningApp, running_app
from fake_workers import FakeWorkers

from engine.runs.scheduler import Scheduler
from scripts.load_test import local_client
from ui.lab import Lab
from ui.settings import AppSettings

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(params=[False, True], ids=["room off", "room on"])
def held(request: pytest.FixtureRequest, settings: AppSettings) -> Iterator[RunningApp]:
    """The app whose runs never train (a fake worker holds the running one)."""
    settings = replace(settings, room=request.param)
    lab = Lab(settings, scheduler=Scheduler(settings.out, FakeWorkers(1)))
    try:
        with running_app(settings, lab=lab) as served:
            yield served
    finally:
        lab.close(timeout=1)


def test_every_run_control_takes_any_run_id_from_a_script(held: RunningApp, settings: AppSettings) -> None:
    """The attack: /stop_run and /cancel_run refused every id ("Value ... is not in the list of choices: []")."""
    script = local_client(held.url)  # a client that never loaded the page: its pick lists are empty
    started = [script.predict(model=settings.model, api_name="/start")[12]["value"] for _ in range(3)]
    running, second, third = started
    scheduler = held.lab.scheduler
    assert script.predict(third, api_name="/move_up").startswith(f"Moved {third} one place up")
    assert [run.id for run in scheduler.queue.runs() if run.state == "queued"] == [third, second]
    assert script.predict(third, api_name="/move_down").startswith(f"Moved {third} one place down")
    assert script.predict(second, api_name="/cancel_run").startswith(f"Cancelled {second}")
    assert script.predict(third, api_name="/watch_run") == third
    assert script.predict(third, api_name="/follow")[0].startswith(f"**Run {third}**")
    assert script.predict(third, api_name="/stop") == "Cancelled: the run left the queue before it started."
    assert script.predict(running, api_name="/stop_run").startswith(f"Stopping {running}")
    assert scheduler.wait(timeout=30)
    assert [scheduler.queue.get(run).state for run in started] == ["stopped", "cancelled", "cancelled"]
    info = script.predict(running, api_name="/run_info")
    assert (info["id"], info["state"], info["place"]) == (running, "stopped", None)
    for resume in ("/resume_run", "/resume"):  # the id reaches the run's folder, which these fake runs never wrote
        with pytest.raises(Exception, match=f"{running} has no run record"):
            script.predict(running, api_name=resume)
    with pytest.raises(Exception, match="no run 'nothing-here' in the queue"):
        script.predict("nothing-here", api_name="/stop_run")
    other = local_client(held.url)
    (mine,) = [other.predict(model=settings.model, api_name="/start")[12]["value"]]
    if held.lab.room.on:  # in a room a script acts on its own runs only
        with pytest.raises(Exception, match=f"run {mine} is another visitor's: only the visitor who started it"):
            script.predict(mine, api_name="/stop_run")
        assert script.predict("", api_name="/run_info")["id"] == third and other.predict("", api_name="/run_info")["yours"] is True
    assert other.predict(mine, api_name="/stop_run").startswith(f"Stopping {mine}")


def room_example() -> str:
    """The README's script for a room, as a reader copies it."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    (example,) = [block for block in blocks if "/run_info" in block]
    return example


@pytest.mark.slow
def test_the_readme_s_script_starts_a_run_waits_for_it_and_classifies(settings: AppSettings, prepared_data: Path) -> None:
    shutil.copytree(prepared_data, settings.cache)  # the data is ready, as the doc asks
    example = room_example()
    with running_app(replace(settings, room=True)) as served:
        script = example.replace('URL = "http://127.0.0.1:7860/"', f"URL = {served.url!r}").replace('MODEL = "gpt2-small"', f"MODEL = {settings.model!r}")
        assert script.count(served.url) == 1 and script.count(settings.model) == 1  # the reader changes these two lines only
        env = {**os.environ, "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_OFFLINE": "1"}
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=900, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        (run,) = served.lab.scheduler.queue.runs()
    assert re.search(rf"^run {re.escape(run.id)}: done, test accuracy 0\.\d+$", result.stdout, re.M), result.stdout
    assert re.search(rf"^(ham|spam) - \d+ tokens read\. Answered by run {re.escape(run.id)};", result.stdout, re.M), result.stdout
    assert run.config.train.max_steps == 30 and run.state == "done"
