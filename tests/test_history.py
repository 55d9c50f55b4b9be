"""The run history: records listed (grids' runs included), unreadable folders skipped, configs read back."""

import json
import shutil

from engine.history import all_runs, list_runs, read_run


def test_history_skips_folders_without_a_readable_record(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "run.json").write_text("{not json")
    assert list_runs(tmp_path) == [] and list_runs(tmp_path / "missing") == []


def test_all_runs_lists_single_runs_and_the_runs_of_each_grid(trained_run, tmp_path):
    cfg, _ = trained_run
    shutil.copytree(cfg.out_dir, tmp_path / "20261201-100000")
    shutil.copytree(cfg.out_dir, tmp_path / "grid-20261201-110000" / "rank4-seed1")
    names = [name for name, _ in all_runs(tmp_path)]
    assert sorted(names) == ["20261201-100000", "grid-20261201-110000/rank4-seed1"]
    run = read_run(tmp_path / "20261201-100000")
    assert run.config == cfg and run.rank == cfg.lora.rank  # the whole config, read back and validated


def test_a_record_whose_config_no_longer_validates_still_lists(trained_run, tmp_path):
    cfg, _ = trained_run
    folder = tmp_path / "old"
    shutil.copytree(cfg.out_dir, folder)
    record = json.loads((folder / "run.json").read_text())
    record["config"]["lora"]["scaling"] = "retired-option"
    (folder / "run.json").write_text(json.dumps(record))
    run = read_run(folder)
    assert run is not None and run.config is None and run.rank == cfg.lora.rank
