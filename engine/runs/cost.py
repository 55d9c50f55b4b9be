"""A run's cost on this machine before it starts, and the check that refuses a run that will not fit.

`run_cost` applies engine/estimate.py's arithmetic to a RunConfig: its device and precision as a
worker resolves them, its data's token counts, and this machine's calibration for the model's shape
(measured here, in a subprocess for the web app, or only read from the cache). `check_fits` runs in
the worker before the model loads: the run's peak memory against the device's free memory (CUDA) or
the machine's available memory (CPU, MPS), with what to change when it is too much.
"""

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from engine.calibration import Calibration, cached, calibrate, calibrate_in_subprocess, calibration_key
from engine.config import CALIBRATION_NAME, GPT2_SIZES, RunConfig
from engine.data.prepared import is_prepared_folder
from engine.device import DeviceFacts, cpu_name, device_kind, probed_facts, resolve_precision
from engine.errors import ConfigError
from engine.estimate import Estimate, Lengths, Memory, data_lengths, estimate, memory_for
from engine.methods import method_precision
from engine.params import param_summary
from engine.weights import resolve

Measure = Literal["here", "subprocess", "cached"]
GB = 1e9


@dataclass(frozen=True)
class Target:
    """Where a run computes: the device as a worker names it, its precision, and what its calibration is kept under."""

    device: str  # "cpu", "cuda:0", "mps"
    precision: str  # "fp32" or "bf16"
    device_name: str  # "NVIDIA H100 80GB HBM3", "Intel(R) Xeon(R) ..., 2 cores"
    threads: int | None  # the CPU threads a run uses (None on a GPU)


def target_of(cfg: RunConfig, facts: DeviceFacts | None = None, threads: int | None = None) -> Target:
    """The device and precision `cfg` runs in (facts: the machine's, probed without PyTorch here when not given).

    Raises:
        ConfigError: a device this machine lacks, or bf16 on a GPU without it.
    """
    facts = facts or (DeviceFacts() if cfg.device == "cpu" else probed_facts())
    device = device_kind(cfg.device, facts)
    precision = method_precision(cfg.method, resolve_precision(cfg.train.precision, device, facts))
    kind, _, index = device.partition(":")
    if kind == "cuda":
        names = facts.cuda_names or ("CUDA GPU",)
        return Target(device if index else "cuda:0", precision, names[min(int(index or 0), len(names) - 1)], None)
    if kind == "mps":
        return Target(device, precision, "Apple MPS", None)
    return Target(device, precision, cpu_name(), threads or _default_threads())


def _default_threads() -> int:
    import torch

    return torch.get_num_threads()


def lengths_of(cfg: RunConfig) -> Lengths:
    """The token counts of the data `cfg` reads: its prepared folder, else the one in its data cache, else the SMS data's known sizes."""
    folder = cfg.data if is_prepared_folder(cfg.data) else cfg.data_cache if is_prepared_folder(cfg.data_cache) else None
    return data_lengths(folder)


def calibration_file(cfg: RunConfig) -> Path:
    return Path(cfg.data_cache) / CALIBRATION_NAME


def run_cost(cfg: RunConfig, measure: Measure = "here", facts: DeviceFacts | None = None, threads: int | None = None) -> Estimate | None:
    """`cfg`'s time and peak memory on this machine; None when `measure` is "cached" and this shape is not measured yet.

    Raises:
        ConfigError / WeightsError: an unknown model or device, or settings the model cannot take.
        RuntimeError: the calibration's subprocess failed.
    """
    shape = resolve(cfg.model).config
    target = target_of(cfg, facts, threads)
    key = calibration_key(shape, target.device_name, target.precision, target.threads)
    path = calibration_file(cfg)
    calibration: Calibration | None
    if measure == "cached":
        calibration = cached(key, path)
    elif measure == "subprocess":
        calibration = calibrate_in_subprocess(shape, target.device, target.precision, key, target.threads, path)
    else:
        calibration = calibrate(shape, target.device, target.precision, key, path)
    if calibration is None:
        return None
    counts = param_summary(cfg.model, cfg.lora, cfg.method)
    return estimate(cfg, shape, calibration, lengths_of(cfg), counts.trainable, counts.total_before_freeze, target.device, target.precision)


