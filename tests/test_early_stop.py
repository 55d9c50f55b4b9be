"""Early stopping and the best adapter: the loop keeps the weights of the lowest validation loss, stops after
N estimates without a lower one, resumes as if never stopped; the run saves the best beside the last, and
Classify and Evaluate use it by default.

The validation losses are scripted (the estimate's real loss replaced by a value per step), so where the
best is and where training stops are known in advance; the weights themselves train as ever.
"""

import json
import shutil
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import safetensors.torch
import torch
from conftest import tiny_run_config

import engine.train
from engine.adapter import read_adapter
from engine.classifier import Classifier
from engine.cli import _run_config, build_parser, main
from engine.config import PRESET_CONFIGS, TrainConfig
from engine.errors import ConfigError
from engine.reproduce import app_controls, train_arguments
from engine.runs.record import RECORD_FILE
from engine.runs.resume import resumed_config
from engine.runs.run import fine_tune
from engine.train import LossEvaluated, StepDone, TrainEnded, train
from ui import anatomy_view
from ui.anatomy_tab import AnatomyTab
from ui.classify_tab import ClassifyTab
from ui.evaluate_tab import EvaluateTab, read_evaluation
from ui.lab import Lab

# Validation loss at the estimate after each step (eval_freq 2: after steps 1, 3, 5, ...): lowest at step 3,
# then two estimates without a lower one. A run that forgot the best and the count on resuming at step 4
# would take step 5 as its best and go on to step 11.
SCRIPT = {1: 0.9, 3: 0.5, 5: 0.8, 7: 0.7, 9: 0.75, 11: 0.72, 13: 0.71}
PATIENCE, BEST, STOP = 2, 3, 7


def scripted_losses(monkeypatch: pytest.MonkeyPatch, steps_before: int = 0) -> None:
    """Replace each estimate's validation loss with SCRIPT's value for the steps taken (the loop estimates train, then validation)."""
    taken, calls = [steps_before], [0]
    real_batch_loss, real_evaluate = engine.train.batch_loss, engine.train.evaluate

    def counted(*args, **kwargs):
        taken[0] += 1
        return real_batch_loss(*args, **kwargs)

    def scripted(*args, **kwargs):
        result = real_evaluate(*args, **kwargs)
        calls[0] += 1
        return replace(result, loss=SCRIPT.get(taken[0], 1.0)) if calls[0] % 2 == 0 else result

    monkeypatch.setattr(engine.train, "batch_loss", counted)
    monkeypatch.setattr(engine.train, "evaluate", scripted)


def test_early_stop_is_off_by_default_and_a_bad_patience_is_named() -> None:
    assert TrainConfig().early_stop == 0 and all(chosen.train.early_stop == 0 for chosen in PRESET_CONFIGS.values())
    for bad in (-1, 2.5, True, "3", 10**6):
        with pytest.raises(ConfigError, match="early_stop must be a whole number from 0 to 10,000"):
            TrainConfig(early_stop=bad)


def test_the_command_line_takes_early_stop_and_a_run_record_says_it_again() -> None:
    cfg = _run_config(build_parser().parse_args(["train", "--early-stop", "3"]), fetch_data=False)
    assert cfg.train.early_stop == 3
    arguments = train_arguments(cfg)
    assert arguments[arguments.index("--early-stop") + 1] == "3" and app_controls(cfg)["early_stop"] == 3
    assert "--early-stop" not in train_arguments(cfg.with_train(early_stop=0))  # off: the preset's, said by nothing


def _tiny_loop(tiny_model_dir: Path, prepared_data: Path, **changes: object):
    from engine.classifier import build_classifier
    from engine.data.prepared import prepare
    from engine.loaders import make_loaders
    from engine.weights import load_model

    recommended = PRESET_CONFIGS["recommended"]
    cfg = replace(recommended.train, **{"epochs": 1, "max_steps": 20, "eval_freq": 2, "eval_iter": 1, "live_metrics": False, "lr": 3e-3, **changes})
    model = build_classifier(load_model(str(tiny_model_dir), torch.device("cpu")), recommended.lora)
    return model, make_loaders(prepare(str(prepared_data)).splits, cfg, model.cfg.context_length), cfg


