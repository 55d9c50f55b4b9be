"""Precision, chosen once: what "auto" becomes on each kind of device, a run trained in bf16 on the CPU
(the same code path a GPU takes) against fp32, and what the run record keeps."""

import json

import pytest
import torch
from conftest import tiny_run_config

from engine.config import PRECISIONS, RunConfig, TrainConfig, preset
from engine.device import DeviceFacts, resolve_precision
from engine.errors import ConfigError
from engine.runs.events import ModelReady, RunSaved
from engine.runs.run import fine_tune
from engine.train import LossEvaluated, StepDone

AMPERE = DeviceFacts(cuda_count=1, cuda_bf16=True, cuda_names=("an A100",))
VOLTA = DeviceFacts(cuda_count=1, cuda_bf16=False, cuda_names=("a V100",))
NEW_MAC = DeviceFacts(mps=True, mps_bf16=True)
OLD_MAC = DeviceFacts(mps=True, mps_bf16=False)


@pytest.mark.parametrize(
    ("device", "facts", "expected"),
    [
        ("cuda", AMPERE, "bf16"),
        ("cuda:0", AMPERE, "bf16"),
        ("cuda", VOLTA, "fp32"),
        ("mps", NEW_MAC, "bf16"),
        ("mps", OLD_MAC, "fp32"),
        ("cpu", AMPERE, "fp32"),
    ],
)
def test_auto_is_bf16_only_where_the_device_computes_in_it(device: str, facts: DeviceFacts, expected: str) -> None:
    assert resolve_precision("auto", device, facts) == expected
    assert resolve_precision("fp32", device, facts) == "fp32"  # asked for, always


def test_bf16_is_refused_on_a_gpu_without_it_and_allowed_on_a_cpu() -> None:
    with pytest.raises(ConfigError, match="this CUDA device does not compute in bf16: use --precision fp32"):
        resolve_precision("bf16", "cuda", VOLTA)
    with pytest.raises(ConfigError, match="unknown precision 'fp16'"):
        resolve_precision("fp16", "cpu", DeviceFacts())
    assert resolve_precision("bf16", "cpu", DeviceFacts()) == "bf16"  # slow without bf16 instructions, but it works


def test_the_book_keeps_fp32_and_recommended_chooses_by_device() -> None:
    assert preset("book").train.precision == "fp32" and preset("recommended").train.precision == "auto"
    assert set(PRECISIONS) == {"auto", "fp32", "bf16"}
    with pytest.raises(ConfigError, match="precision must be one of auto, fp32, bf16, got 'half'"):
        TrainConfig(precision="half")  # type: ignore[arg-type]


@pytest.mark.parametrize(("autocast", "precision"), [(True, "auto"), (False, "fp32")])
def test_a_queue_entry_from_before_precision_loads_with_its_meaning(autocast: bool, precision: str) -> None:
    written = RunConfig.from_preset("recommended").to_dict()
    del written["train"]["precision"]
    written["train"]["bf16_autocast"] = autocast  # as earlier versions wrote run.json and queue.json
    assert RunConfig.from_dict(written).train.precision == precision


@pytest.mark.slow
def test_a_run_trains_in_bf16_as_in_fp32_and_records_its_precision(tiny_model_dir, prepared_data, tmp_path) -> None:
    """bf16 on the CPU takes the GPU's path: the frozen products in bf16, LoRA and AdamW in float32."""

    def run(precision: str) -> list:
        cfg = tiny_run_config(tiny_model_dir, prepared_data, tmp_path / precision, max_steps=20, eval_freq=10, precision=precision)
        return list(fine_tune(cfg))

    fp32, bf16 = run("fp32"), run("bf16")
    for events, precision in ((fp32, "fp32"), (bf16, "bf16")):
        (ready,) = [e for e in events if isinstance(e, ModelReady)]
        record = json.loads(events[-1].record.read_text())
        assert ready.precision == record["precision"] == record["config"]["train"]["precision"] == precision
    losses = lambda events: [e.loss for e in events if isinstance(e, StepDone)]
    # The first step: the same weights and batch, rounded to bf16's 8-bit mantissa on the way.
    assert losses(bf16)[0] == pytest.approx(losses(fp32)[0], rel=2e-2)
    assert losses(bf16) != losses(fp32)  # it did compute in bf16
    # Twenty steps later the two have drifted apart a little, never far: the validation estimates agree to a few percent.
    estimates = lambda events: [e.validation_loss for e in events if isinstance(e, LossEvaluated)]
    assert estimates(bf16) == pytest.approx(estimates(fp32), rel=5e-2)
    assert isinstance(bf16[-1], RunSaved) and not bf16[-1].stopped


def test_bf16_training_keeps_lora_and_the_optimiser_in_float32(tiny_model_dir, prepared_data, tmp_path, monkeypatch) -> None:
    import engine.train

    seen: dict[str, set] = {"frozen": set(), "trainable": set(), "state": set()}
    real_step = torch.optim.AdamW.step

    def watching(optimizer, *args, **kwargs):
        result = real_step(optimizer, *args, **kwargs)
        for group in optimizer.param_groups:
            for parameter in group["params"]:
                seen["trainable"].add(parameter.dtype)
                seen["state"] |= {v.dtype for k, v in optimizer.state[parameter].items() if k != "step"}
        return result

    real_loss = engine.train.batch_loss

    def loss_seeing_the_model(model, batch, pooling):
        seen["frozen"] |= {p.dtype for n, p in model.named_parameters() if ".h." in n and not p.requires_grad and n.endswith("weight") and "ln_" not in n}
        return real_loss(model, batch, pooling)

    monkeypatch.setattr(torch.optim.AdamW, "step", watching)
    monkeypatch.setattr(engine.train, "batch_loss", loss_seeing_the_model)
    list(fine_tune(tiny_run_config(tiny_model_dir, prepared_data, tmp_path / "run", max_steps=2, precision="bf16", live_metrics=False)))
    assert seen == {"frozen": {torch.bfloat16}, "trainable": {torch.float32}, "state": {torch.float32}}


def test_the_command_line_passes_the_precision_on(tmp_path) -> None:
    from engine.cli import _run_config, build_parser

    parse = lambda *extra: _run_config(build_parser().parse_args(["train", "--data", str(tmp_path), *extra]))
    assert parse("--precision", "bf16").train.precision == "bf16"
    assert parse().train.precision == "auto" and parse("--preset", "book").train.precision == "fp32"  # the presets' own
    assert build_parser().parse_args(["classify", "--adapter", "a", "x"]).precision == "auto"
    assert build_parser().parse_args(["bench", "--precision", "fp32", "--whole-epochs"]).whole_epochs
