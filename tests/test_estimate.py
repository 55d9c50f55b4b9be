"""The cost before Start: memory arithmetic, time from a calibration, the calibration's cache, the
refusal of a run that will not fit, and `python -m engine estimate --json`."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from engine import calibration
from engine.bench.training import footprint
from engine.calibration import Calibration, calibration_key
from engine.classifier import build_classifier
from engine.cli import main
from engine.config import GPT2_SIZES, LORA_TARGETS, RunConfig
from engine.errors import ConfigError
from engine.estimate import SMS_SPLITS, Lengths, estimate, sms_lengths
from engine.model import GPT
from engine.params import param_summary
from engine.runs import cost

SMALL = GPT2_SIZES["gpt2-small"]
# A made-up machine: 0.2 s a step plus 4 ms a token; forward passes a third of that.
FAKE = Calibration("fake", step_fixed_s=0.2, step_per_token_s=0.004, forward_fixed_s=0.05, forward_per_token_s=0.0013)


def _estimate(cfg: RunConfig, lengths: Lengths | None = None, precision: str = "fp32", device: str = "cpu"):
    counts = param_summary(cfg.model, cfg.lora, cfg.method)
    return estimate(cfg, SMALL, FAKE, lengths or sms_lengths(), counts.trainable, counts.total_before_freeze, device, precision)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_weights_and_the_trained_tensors_take_what_the_model_holds(precision):
    """gpt2-small, the book's LoRA: the frozen weights as stored (bf16 blocks halve), LoRA four times over (weights, gradients, two moments)."""
    cfg = RunConfig.from_preset("book")
    counted = footprint(SMALL, precision)  # the engine's own tensors, counted on the meta device
    memory = _estimate(cfg, precision=precision).memory
    assert memory.weights == counted.frozen_bytes
    assert memory.trainable == 2 * counted.trainable_bytes + counted.optimizer_bytes


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_each_method_is_charged_its_own_trained_weights_and_backward_pass(precision):
    """Full fine-tuning keeps every weight four times over (weights, gradients, two moments) and in fp32;
    the last block only its own, and its backward pass alone keeps activations and takes time."""
    cfg = RunConfig.from_preset("recommended")
    lora, last, full = (_estimate(replace(cfg, method=method), precision=precision) for method in ("lora", "last-block", "full"))
    for method, result in (("last-block", last), ("full", full)):
        with torch.device("meta"):
            model = build_classifier(GPT(SMALL), cfg.lora, method=method)
        trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
        frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
        assert result.memory.trainable == 4 * 4 * trained and result.memory.weights == 4 * frozen  # fp32 whatever was asked
    assert full.memory.weights == 0 and full.memory.trainable > 1.8e9  # gpt2-small: 124 M weights x 16 bytes
    assert last.memory.activations < lora.memory.activations / 3  # one block of twelve keeps activations (fp32 against bf16 at worst)
    assert last.train_s < lora.train_s < full.train_s
    assert cost.peak_memory(replace(cfg, method="full"), "cpu", "fp32") == full.memory  # what a worker checks before it loads the model


def test_bf16_needs_less_memory_and_a_bigger_batch_more():
    cfg = RunConfig.from_preset("book")
    fp32, bf16 = _estimate(cfg).memory, _estimate(cfg, precision="bf16").memory
    assert bf16.total < fp32.total and bf16.activations < fp32.activations
    doubled = _estimate(cfg.with_train(batch_size=16)).memory
    assert doubled.activations > 1.9 * fp32.activations and doubled.weights == fp32.weights


def test_book_training_time_is_its_steps_times_a_full_width_step():
    """The book pads every batch to 120 tokens: 5 epochs of 1,045 // 8 whole batches, each 8 x 120 tokens at the calibration's rate."""
    cfg = RunConfig.from_preset("book")
    result = _estimate(cfg)
    steps_per_epoch = SMS_SPLITS["train"] // 8
    assert (result.steps_per_epoch, result.steps, result.epochs) == (steps_per_epoch, 5 * steps_per_epoch, 5)
    assert result.train_s == pytest.approx(5 * steps_per_epoch * FAKE.step_s(8 * 120))
    assert result.epoch_s == pytest.approx(steps_per_epoch * FAKE.step_s(8 * 120))
    assert result.evaluation_s > 0 and result.total_s == result.train_s + result.evaluation_s


def test_max_steps_and_length_grouping_shorten_the_run():
    book = RunConfig.from_preset("book")
    assert _estimate(book.with_train(max_steps=13)).train_s == pytest.approx(13 * FAKE.step_s(8 * 120))
    recommended = RunConfig.from_preset("recommended")
    assert _estimate(recommended).epoch_s < 0.5 * _estimate(book).epoch_s  # batches padded to their longest, not to 120


def test_a_higher_rank_costs_more_time_and_fewer_layers_less():
    cfg = RunConfig.from_preset("recommended")
    base = _estimate(cfg)
    wide = _estimate(replace(cfg, lora=replace(cfg.lora, rank=256)))
    narrow = _estimate(replace(cfg, lora=replace(cfg.lora, targets=("attn.q_proj", "attn.v_proj"))))
    assert wide.train_s > 1.2 * base.train_s and wide.memory.trainable > 10 * base.memory.trainable
    assert narrow.train_s < base.train_s
    assert cfg.lora.targets == LORA_TARGETS and cfg.lora.rank == calibration.CALIBRATION_RANK  # the calibration's own: factor 1
    assert base.epoch_s == pytest.approx(sum(FAKE.step_s(8 * w) for w in _widths(cfg)))


def _widths(cfg: RunConfig) -> list[int]:
    from engine.estimate import train_widths

    return train_widths(sms_lengths().train, cfg, SMALL.context_length)


