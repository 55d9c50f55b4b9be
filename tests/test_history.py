"""The run history: records listed (grids' runs included), unreadable folders skipped, configs and scores read back."""

import json
import shutil

import pytest

from engine.data.prepared import read_split
from engine.errors import DataError
from engine.runs.history import all_runs, list_runs, read_run, read_scores


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


def test_a_finished_runs_scores_come_with_their_messages(trained_run, tmp_path):
    cfg, _ = trained_run
    test = read_split(cfg.data, "test")
    found = read_scores(cfg.out_dir, "test")
    assert found.class_names == ("ham", "spam") and found.scores.labels == test["Label"].tolist()
    assert found.texts == test["Text"].tolist() and len(found.scores.probabilities) == len(test)
    assert sum(map(sum, found.confusion)) == len(test)
    folder = tmp_path / "moved-data"
    shutil.copytree(cfg.out_dir, folder)
    record = json.loads((folder / "run.json").read_text())
    record["config"]["data"] = str(tmp_path / "gone")
    record["scores"]["test"] = {"labels": record["scores"]["test"]["labels"], "p_positive": [0.25] * len(test)}  # as older versions kept them
    (folder / "run.json").write_text(json.dumps(record))
    older = read_scores(folder, "test")
    assert older.texts is None and older.scores.probabilities[0] == [0.75, 0.25]


def test_scores_missing_or_damaged(trained_run, tmp_path):
    cfg, _ = trained_run
    folder = tmp_path / "run"
    shutil.copytree(cfg.out_dir, folder)
    record = json.loads((folder / "run.json").read_text())
    assert read_scores(folder, "train") is None  # the shuffled training split's scores are not kept
    record["scores"]["test"]["labels"] = "not a list of labels"
    (folder / "run.json").write_text(json.dumps(record))
    with pytest.raises(DataError, match="damaged"):
        read_scores(folder, "test")
    with pytest.raises(DataError, match="unreadable"):
        read_scores(tmp_path / "nowhere", "test")
