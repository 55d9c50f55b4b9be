"""Reproduce this run: the command line a run's record keeps gives back the same run, and so does its gradio_client call."""

import json
import shlex
from dataclasses import replace
from pathlib import Path

import pytest
from app_fixtures import running_app, train_controls

from engine.cli import _run_config, build_parser
from engine.config import RunConfig
from engine.data.prepared import SOURCES
from engine.errors import ConfigError
from engine.reproduce import client_call, reproduction, train_arguments, train_command
from engine.runs.grid import Grid
from ui.controls import run_config
from ui.settings import AppSettings


def reparsed(cfg: RunConfig) -> RunConfig:
    """The RunConfig `python -m engine train` builds from the command line written for `cfg`."""
    argv = shlex.split(train_command(cfg))
    assert argv[:4] == ["python", "-m", "engine", "train"]
    return _run_config(build_parser().parse_args(argv[3:]))


def as_run(cfg: RunConfig) -> RunConfig:
    """`cfg` with the download sources said as the engine reads them: none given means the default ones
    (the app names them, `train` leaves them out), the same downloads either way."""
    return replace(cfg, data_urls=None) if cfg.data_urls == SOURCES else cfg


def app_configs(tmp_path: Path) -> list[RunConfig]:
    """Runs as the app's Start makes them: every control off its default, one at a time and together."""
    settings = AppSettings(model="gpt2-small", device="cpu", out=tmp_path / "runs", cache=tmp_path / "cache")
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "train.csv").write_text("Label,Text\n")  # prepared: the app's runs read the cache
    changes = [
        {},
        {"preset_name": "book", "rank": 16.0, "alpha": 16.0, "scaling": "alpha", "pooling": "last", "padding": "longest", "lr": 5e-5, "epochs": 5.0},
        {"rank": 4.0, "alpha": 8.0, "scaling": "alpha", "lr": 3e-4, "epochs": 2.0, "batch_size": 4.0, "max_steps": 0.0, "eval_freq": 7.0, "early_stop": 3.0},
        {"targets": ["attn.q_proj", "attn.v_proj"], "train_head": True, "pooling": "last", "padding": "longest", "live_metrics": False},
        {"preset_name": "book", "padding": "batch", "model": "gpt2-medium"},
        {"method": "last-block"},
        {"method": "full", "preset_name": "book"},
    ]
    made = [run_config(settings, train_controls(**{"model": "gpt2-small", **change}), owner="Ada L.") for change in changes]
    return [replace(cfg, out_dir=str(tmp_path / "runs" / f"run{i}")) for i, cfg in enumerate(made)]  # the queue gives each its folder


def test_the_command_line_of_every_app_run_gives_the_same_run(tmp_path: Path) -> None:
    configs = app_configs(tmp_path)
    assert {cfg.method for cfg in configs} == {"lora", "last-block", "full"}  # the method control reaches the run
    for cfg in configs:
        assert reparsed(cfg) == as_run(cfg)


def test_the_command_line_of_every_grid_run_gives_the_same_run(tmp_path: Path, prepared_data: Path) -> None:
    base = RunConfig.from_preset("recommended", data=str(prepared_data), out_dir=str(tmp_path), device="cpu", deduplicate=True, data_cache=str(tmp_path / "c"))
    grid = Grid(rank=(2, 8), preset=("book", "recommended"), seed=(7,), targets=(("attn.q_proj", "attn.v_proj"),), lr=(1e-3,))
    for _, cfg in grid.expand(base):
        assert reparsed(cfg) == as_run(cfg)


def test_the_command_says_only_what_differs_from_the_preset(prepared_data: Path) -> None:
    cfg = RunConfig.from_preset("recommended", data=str(prepared_data), out_dir="runs/a")
    assert train_arguments(cfg) == ["--preset", "recommended", "--model", "gpt2-small", "--data", str(prepared_data), "--out", "runs/a"]
    assert "--rank 4" in train_command(replace(cfg, lora=replace(cfg.lora, rank=4)))


def test_a_setting_train_has_no_option_for_is_named_not_dropped(tmp_path: Path) -> None:
    cfg = RunConfig.from_preset("recommended", data="d", out_dir="o").with_train(weight_decay=0.5)
    with pytest.raises(ConfigError, match="weight_decay 0.5"):
        train_arguments(cfg)
    said = reproduction(cfg)
    assert said["command"] is None and "weight_decay" in said["command_problem"] and "api_name='/start'" in said["client"]


def test_the_download_sources_are_said_when_they_are_not_the_default() -> None:
    cfg = RunConfig.from_preset("recommended", data=None, data_urls=("http://127.0.0.1:9/sms.zip",), out_dir="o")
    args = build_parser().parse_args(["train", *train_arguments(cfg)])
    assert args.data is None and args.data_urls == ["http://127.0.0.1:9/sms.zip"]


def test_a_run_record_keeps_its_command_from_start_to_end(trained_run: tuple) -> None:
    cfg, events = trained_run
    record = json.loads((events[-1].out_dir / "run.json").read_text())
    assert record["state"] == "done"
    assert record["reproduce"]["command"] == train_command(cfg)  # as asked: data as given, not the folder it resolved to
    assert "client.predict(" in record["reproduce"]["client"]


@pytest.mark.slow
def test_the_client_call_queues_the_same_settings_in_a_running_app(tiny_model_dir: Path, prepared_data: Path, tmp_path: Path) -> None:
    """Run the recorded Python itself against an app: the run it queues has the recorded run's settings."""
    settings = AppSettings(model=str(tiny_model_dir), device="cpu", out=tmp_path / "runs", cache=prepared_data)
    cfg = run_config(settings, train_controls(str(tiny_model_dir), rank=2.0, lr=1e-3, targets=["attn.q_proj", "score"], max_steps=1.0), owner="Grace")
    seeded = replace(cfg.with_train(seed=9), method="last-block")  # a grid's seed: queued through the Runs tab's grid
    with running_app(settings) as running:
        for wanted in (cfg, seeded):
            exec(client_call(wanted, running.url), {})  # noqa: S102 - the very text a run's record keeps
        queued = sorted((view.run for view in running.lab.scheduler.views()), key=lambda run: run.queued_at)
        assert len(queued) == 2
        for run, wanted in zip(queued, (cfg, seeded), strict=True):
            assert (run.config.lora, run.config.train, run.config.owner, run.config.model, run.config.method) == (
                wanted.lora,
                wanted.train,
                wanted.owner,
                wanted.model,
                wanted.method,
            )
