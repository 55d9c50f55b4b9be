"""The cost estimate (engine/estimate.py) against the bench's own measurements, in the same run: each
preset's epoch time predicted from a calibration measured now, and the fixed workload's peak memory
predicted from arithmetic. The estimate aims within ESTIMATE_GOAL of what was measured."""

import torch

from engine.bench.peak import SEQ
from engine.bench.report import EpochResult, EstimateCheck, StepResult
from engine.calibration import measure
from engine.config import GPTConfig, RunConfig
from engine.estimate import Lengths, estimate, memory_of
from engine.tokenizer import encode


def _parameters(shape: GPTConfig, cfg: RunConfig) -> tuple[int, int]:
    """(trainable, frozen model's total) of `cfg`'s classifier on `shape`, counted on the meta device."""
    from engine.classifier import build_classifier
    from engine.lora import count_parameters
    from engine.model import GPT

    with torch.device("meta"):
        total = count_parameters(GPT(shape, n_classes=2)).total
        adapted = build_classifier(GPT(shape), cfg.lora)
    return count_parameters(adapted).trainable, total


def estimate_checks(shape: GPTConfig, splits: object, device: torch.device, epochs: list[EpochResult]) -> list[EstimateCheck]:
    """Each timed epoch against its prediction (one calibration per precision, measured here and now, not read from a cache)."""
    lengths = Lengths(*(tuple(len(encode(text)) for text in part["Text"]) for _, part in splits.items()), measured=True)  # type: ignore[attr-defined]
    calibrations = {}
    checks = []
    for epoch in epochs:
        if epoch.precision not in calibrations:
            calibrations[epoch.precision] = measure(shape, str(device), epoch.precision, "bench")
        cfg = RunConfig.from_preset(epoch.mode).with_train(precision=epoch.precision)
        trainable, total = _parameters(shape, cfg)
        predicted = estimate(cfg, shape, calibrations[epoch.precision], lengths, trainable, total, str(device), epoch.precision)
        checks.append(EstimateCheck(f"{epoch.mode} epoch", "s", round(predicted.epoch_s, 2), epoch.epoch_s))
    return checks


def memory_check(shape: GPTConfig, device: torch.device, ours: StepResult) -> EstimateCheck:
    """The fixed workload's peak memory (book LoRA, batch 8 x SEQ) against the arithmetic's: on CUDA PyTorch's own count,
    which leaves out the CUDA context; on a CPU the process's resident high-water mark, which holds its libraries."""
    cfg = RunConfig.from_preset("book").with_train(precision=ours.precision if ours.precision in ("fp32", "bf16") else "fp32")
    trainable, total = _parameters(shape, cfg)
    memory = memory_of(shape, cfg, trainable, total, cfg.train.precision, device.type, SEQ)
    predicted = memory.total - (memory.runtime if device.type == "cuda" else 0)
    return EstimateCheck("fixed workload peak memory", "GB", round(predicted / 2**30, 3), round(ours.peak_memory_mb / 1024, 3))
