import threading

import pytest
from conftest import tiny_run_config

from engine.errors import ConfigError
from engine.history import list_runs, read_run
from engine.sweep import SweepPoint, SweepRunStarted, rank_sweep
from engine.train import StepDone


def test_rank_sweep_trains_each_rank_and_lists_them_in_the_history(tiny_model_dir, prepared_data, tmp_path):
    base = tiny_run_config(tiny_model_dir, prepared_data, tmp_path, max_steps=4, eval_freq=2)
    events = list(rank_sweep(base, ranks=(1, 4)))
    starts = [e.rank for e in events if isinstance(e, SweepRunStarted)]
    points = [e for e in events if isinstance(e, SweepPoint)]
    assert starts == [1, 4] and [p.rank for p in points] == [1, 4]
    assert points[1].trainable == 4 * points[0].trainable  # LoRA size grows linearly with rank
    assert all(p.test_accuracy is not None and p.train_seconds > 0 for p in points)
    runs = list_runs(tmp_path)
    assert sorted(r.name for r in runs) == ["rank-1", "rank-4"]
    run = read_run(tmp_path / "rank-4")
    assert run.rank == 4 and run.trainable == points[1].trainable and run.steps == 4 and len(run.losses) == 2
    assert run.test_accuracy == pytest.approx(points[1].test_accuracy)


def test_stop_ends_the_sweep(tiny_model_dir, prepared_data, tmp_path):
    stop = threading.Event()
    base = tiny_run_config(tiny_model_dir, prepared_data, tmp_path, max_steps=50)
    seen = []
    for event in rank_sweep(base, ranks=(1, 2, 4), stop=stop):
        seen.append(event)
        if isinstance(event, StepDone) and event.step == 2:
            stop.set()
    points = [e for e in seen if isinstance(e, SweepPoint)]
    assert len(points) == 1 and points[0].test_accuracy is None


def test_history_skips_folders_without_a_readable_record(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "run.json").write_text("{not json")
    assert list_runs(tmp_path) == [] and list_runs(tmp_path / "missing") == []


def test_bad_rank_lists_are_refused(tiny_model_dir, prepared_data, tmp_path):
    with pytest.raises(ConfigError):
        list(rank_sweep(tiny_run_config(tiny_model_dir, prepared_data, tmp_path), ranks=(2, 2)))