def _trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def test_the_loop_stops_after_n_estimates_without_a_lower_loss_and_keeps_the_best_weights(tiny_model_dir, prepared_data, monkeypatch) -> None:
    from engine.checkpoint import LoopTracker

    scripted_losses(monkeypatch)
    model, loaders, cfg = _tiny_loop(tiny_model_dir, prepared_data, early_stop=PATIENCE)
    tracker, at_estimate, events = LoopTracker(), {}, []
    for event in train(model, loaders, cfg, torch.device("cpu"), tracker=tracker):
        events.append(event)
        if isinstance(event, LossEvaluated):  # the loop waits here: the model holds the weights of this estimate
            at_estimate[event.step + 1] = _trainable(model)
    ended = events[-1]
    assert isinstance(ended, TrainEnded) and not ended.stopped
    assert (ended.steps, ended.early_stop, ended.best_step, ended.best_validation_loss) == (STOP, PATIENCE, BEST, SCRIPT[BEST])
    assert [e.step for e in events if isinstance(e, StepDone)] == list(range(1, STOP + 1))
    assert [e.validation_loss for e in events if isinstance(e, LossEvaluated)] == [SCRIPT[s] for s in (1, 3, 5, 7)]
    best = tracker.best
    assert best is not None and best.step == BEST and best.estimates_since == PATIENCE
    assert not all(torch.equal(at_estimate[BEST][name], at_estimate[STOP][name]) for name in best.tensors)  # the weights moved on after the best
    assert all(torch.equal(tensor, at_estimate[BEST][name]) for name, tensor in best.tensors.items())


def test_without_early_stop_the_loop_runs_to_its_end_and_still_knows_its_best(tiny_model_dir, prepared_data, monkeypatch) -> None:
    scripted_losses(monkeypatch)
    model, loaders, cfg = _tiny_loop(tiny_model_dir, prepared_data, max_steps=10)
    ended = list(train(model, loaders, cfg, torch.device("cpu")))[-1]
    assert (ended.steps, ended.early_stop, ended.best_step) == (10, 0, BEST)


