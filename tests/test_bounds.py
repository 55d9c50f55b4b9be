"""Every number a visitor sends is bounded where it enters (the configs check them all: widgets, scripts, the
command line and queue.json share one check); nothing outside 64-bit or JSON-safe ranges reaches the queue
or a response, and a queue.json that already holds such a number loads with that entry failed."""

import json
from dataclasses import replace
from pathlib import Path

import gradio as gr
import pytest
from app_fixtures import running_app, train_controls

from engine.cli import main as engine_main
from engine.config import LoRAConfig, RunConfig, TrainConfig
from engine.errors import ConfigError
from engine.runs.queue import QUEUE_FILE
from scripts.load_test import local_client
from ui.lab import Lab
from ui.runs_tab import RunsTab
from ui.settings import AppSettings

HUGE = 99999999999999999999999


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda: TrainConfig(seed=HUGE), "seed must be a whole number from 0 to 4,294,967,295, got 99999999999999999999999"),
        (lambda: TrainConfig(seed=-1), "seed must be a whole number from 0 to 4,294,967,295, got -1"),
        (lambda: TrainConfig(eval_iter=10**6), "eval_iter must be a whole number from 1 to 10,000"),
        (lambda: TrainConfig(weight_decay=1e308), "weight decay must be a number from 0 to 10"),
        (lambda: TrainConfig(epochs=10**5000), "epochs must be a whole number from 1 to 1,000, got a number too long to show"),
        (lambda: LoRAConfig(rank=2**63), "rank must be a whole number from 1 to 2,048"),
        (lambda: LoRAConfig(alpha=float("inf")), "alpha must be a number above 0 and at most 10,000, got inf"),
        (lambda: RunConfig(owner="x" * 10_000), "owner must be text of at most 60 characters"),
    ],
)
def test_the_configs_bound_every_number_and_name_the_range(make, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        make()


def grid_inputs(model: str, seeds: str = "", alphas: str = "", lrs: str = "", ranks: tuple = (1,)) -> dict:
    return dict(ranks=list(ranks), alphas=alphas, scalings=[], lrs=lrs, presets=[], layers=[], seeds=seeds, **vars(train_controls(model)))


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"seeds": str(HUGE)}, "seed must be a whole number from 0 to 4,294,967,295"),
        ({"seeds": "1, -5"}, "seed must be a whole number from 0 to 4,294,967,295, got -5"),
        ({"alphas": "1e400"}, "alpha must be a number above 0 and at most 10,000, got inf"),
        ({"lrs": "nan"}, "learning rate must be from 1e-7 to 0.1, got nan"),
        ({"ranks": ("1", "lots")}, "ranks: choose from 1, 2, 4"),
        ({"ranks": (float("inf"),)}, "ranks: choose from"),
    ],
)
def test_a_grid_with_numbers_out_of_range_is_refused_by_name(lab: Lab, fields: dict, problem: str) -> None:
    with pytest.raises(gr.Error, match=problem):
        RunsTab(lab).add_grid(**grid_inputs(lab.settings.model, **fields))
    assert lab.scheduler.queue.runs() == []


def test_the_command_line_refuses_a_huge_seed_in_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny_model_dir: Path, prepared_data: Path
) -> None:
    argv = ["sweep", "--model", str(tiny_model_dir), "--data", str(prepared_data), "--rank", "1", "2", "--seed", str(HUGE), "--out", str(tmp_path)]
    assert engine_main(argv) == 2
    assert "seed must be a whole number from 0 to 4,294,967,295" in capsys.readouterr().err


def test_a_poisoned_queue_loads_with_that_entry_failed_and_every_page_still_gets_the_queue(settings: AppSettings) -> None:
    """The attack: a seed beyond 64 bits reached queue.json; /queue then failed for every client (orjson), across restarts."""
    good = replace(RunConfig(model=settings.model), out_dir="x").to_dict()
    poisoned = json.loads(json.dumps(good))
    poisoned["train"]["seed"] = HUGE
    settings.out.mkdir(parents=True)
    entries = [
        {"id": "20261207-120000", "config": poisoned, "state": "failed", "queued_at": 1.0e9},
        {"id": "20261207-120001", "config": good, "state": "cancelled", "queued_at": 1.0e9},
    ]
    (settings.out / QUEUE_FILE).write_text(json.dumps({"format_version": 1, "runs": entries}))
    with running_app(settings) as served:
        client = local_client(served.url)
        table = client.predict(None, api_name="/queue")[0]
        rows = {row[table["headers"].index("run")]: row for row in table["data"]}
        assert set(rows) == {"20261207-120000", "20261207-120001"}
        assert "refused when the queue was read: its settings were refused" in rows["20261207-120000"][table["headers"].index("note")]
        assert rows["20261207-120000"][table["headers"].index("seed")] in (None, "")  # its settings are unknown, not shown as defaults
        with pytest.raises(Exception, match="seed must be a whole number from 0 to 4,294,967,295"):
            client.predict(seeds=str(HUGE), model=settings.model, api_name="/add_grid")
        assert len(client.predict(api_name="/queue_now")[0]["data"]) == 2  # the queue still answers, unchanged (/queue, the timer's, sends only changes)
