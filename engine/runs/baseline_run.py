"""The classical baseline as a run: the same data preparation as a LoRA run, a run folder beside them, and a
run.json of the same shape, so the run history and its comparison list it with the others."""

import platform
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import sklearn

from engine.baseline import BaselineResult, fit_baseline, save_baseline
from engine.config import BASELINE_METHOD, RunConfig
from engine.data.download import ProgressCallback
from engine.runs.record import BASELINE_FILE, RunRecord
from engine.runs.run import run_data  # the LoRA runs' own data preparation: the same splits, by construction

FOLDER_PREFIX = "baseline-"


def new_baseline_folder(runs_dir: Path | str) -> Path:
    """A fresh folder under `runs_dir` named from the time (baseline-20261207-190000, then -2, -3, ...), made now."""
    stamp = FOLDER_PREFIX + time.strftime("%Y%m%d-%H%M%S")
    for n in range(1, 10_000):
        folder = Path(runs_dir) / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            folder.mkdir(parents=True)
            return folder
        except FileExistsError:
            continue
    raise FileExistsError(f"no free folder name for {stamp} in {runs_dir}")


def run_baseline(cfg: RunConfig, on_download: ProgressCallback | None = None) -> tuple[BaselineResult, Path]:
    """Prepare `cfg`'s data as a LoRA run would, fit the baseline, and write its model and run.json into
    `cfg.out_dir`; returns the result and the record's path. The record is closed as failed if anything fails."""
    started = time.perf_counter()
    cfg = replace(cfg, method=BASELINE_METHOD, model=BASELINE_METHOD)  # no language model: the history says so in its model column
    record = RunRecord.begin(cfg)
    with record.closed_on_failure():
        data = run_data(cfg, on_download)
        cfg = replace(cfg, data=str(data.folder))
        result = fit_baseline(data.splits, cfg.train.seed)
        model_path = Path(cfg.out_dir) / BASELINE_FILE
        save_baseline(result, model_path)
        path = record.finish(_record_fields(cfg, data.summary.to_dict(), result, model_path, time.perf_counter() - started))
    return result, path


def _record_fields(cfg: RunConfig, data: dict[str, Any], result: BaselineResult, model_path: Path, seconds: float) -> dict[str, Any]:
    """The fields of a LoRA run's record that apply to the baseline, plus what only it has (C, features)."""
    return {
        "config": asdict(cfg),
        "data": data,
        "device": "cpu",
        "precision": "fp64",  # scikit-learn's logistic regression computes in float64
        "sklearn": sklearn.__version__,
        "python": platform.python_version(),
        "stopped": False,
        "trainable": result.parameters,
        "steps": 0,
        "losses": [],
        "final": {name: asdict(metrics) for name, metrics in result.final.items()},
        "scores": {name: asdict(scores) for name, scores in result.scores.items()},
        "timings": {"train_seconds": round(result.train_seconds, 2), "total_seconds": round(seconds, 2)},
        "size_bytes": model_path.stat().st_size,
        "baseline": None,
        "tfidf_logreg": {"C": result.c, "validation_accuracy_by_C": result.validation_by_c, "features": result.features},
    }