def test_prepared_data_gives_its_own_token_counts(prepared_data):
    lengths = cost.lengths_of(RunConfig(data=str(prepared_data)))
    assert lengths.measured and len(lengths.train) == SMS_SPLITS["train"] and max(lengths.train) == 120
    assert not cost.lengths_of(RunConfig(data=None, data_cache=str(prepared_data / "nothing-here"))).measured


@pytest.fixture
def counted_measures(monkeypatch):
    """engine.calibration.measure replaced by FAKE under the asked key, counting its calls."""
    calls = []

    def fake_measure(shape, device, precision, key):
        calls.append(key)
        return replace(FAKE, key=key)

    monkeypatch.setattr(calibration, "measure", fake_measure)
    return calls


def test_a_second_estimate_reads_the_calibration_from_its_file(tmp_path, counted_measures, tiny_model_dir, prepared_data):
    cfg = RunConfig(model=str(tiny_model_dir), data=str(prepared_data), data_cache=str(tmp_path), device="cpu")
    assert cost.run_cost(cfg, "cached") is None  # nothing measured yet
    first = cost.run_cost(cfg)
    second = cost.run_cost(cfg.with_train(epochs=2 * cfg.train.epochs))
    assert len(counted_measures) == 1
    assert second.train_s == pytest.approx(2 * first.train_s)
    kept = json.loads((tmp_path / "calibration.json").read_text())
    assert list(kept) == counted_measures and cost.run_cost(cfg, "cached") == first


def test_the_calibration_key_is_the_shape_not_the_name():
    renamed = replace(SMALL, name="my-copy")
    assert calibration_key(renamed, "cpu x", "fp32", 2) == calibration_key(SMALL, "cpu x", "fp32", 2)
    assert calibration_key(SMALL, "cpu x", "bf16", 2) != calibration_key(SMALL, "cpu x", "fp32", 2)
    assert calibration_key(GPT2_SIZES["gpt2-medium"], "cpu x", "fp32", 2) != calibration_key(SMALL, "cpu x", "fp32", 2)


def test_a_run_that_will_not_fit_is_refused_saying_what_would():
    cfg = RunConfig.from_preset("recommended", model="gpt2-medium").with_train(batch_size=32)
    needed = cost.peak_memory(cfg, "cuda:0", "fp32")
    smaller_batch = cost.peak_memory(cfg.with_train(batch_size=16), "cuda:0", "fp32")
    bf16 = cost.peak_memory(cfg, "cuda:0", "bf16")
    free = max(smaller_batch.total - smaller_batch.runtime, bf16.total - bf16.runtime) + 1
    assert free < needed.total - needed.runtime
    with pytest.raises(ConfigError) as refused:
        cost.check_fits(cfg, "cuda:0", "fp32", available=free)
    message = str(refused.value)
    assert "cuda:0 has" in message and "GB free" in message
    assert "choose a batch size of 16 (about" in message and ", bf16 precision (about" in message and "or a smaller model (gpt2-small, about" in message
    cost.check_fits(cfg.with_train(batch_size=16), "cuda:0", "fp32", available=free)  # what it advised fits


def test_the_run_refuses_before_loading_the_model(monkeypatch, tiny_model_dir, prepared_data, tmp_path):
    from engine.runs.events import ModelReady
    from engine.runs.run import fine_tune
    from tests.conftest import tiny_run_config

    monkeypatch.setattr(cost, "available_bytes", lambda device: 1000)
    monkeypatch.setattr("engine.runs.run.load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    events = []
    with pytest.raises(ConfigError, match="this machine has 0.0 GB available"):
        events.extend(fine_tune(tiny_run_config(tiny_model_dir, prepared_data, tmp_path / "run")))
    assert not any(isinstance(event, ModelReady) for event in events)
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["state"] == "failed" and "GB available" in record["error"]


def test_the_cli_prints_the_estimate_as_json(capsys, tmp_path, counted_measures, tiny_model_dir, prepared_data):
    args = ["estimate", "--model", str(tiny_model_dir), "--data", str(prepared_data), "--cache", str(tmp_path), "--device", "cpu", "--epochs", "3"]
    assert main([*args, "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["steps"] == 3 * result["steps_per_epoch"] == 3 * (SMS_SPLITS["train"] // 8)
    assert result["total_s"] > result["train_s"] > 0 and result["measured_data"] is True
    assert result["peak_memory_bytes"] == sum(result["memory_bytes"].values()) and isinstance(result["fits"], bool)
    assert main(args) == 0
    said = capsys.readouterr().out
    assert "time per epoch: about" in said and "peak memory:" in said
    assert len(counted_measures) == 1


def test_the_cli_says_what_is_wrong_with_a_setting(capsys, tmp_path):
    assert main(["estimate", "--rank", "0", "--cache", str(tmp_path)]) == 2
    assert "rank must be a whole number" in capsys.readouterr().err


@pytest.mark.slow
def test_a_real_calibration_runs_in_a_subprocess_once(tmp_path, monkeypatch):
    """The tiny shape measured in a subprocess (as the web app measures), kept, then read without one."""
    from tests.conftest import TINY

    path = tmp_path / "calibration.json"
    key = calibration_key(TINY, "test cpu", "fp32", 1)
    measured = calibration.calibrate_in_subprocess(TINY, "cpu", "fp32", key, 1, path)
    assert measured.step_s(8 * 64) > measured.forward_s(8 * 64) > 0
    monkeypatch.setattr(calibration.subprocess, "run", lambda *a, **k: pytest.fail("measured again"))
    assert calibration.calibrate_in_subprocess(TINY, "cpu", "fp32", key, 1, path) == measured
    assert Path(path).is_file()
