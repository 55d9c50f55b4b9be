"""The cost lines of the app: beside Start on the Train tab, under a grid's preview on the Runs tab."""

from dataclasses import asdict, replace

import pytest
from app_fixtures import running_app, train_controls

from engine import calibration
from engine.calibration import Calibration
from engine.runs import cost
from scripts.load_test import local_client
from ui.cost_view import MEASURING, CostView

FAKE = Calibration("fake", step_fixed_s=0.2, step_per_token_s=0.004, forward_fixed_s=0.05, forward_per_token_s=0.0013)


@pytest.fixture
def subprocess_calibrations(monkeypatch):
    """The web app's subprocess calibration replaced by FAKE kept in the cache as the subprocess keeps it; counts its calls."""
    calls = []

    def fake(shape, device, precision, key, threads, path):
        calls.append(key)
        calibration.keep(replace(FAKE, key=key), path)
        return calibration.cached(key, path)

    monkeypatch.setattr(cost, "calibrate_in_subprocess", fake)
    return calls


def test_the_train_line_measures_once_then_answers_at_once(lab, subprocess_calibrations):
    view = CostView(lab)
    controls = asdict(train_controls(lab.settings.model, max_steps=0.0, epochs=2.0))
    first = list(view.run_line(**controls))
    assert first[0] == MEASURING and len(subprocess_calibrations) == 1
    assert first[-1].startswith("About ") and "on this machine (CPU), peak memory " in first[-1] and "an epoch" in first[-1]
    again = list(view.run_line(**controls))
    assert again == first[-1:] and len(subprocess_calibrations) == 1  # cached: no measuring
    longer = list(view.run_line(**{**controls, "epochs": 20.0}))
    assert longer != again and len(subprocess_calibrations) == 1


def test_the_train_line_says_what_is_wrong_and_what_will_be_refused(lab, subprocess_calibrations, monkeypatch):
    view = CostView(lab)
    controls = asdict(train_controls(lab.settings.model))
    (wrong,) = view.run_line(**{**controls, "batch_size": 0.0})
    assert wrong.startswith("No estimate for these settings:") and "batch_size" in wrong
    monkeypatch.setattr(cost, "available_bytes", lambda device: 1000)
    line = list(view.run_line(**controls))[-1]
    assert "**It will be refused:**" in line and "GB available" in line


def test_the_grid_line_counts_runs_and_workers(lab, subprocess_calibrations):
    view = CostView(lab)
    controls = asdict(train_controls(lab.settings.model))
    workers = len(lab.scheduler.workers.slots)
    lines = list(view.grid_line([1, 2, 4], "", [], "", [], [], "1, 2", **controls))
    assert lines[0] == MEASURING and lines[-1].startswith("6 runs, about ") and lines[-1].endswith(f" on {workers} worker{'s' if workers > 1 else ''}.")
    assert list(view.grid_line([], "", [], "", [], [], "", **controls)) == [""]  # no grid yet: its preview says why


@pytest.mark.slow
def test_the_app_measures_in_a_subprocess_and_shows_the_line(settings):
    """The served app, a real calibration of the tiny model: the line beside Start and the grid's, over the API."""
    with running_app(settings) as served:
        client = local_client(served.url)
        controls = asdict(train_controls(settings.model))
        line = client.predict(**controls, api_name="/estimate")
        assert "on this machine (CPU), peak memory" in line
        grid = client.predict(ranks=[1, 2], alphas="", scalings=[], lrs="", presets=[], layers=[], seeds="", **controls, api_name="/grid_estimate")
        assert grid.startswith("2 runs, about ")
    assert (settings.cache / "calibration.json").is_file()
