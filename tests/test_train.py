import json
import threading
from dataclasses import replace

import pytest
import torch
from conftest import tiny_run_config

from engine.config import RunConfig, TrainConfig, preset
from engine.errors import ConfigError
from engine.runs.events import BaselineEvaluated, DataReady, FinalEvaluated, ModelReady, RunSaved
from engine.runs.run import fine_tune
from engine.train import EpochDone, LossEvaluated, StepDone, TrainEnded, TrainStarted, ValidationEvaluated


def kinds(events):
    return [type(e).__name__ for e in events]


def test_events_arrive_in_order(trained_run):
    _, events = trained_run
    names = kinds(events)
    assert names[:4] == ["DataReady", "ModelReady", "BaselineEvaluated", "TrainStarted"]
    assert names[-5:] == ["TrainEnded", "AdapterMeasured", "FinalEvaluated", "BestKept", "RunSaved"]  # the adapter measured as saved (step 40)
    steps = [e.step for e in events if isinstance(e, StepDone)]
    assert steps == list(range(1, 41))
    # The book's schedule: loss estimates at global steps 0, 10, 20, 30 right after those steps.
    assert [e.step for e in events if isinstance(e, LossEvaluated)] == [0, 10, 20, 30]
    assert names.index("EpochDone") > max(i for i, n in enumerate(names) if n == "StepDone")
    started = next(e for e in events if isinstance(e, TrainStarted))
    assert (started.total_steps, started.steps_per_epoch, started.train_examples) == (40, 130, 1045)
    last_step = [e for e in events if isinstance(e, StepDone)][-1]
    assert last_step.examples_seen == 320 and last_step.eta_s == 0


def test_each_loss_estimate_scores_the_full_validation_set(trained_run):
    _, events = trained_run
    names = kinds(events)
    live = [e for e in events if isinstance(e, ValidationEvaluated)]
    assert [e.step for e in live] == [0, 10, 20, 30]
    assert all(names[events.index(e) - 1] == "LossEvaluated" for e in live)  # each right after its loss estimate
    for event in live:
        assert event.metrics.count == 149 and sum(map(sum, event.metrics.confusion)) == 149
        (_, false_spam), (missed, caught) = event.metrics.confusion  # [true][predicted], spam the positive class
        precision = caught / (caught + false_spam) if caught + false_spam else 0.0
        recall = caught / (caught + missed) if caught + missed else 0.0
        assert (event.metrics.precision, event.metrics.recall) == pytest.approx((precision, recall))
    assert live[-1].examples_seen == 31 * 8
    record = json.loads(events[-1].record.read_text())
    assert [p["step"] for p in record["validation_history"]] == [0, 10, 20, 30]
    assert record["validation_history"][-1]["metrics"]["count"] == 149


@pytest.mark.slow
def test_live_metrics_leave_the_book_figures_and_training_unchanged(tiny_model_dir, prepared_data, tmp_path):
    def run(live: bool, out: str):
        cfg = RunConfig.from_preset("book", model=str(tiny_model_dir), data=str(prepared_data), out_dir=str(tmp_path / out), device="cpu")
        return list(fine_tune(cfg.with_train(epochs=1, max_steps=5, eval_freq=2, lr=3e-3, live_metrics=live)))

    on, off = run(True, "on"), run(False, "off")
    assert [e.loss for e in on if isinstance(e, StepDone)] == [e.loss for e in off if isinstance(e, StepDone)]
    # The validation loss is still the mean over the first eval_iter (5) batches, as in the book.
    on_losses, off_losses = ([x for e in events if isinstance(e, LossEvaluated) for x in (e.train_loss, e.validation_loss)] for events in (on, off))
    assert len(on_losses) == 6 and on_losses == pytest.approx(off_losses, rel=1e-6)
    assert not any(isinstance(e, ValidationEvaluated) for e in off)
    assert [e.metrics.count for e in on if isinstance(e, ValidationEvaluated)] == [149, 149, 149]


def test_training_lowers_the_loss_and_beats_the_baseline(trained_run):
    _, events = trained_run
    losses = [e for e in events if isinstance(e, LossEvaluated)]
    # The validation estimate reads the same unshuffled batches each time, so it is the steady signal.
    assert losses[-1].validation_loss < losses[0].validation_loss * 0.8
    final = next(e for e in events if isinstance(e, FinalEvaluated)).metrics
    baseline = next(e for e in events if isinstance(e, BaselineEvaluated))
    assert final["validation"].accuracy > max(0.6, baseline.validation_accuracy)
    assert final["test"].count == 300 and final["validation"].count == 149 and final["train"].count == 1040
    assert sum(map(sum, final["test"].confusion)) == 300


def test_outputs_are_written(trained_run):
    cfg, events = trained_run
    saved = events[-1]
    assert isinstance(saved, RunSaved) and not saved.stopped
    assert (saved.adapter_dir / "adapter.safetensors").is_file() and (saved.adapter_dir / "adapter_config.json").is_file()
    assert saved.plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = json.loads(saved.record.read_text())
    assert record["config"]["model"] == cfg.model and record["steps"] == 40
    assert len(record["losses"]) == 4 and record["final"]["test"]["count"] == 300
    assert record["timings"]["train_seconds"] > 0