@pytest.fixture(scope="session")  # the browser test's too
def early_stopped(tiny_model_dir: Path, prepared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """A run that stops early (best at step 3, stopped at 7) and a run of the same settings that ends at step 3."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        scripted_losses(monkeypatch)
        folder = tmp_path_factory.mktemp("early")
        list(fine_tune(tiny_run_config(tiny_model_dir, prepared_data, folder / "run", max_steps=20, eval_freq=2, live_metrics=False, early_stop=PATIENCE)))
    list(fine_tune(tiny_run_config(tiny_model_dir, prepared_data, folder / "three", max_steps=BEST, eval_freq=2, live_metrics=False)))
    yield folder / "run", folder / "three"


def _tensors(adapter: Path) -> dict[str, torch.Tensor]:
    return read_adapter(adapter)[1]


@pytest.mark.slow
def test_a_run_keeps_its_best_adapter_beside_its_last_and_says_where_it_stopped(early_stopped: tuple[Path, Path]) -> None:
    run, three = early_stopped
    record = json.loads((run / RECORD_FILE).read_text())
    assert record["state"] == "done" and record["steps"] == STOP
    assert record["early_stopped"] == f"stopped early at step {STOP}: validation loss not lower for {PATIENCE} estimates; best at step {BEST}"
    assert record["best"]["step"] == BEST and record["best"]["validation_loss"] == SCRIPT[BEST] and record["best"]["adapter"] == "adapter-best"
    assert set(record["best"]["scores"]) == {"validation", "test"} and record["best"]["final"]["test"]["count"] == 300
    best, last, at_three = _tensors(run / "adapter-best"), _tensors(run / "adapter"), _tensors(three / "adapter")
    assert best.keys() == at_three.keys()
    assert all(torch.allclose(best[name], at_three[name], atol=1e-6) for name in best)  # the weights after step 3 exactly
    assert not all(torch.equal(best[name], last[name]) for name in best)
    three_record = json.loads((three / RECORD_FILE).read_text())
    assert three_record["best"]["adapter"] == "adapter" and not (three / "adapter-best").exists()  # its last step was its best: saved once


@pytest.mark.slow
def test_resuming_a_run_with_early_stop_ends_as_if_it_never_stopped(tiny_model_dir, prepared_data, tmp_path, monkeypatch, early_stopped) -> None:
    straight, _ = early_stopped
    scripted_losses(monkeypatch)
    list(fine_tune(tiny_run_config(tiny_model_dir, prepared_data, tmp_path, max_steps=4, eval_freq=2, live_metrics=False, early_stop=PATIENCE)))
    scripted_losses(monkeypatch, steps_before=4)
    list(fine_tune(resumed_config(tmp_path, max_steps=20), resume=True))
    resumed, unbroken = (json.loads((folder / RECORD_FILE).read_text()) for folder in (tmp_path, straight))
    assert (resumed["steps"], resumed["early_stopped"], resumed["best"]["step"]) == (unbroken["steps"], unbroken["early_stopped"], BEST)
    for adapter in ("adapter", "adapter-best"):
        parts, whole = _tensors(tmp_path / adapter), _tensors(straight / adapter)
        assert all(torch.allclose(parts[name], whole[name], atol=1e-6) for name in whole), adapter


@pytest.mark.slow
def test_classify_and_evaluate_use_the_best_adapter_unless_told_and_an_old_run_still_answers(early_stopped: tuple[Path, Path], lab: Lab) -> None:
    run, _ = early_stopped
    shutil.copytree(run, lab.settings.out / "early")
    classify, evaluate = ClassifyTab(lab), EvaluateTab(lab)
    message = "WINNER!! claim your free prize now"
    answer = lambda adapter: Classifier.load(adapter, torch.device("cpu")).classify([message])[0].probabilities

    header = classify.adapter_info(None, "early")
    assert f"best adapter, step {BEST} of {STOP} (lowest validation loss)" in header
    fine_tuned, _, details = classify.classify(message, None, "early")
    assert fine_tuned == pytest.approx(answer(run / "adapter-best")) and f"best adapter, step {BEST} of {STOP}" in details
    assert classify.classify(message, None, "early", which="last")[0] == pytest.approx(answer(run / "adapter"))
    assert classify.adapter_info(None, "early", which="last").count(f"last adapter, step {STOP} of {STOP}") == 1

    record = json.loads((run / RECORD_FILE).read_text())
    assert f"best adapter, step {BEST} of {STOP}" in evaluate.evaluate("early", "validation", 0.5)[0]
    assert f"last adapter, step {STOP} of {STOP}" in evaluate.evaluate("early", "validation", 0.5, None, "last")[0]
    summary = dict(evaluate.evaluated_runs())["early"]
    for which, kept in (("best", record["best"]), ("last", record)):  # the scores the final evaluation gave each adapter
        scores = read_evaluation(summary, "early", "test", which).scores
        assert scores.probabilities == kept["scores"]["test"]["probabilities"]
    assert record["best"]["scores"]["test"]["probabilities"] != record["scores"]["test"]["probabilities"]

    old = lab.settings.out / "early"
    shutil.rmtree(old / "adapter-best")
    del record["best"]
    (old / RECORD_FILE).write_text(json.dumps(record))
    assert "kept no best adapter" in classify.adapter_info(None, "early")
    assert classify.classify(message, None, "early")[0] == pytest.approx(answer(run / "adapter"))
    assert "kept no best adapter" in evaluate.evaluate("early", "validation", 0.5)[0]


@pytest.mark.slow
def test_inside_the_adapter_shows_and_exports_the_best_adapter_first_and_the_last_when_picked(early_stopped: tuple[Path, Path], lab: Lab) -> None:
    run, three = early_stopped
    shutil.copytree(run, lab.settings.out / "early")
    shutil.copytree(three, lab.settings.out / "three")
    tab = AnatomyTab(lab)
    moments = tab.run_views("early")[0]
    choices = moments.constructor_args["choices"]
    assert moments.constructor_args["value"] == anatomy_view.BEST  # what Classify answers with comes first
    assert [value for _, value in choices][:2] == [anatomy_view.BEST, anatomy_view.SAVED]
    assert choices[0][0] == f"best adapter (step {BEST}): what Classify uses"
    best_said, best_heat, _ = tab.show("early", "norm", anatomy_view.BEST)
    last_said, last_heat, _ = tab.show("early", "norm", anatomy_view.SAVED)
    assert best_said.startswith(f"**Best adapter (step {BEST}):") and last_said.startswith("**As saved:")
    assert best_heat != last_heat  # two adapters, two sets of norms
    assert tab.run_views("three")[0].constructor_args["value"] == anatomy_view.SAVED  # its best was its last: one adapter, no second choice

    best_zip, last_zip = Path(tab.download_peft("early", anatomy_view.BEST)), Path(tab.download_peft("early", anatomy_view.SAVED))
    assert (best_zip.name, last_zip.name) == ("early-best-peft.zip", "early-peft.zip")
    with zipfile.ZipFile(best_zip) as archive:
        exported = safetensors.torch.load(archive.read("adapter_model.safetensors"))
        card = archive.read("README.md").decode()
    with zipfile.ZipFile(last_zip) as archive:
        exported_last = safetensors.torch.load(archive.read("adapter_model.safetensors"))
    assert any(not torch.equal(exported[name], exported_last[name]) for name in exported)  # the best one's weights, not the last's
    record = json.loads((run / RECORD_FILE).read_text())
    best_row = f"| test | {100 * record['best']['final']['test']['accuracy']:.2f}% |"
    assert best_row in card and f"| test | {100 * record['final']['test']['accuracy']:.2f}% |" not in card  # its card gives the best adapter's scores
    out = lab.settings.out.parent / "cli-export"
    assert main(["export", "--adapter", str(run / "adapter-best"), "--format", "peft", "--out", str(out)]) == 0
    assert best_row in (out / "README.md").read_text()  # the command line's export says the same


def test_the_train_tab_says_a_run_stopped_early_and_where_its_best_is() -> None:
    from engine.config import RunConfig
    from engine.evaluate import Metrics
    from engine.runs.events import BestKept, FinalEvaluated
    from engine.runs.queue import QueuedRun
    from engine.runs.recorder import RunRecorder
    from engine.runs.scheduler import RunView
    from ui.train_tab import training_view

    metrics = lambda accuracy: Metrics(0.3, accuracy, [[70, 5], [4, 71]], 0.93, 0.95, 0.94, 150)
    recorder = RunRecorder()
    for event in (
        StepDone(450, 650, 4, 3600, 0.1, 60.0, 0.0),
        TrainEnded(False, 450, 3600, 60.0, early_stop=3, best_step=251, best_validation_loss=0.112),
        FinalEvaluated({"validation": metrics(0.94), "test": metrics(0.95)}),
        BestKept(251, 0.112, "adapter-best", {"validation": metrics(0.96), "test": metrics(0.97)}),
    ):
        recorder.record(event)
    view = RunView(QueuedRun("20261207-150000", RunConfig(), state="done", started_at=0.0, ended_at=151.0), recorder.progress(), None)
    shown = training_view(view)
    assert "It stopped early at step 450: validation loss not lower for 3 estimates; best at step 251 (lowest validation loss, 0.112)" in shown.status
    assert shown.final["split"].tolist() == ["validation", "test", "validation, best adapter (step 251)", "test, best adapter (step 251)"]
    assert shown.final["accuracy (%)"].tolist() == [94.0, 95.0, 96.0, 97.0]

    plain = RunRecorder()
    ended = TrainEnded(False, 40, 320, 6.0, best_step=40, best_validation_loss=0.2)
    for event in (StepDone(40, 40, 1, 320, 0.1, 6.0, 0.0), ended, BestKept(40, 0.2, "adapter")):
        plain.record(event)
    status = training_view(replace(view, progress=plain.progress())).status
    assert "Best at step 40 of 40 (lowest validation loss, 0.200): its last adapter is its best." in status and "early" not in status
