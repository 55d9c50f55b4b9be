"""A room under load: 30 visitors (gradio_client), each starting one short run on the tiny model in room
mode with two workers and polling it as its page does (scripts/load_test.py's `room_visitors`)."""

import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from app_fixtures import running_app

from scripts.load_test import room_visitors
from ui.settings import AppSettings

pytestmark = pytest.mark.slow

VISITORS = 30
# The app's own memory (the runs train in worker processes) may grow by this much for 30 visitors: their
# sessions, the queue, and the live views of the runs it keeps (KEPT_PROGRESS); a leak per poll would pass it.
MEMORY_GROWTH_MB = 400


def test_thirty_visitors_each_start_a_run_follow_it_and_every_run_ends_done(settings: AppSettings, small_data: Path) -> None:
    shutil.copytree(small_data, settings.cache)  # small splits: the time goes to the visitors, the queue and the workers
    room = replace(settings, room=True, workers=2)
    with running_app(room) as served:
        report = room_visitors(served.url, settings.model, visitors=VISITORS, steps=2)
        runs = {run.id: run for run in served.lab.scheduler.queue.runs()}
    print(report.summary())  # the figures the report quotes (pytest -s shows them)
    assert report.errors == []  # no request failed, every run ended in time
    assert len(set(report.runs.values())) == VISITORS and set(report.ended) == set(runs)
    assert set(report.ended.values()) == {"done"} and {run.state for run in runs.values()} == {"done"}
    assert report.strangers == []  # each visitor's page followed its own run, whoever else was training
    assert len({run.visitor for run in runs.values()}) == VISITORS  # each its own visitor, as a browser is
    assert max(report.rss_mb) - report.rss_mb[0] < MEMORY_GROWTH_MB, report.summary()