def test_stop_halts_at_the_next_step_and_keeps_an_adapter(tiny_model_dir, prepared_data, tmp_path, monkeypatch):
    """No step starts once Stop is set. The step events lag the steps (their losses are read from the
    device in batches), so the run ends with the steps already taken when Stop came, every one reported."""
    import engine.train

    computed, real = [], engine.train.batch_loss
    monkeypatch.setattr(engine.train, "batch_loss", lambda *args: computed.append(1) or real(*args))
    stop = threading.Event()
    events, taken_at_stop = [], None
    for event in fine_tune(tiny_run_config(tiny_model_dir, prepared_data, tmp_path, max_steps=None), stop):
        events.append(event)
        if isinstance(event, StepDone) and event.step == 3:
            stop.set()
            taken_at_stop = len(computed)
    assert taken_at_stop is not None and taken_at_stop < 31  # stopped before the epoch's end
    assert [e.step for e in events if isinstance(e, StepDone)] == list(range(1, taken_at_stop + 1))
    ended = next(e for e in events if isinstance(e, TrainEnded))
    assert ended.stopped and ended.steps == taken_at_stop == len(computed)
    assert not any(isinstance(e, (EpochDone, FinalEvaluated)) for e in events)
    saved = events[-1]
    assert isinstance(saved, RunSaved) and saved.stopped and (saved.adapter_dir / "adapter.safetensors").is_file()


def test_seeded_runs_are_identical(tiny_model_dir, prepared_data, tmp_path):
    def losses(out):
        cfg = tiny_run_config(tiny_model_dir, prepared_data, out, max_steps=6, eval_freq=3)
        return [e.loss for e in fine_tune(cfg) if isinstance(e, StepDone)]

    assert losses(tmp_path / "a") == losses(tmp_path / "b")


def test_book_preset_is_the_book_pipeline():
    book = preset("book")
    assert (book.lora.rank, book.lora.alpha, book.lora.scaling) == (16, 16, "alpha")
    t = book.train
    assert (t.lr, t.weight_decay, t.epochs, t.batch_size, t.eval_freq, t.eval_iter, t.seed) == (5e-5, 0.1, 5, 8, 50, 5, 123)
    assert (t.padding, t.pooling) == ("longest", "last")
    recommended = preset("recommended")
    settings = (recommended.lora.scaling, recommended.train.lr, recommended.train.padding, recommended.train.pooling)
    assert settings == ("alpha_over_rank", 8e-4, "batch", "last_token")


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"lr": 0}, "learning rate must be"),
        ({"lr": -1e-3}, "learning rate must be"),
        ({"epochs": 0}, "epochs must be"),
        ({"max_steps": 0}, "max_steps must be"),
        ({"batch_size": 0}, "batch_size must be"),
        ({"pooling": "first"}, "pooling must be"),
        ({"live_metrics": "yes"}, "live_metrics must be"),
    ],
)
def test_bad_training_settings_are_named(kwargs, problem):
    with pytest.raises(ConfigError, match=problem):
        TrainConfig(**kwargs)


def test_batch_larger_than_the_training_set_is_refused(tiny_model_dir, prepared_data, tmp_path):
    with pytest.raises(ConfigError, match="batch size 2000 is larger than the 1045 training messages"):
        list(fine_tune(tiny_run_config(tiny_model_dir, prepared_data, tmp_path, batch_size=2000)))


def test_first_events_come_before_training(tiny_model_dir, prepared_data, tmp_path):
    run = fine_tune(tiny_run_config(tiny_model_dir, prepared_data, tmp_path))
    assert isinstance(next(run), DataReady)
    ready = next(run)
    assert isinstance(ready, ModelReady) and ready.counts.trainable == ready.counts.lora > 0
    run.close()
    assert torch.is_grad_enabled()


def test_stop_during_the_full_validation_pass_drops_its_partial_figures(tiny_model_dir, prepared_data, tmp_path, monkeypatch):
    import engine.train

    stop = threading.Event()
    real = engine.train.evaluate_whole_and_first

    def stopped_meanwhile(model, loader, device, pooling, first_batches, should_stop, *options):
        stop.set()  # Stop pressed as the pass begins: it ends before its first batch
        return real(model, loader, device, pooling, first_batches, should_stop, *options)

    monkeypatch.setattr(engine.train, "evaluate_whole_and_first", stopped_meanwhile)
    events = list(fine_tune(tiny_run_config(tiny_model_dir, prepared_data, tmp_path), stop))
    assert [e.step for e in events if isinstance(e, StepDone)] == [1]
    assert not any(isinstance(e, (LossEvaluated, ValidationEvaluated, FinalEvaluated)) for e in events)
    assert isinstance(events[-1], RunSaved) and events[-1].stopped