def peak_memory(cfg: RunConfig, device: str, precision: str, lengths: Lengths | None = None) -> Memory:
    """`cfg`'s peak memory on `device` in `precision` (arithmetic only: no calibration)."""
    counts = param_summary(cfg.model, cfg.lora, cfg.method)
    shape = resolve(cfg.model).config
    return memory_for(cfg, shape, lengths or lengths_of(cfg), counts.trainable, counts.total_before_freeze, precision, device.partition(":")[0])


def available_bytes(device: str) -> int | None:
    """Memory a run on `device` may still take: the GPU's free memory, else the machine's available memory; None when unknown."""
    if device.startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_fits(cfg: RunConfig, device: str, precision: str, available: int | None = None) -> None:
    """Refuse `cfg` when its peak memory (less what this process already holds) exceeds what `device` has free.

    Raises:
        ConfigError: it will not fit; the message says what would (a smaller batch, bf16, a smaller model).
    """
    free = available if available is not None else available_bytes(device)
    if free is None:
        return
    lengths = lengths_of(cfg)
    needed = _needed(cfg, device, precision, lengths)
    if needed <= free:
        return
    where = f"{device} has {free / GB:.1f} GB free" if device.startswith("cuda") else f"this machine has {free / GB:.1f} GB available"
    options = _what_fits(cfg, device, precision, lengths, free)
    advice = "choose " + (", ".join(options[:-1]) + " or " if len(options) > 1 else "") + options[-1] if options else "use a device with more memory"
    raise ConfigError(f"this run needs about {needed / GB:.1f} GB of memory at its peak but {where}: it would run out of memory. Instead, {advice}")


def _needed(cfg: RunConfig, device: str, precision: str, lengths: Lengths) -> int:
    """Bytes the run adds to its own process, which already holds its runtime (libraries, CUDA context)."""
    memory = peak_memory(cfg, device, precision, lengths)
    return memory.total - memory.runtime


def _what_fits(cfg: RunConfig, device: str, precision: str, lengths: Lengths, free: int) -> list[str]:
    """The changes, each alone, that would make `cfg` fit in `free` bytes, with their peaks."""
    options = []
    batch = cfg.train.batch_size // 2
    while batch >= 1:
        smaller = cfg.with_train(batch_size=batch)
        if (needed := _needed(smaller, device, precision, lengths)) <= free:
            options.append(f"a batch size of {batch} (about {needed / GB:.1f} GB)")
            break
        batch //= 2
    if precision == "fp32" and (needed := _needed(cfg, device, "bf16", lengths)) <= free:
        options.append(f"bf16 precision (about {needed / GB:.1f} GB)")
    if cfg.model in GPT2_SIZES:
        for name in reversed(list(GPT2_SIZES)[: list(GPT2_SIZES).index(cfg.model)]):
            if (needed := _needed(replace(cfg, model=name), device, precision, lengths)) <= free:
                options.append(f"a smaller model ({name}, about {needed / GB:.1f} GB)")
                break
    return options


def grid_cost(
    configs: list[RunConfig], workers: int, measure: Measure = "cached", facts: DeviceFacts | None = None, threads: int | None = None
) -> float | None:
    """Seconds a grid of `configs` takes on `workers` workers, each run taken by the next free one in order; None while a shape is not measured."""
    free_at = [0.0] * max(1, workers)
    for cfg in configs:
        cost = run_cost(cfg, measure, facts, threads)
        if cost is None:
            return None
        first = free_at.index(min(free_at))
        free_at[first] += cost.total_s
    return max(free_at)
