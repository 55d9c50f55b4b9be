"""The methods side by side on the Runs tab: the newest finished run of each, with its cost; and the method control."""

import json
from dataclasses import asdict
from pathlib import Path

from engine.config import BASELINE_METHOD, RunConfig
from engine.runs.compare import methods_side_by_side
from engine.runs.history import all_runs
from engine.runs.record import ADAPTER_DIR, BASELINE_FILE
from ui.anatomy_tab import AnatomyTab
from ui.anatomy_view import MEASURES
from ui.model_tab import LORA_ONLY, method_effects
from ui.runs_tab import HISTORY_COLUMNS, METHOD_COLUMNS, history_frame, methods_frame


def write_run(root: Path, name: str, method: str, created: str, test: float | None, state: str = "done", saved_bytes: int = 1000) -> None:
    """A run folder as a run leaves it: its record, and the file it saved (adapter tensors, or the baseline's model)."""
    folder = root / name
    saved = folder / BASELINE_FILE if method == BASELINE_METHOD else folder / ADAPTER_DIR / "adapter.safetensors"
    saved.parent.mkdir(parents=True)
    saved.write_bytes(b"x" * saved_bytes)
    final = {"test": {"accuracy": test}, "validation": {"accuracy": 0.9}} if test is not None else None
    config = asdict(RunConfig(method=method))
    record = {"state": state, "created": created, "config": config, "final": final, "trainable": 42, "timings": {"train_seconds": 3.0}}
    (folder / "run.json").write_text(json.dumps(record))


def test_the_newest_finished_run_of_each_method_side_by_side_with_its_cost(tmp_path):
    write_run(tmp_path, "old-lora", "lora", "2026-01-01T10:00:00+00:00", 0.91)
    write_run(tmp_path, "new-lora", "lora", "2026-01-02T10:00:00+00:00", 0.95, saved_bytes=2_500_000)
    write_run(tmp_path, "failed-lora", "lora", "2026-01-03T10:00:00+00:00", None, state="failed")
    write_run(tmp_path, "baseline", BASELINE_METHOD, "2026-01-01T09:00:00+00:00", 0.96)
    write_run(tmp_path, "full", "full", "2026-01-01T08:00:00+00:00", 0.97)
    runs = all_runs(tmp_path)
    assert [name for name, _ in methods_side_by_side(runs)] == ["new-lora", "full", "baseline"]  # LoRA, the heavier ones, the baseline
    table = methods_frame(runs)
    assert list(table.columns) == METHOD_COLUMNS
    assert table.iloc[0]["size on disk (MB)"] == "2.5" and table.iloc[0]["method"] == "LoRA"
    assert table.iloc[2]["method"].startswith("TF-IDF") and table.iloc[2]["size on disk (MB)"] == "0.001"
    history = history_frame(runs)
    baseline = history[history["run"] == "baseline"].iloc[0]
    assert baseline["rank"] == "" and baseline["alpha"] == ""  # no LoRA, so no rank to show
    assert {"method", "size on disk (MB)"} <= set(HISTORY_COLUMNS)


def test_the_lora_settings_are_greyed_out_for_the_other_methods():
    note, *widgets = method_effects("last-block")
    assert "not used" in note and len(widgets) == len(LORA_ONLY) and all(w["interactive"] is False for w in widgets)
    note, *widgets = method_effects("lora")
    assert note == "" and all(w["interactive"] is True for w in widgets)


def test_inside_the_adapter_says_a_run_without_lora_has_no_adapter_to_look_inside(lab):
    write_run(lab.settings.out, "block-run", "last-block", "2026-01-02T10:00:00+00:00", 0.95)
    tab = AnatomyTab(lab)
    assert "block-run" in tab.runs_with_adapters()  # its trained weights are there, for Classify and Evaluate
    sentence, heat, spectra = tab.show("block-run", next(iter(MEASURES)), None)
    assert sentence.startswith("**This run has no LoRA adapter to look inside") and "last block" in sentence and (heat, spectra) == ("", None)