@pytest.mark.parametrize("preset_name", ["recommended", "book-order"])
def test_how_often_a_run_looks_never_changes_what_it_learns(preset_name, tiny_model_dir, prepared_data, tmp_path):
    """Independent draws: loss estimates (and live metrics) shuffle the training set from a generator of their own."""
    from safetensors.torch import load_file

    def adapter_after(eval_freq: int, live_metrics: bool) -> dict[str, torch.Tensor]:
        # 8 steps an epoch, so the estimates of epoch 1 come before the order of epoch 2 is drawn.
        out = tmp_path / f"every{eval_freq}-{live_metrics}"
        cfg = tiny_run_config(tiny_model_dir, prepared_data, out, batch_size=128, epochs=2, max_steps=11, eval_freq=eval_freq)
        if preset_name == "book-order":  # the book's fixed padding and PyTorch's shuffle, with independent draws
            cfg = cfg.with_train(padding="longest", group_by_length=False, pooling="last")
        cfg = cfg.with_train(live_metrics=live_metrics)
        events = list(fine_tune(cfg))
        return load_file(str(events[-1].adapter_dir / "adapter.safetensors"))

    looked_often, looked_rarely, looked_live = adapter_after(2, False), adapter_after(20, False), adapter_after(3, True)
    assert looked_often.keys() == looked_rarely.keys() == looked_live.keys()
    for name, tensor in looked_often.items():
        assert torch.equal(tensor, looked_rarely[name]), name
        assert torch.equal(tensor, looked_live[name]), name


def test_with_the_books_draws_the_estimates_still_move_the_order_as_in_the_book(tiny_model_dir, prepared_data, tmp_path):
    from engine.data.prepared import load_splits
    from engine.loaders import make_loaders

    splits = load_splits(prepared_data)
    book = preset("book").train
    loaders = make_loaders(splits, book, 256, book_draws=True)
    assert loaders.train_sample is loaders.train  # the book estimates from its training loader itself
    independent = make_loaders(splits, preset("recommended").train, 256)
    assert independent.train_sample is not independent.train


def _tiny_training(tiny_model_dir, prepared_data, steps: int):
    """A tiny classifier and its loaders, as a recommended run builds them (no run around them)."""
    from engine.classifier import build_classifier
    from engine.data.prepared import prepare
    from engine.loaders import make_loaders
    from engine.weights import load_model

    cfg = replace(preset("recommended").train, epochs=1, max_steps=steps, eval_freq=10**6, eval_iter=1, live_metrics=False, lr=3e-3)
    splits = prepare(str(prepared_data)).splits
    model = build_classifier(load_model(str(tiny_model_dir), torch.device("cpu")), preset("recommended").lora)
    return model, make_loaders(splits, cfg, model.cfg.context_length), cfg


def test_the_losses_stay_on_the_device_until_read(tiny_model_dir, prepared_data, monkeypatch):
    """Between reads no step waits for its loss: step 2's event leaves only once the last step has run."""
    import engine.train
    from engine.train import train

    model, loaders, cfg = _tiny_training(tiny_model_dir, prepared_data, steps=6)
    computed, real = [], engine.train.batch_loss
    monkeypatch.setattr(engine.train, "batch_loss", lambda *args: computed.append(1) or real(*args))
    steps_run_by_event = [(e.step, len(computed)) for e in train(model, loaders, cfg, torch.device("cpu"), read_losses_every_s=1e9) if isinstance(e, StepDone)]
    # step 1 is read before its loss estimate; steps 2 to 6 together, at the end
    assert steps_run_by_event == [(1, 1), (2, 6), (3, 6), (4, 6), (5, 6), (6, 6)]


def test_a_loss_that_is_not_finite_leaves_the_weights_as_they_were_though_read_later(tiny_model_dir, prepared_data, monkeypatch):
    """The fused optimiser is told on the device to skip the step of a NaN loss, and every later one;
    the next read ends the run naming that step."""
    import engine.train
    from engine.errors import TrainingDiverged
    from engine.train import train

    model, loaders, cfg = _tiny_training(tiny_model_dir, prepared_data, steps=6)
    trainable = lambda: {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    calls, before_step_3, real = [], {}, engine.train.batch_loss

    def poisoned(*args):
        calls.append(1)
        if len(calls) == 3:
            before_step_3.update(trainable())
        loss = real(*args)
        return loss * float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(engine.train, "batch_loss", poisoned)
    events = []
    with pytest.raises(TrainingDiverged, match=r"^the training batch loss became nan at step 3: training diverged"):
        for event in train(model, loaders, cfg, torch.device("cpu"), read_losses_every_s=1e9):
            events.append(event)
    assert len(calls) == 6  # read at the end: steps 4 to 6 ran, and were skipped on the device
    assert [e.step for e in events if isinstance(e, StepDone)] == [1, 2]
    after = trainable()
    assert all(torch.equal(after[name], before_step_3[name]) for name in after)
