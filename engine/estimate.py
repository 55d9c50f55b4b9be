"""What a run will cost before it starts: time per epoch, total time and peak memory.

Time: the machine's calibration (engine/calibration.py: seconds per training step and per forward
pass, a fixed part plus a part per token) applied to the run's own batches. The batches come from
the prepared data's token counts (each message's length, batched as the run's loaders batch them),
else from the SMS data's known split sizes and length profile. On top of the training steps: the
baseline (BASELINE_BATCHES a split), every loss estimate (eval_iter training batches, and the whole
validation set with live metrics, else eval_iter of its batches), each epoch's accuracies and the
final evaluation of all three splits. A step scales with its FLOP count (engine/flops.py): LoRA's
with the rank and the layers adapted; the last-block and full methods by their own backward passes.

Memory, from arithmetic: the frozen weights in the precision they are stored in (the blocks' Linear
weights in bf16 or fp32, the embeddings, norms and head in fp32), the trained weights (LoRA's, or the
last block's, or all of them), their gradients and AdamW's two moments (fp32), the activations the
backward pass keeps for the longest batch, and what the process itself holds (PyTorch's libraries on
a CPU, the CUDA context on a GPU).
"""

import functools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from engine.calibration import CALIBRATION_RANK, Calibration
from engine.config import GPTConfig, RunConfig
from engine.flops import method_step_flops

BASELINE_BATCHES = 10  # engine/runs/run.py's: the book's accuracy before training, 10 batches a split
GROUP_BATCHES = 16  # engine/loaders.py's: batches per length-sorted group
SMS_SPLITS = {"train": 1045, "validation": 149, "test": 300}  # the balanced SMS data's split sizes
# Token lengths of the SMS training split at every 5th percentile (tiktoken GPT-2): the profile of
# messages when no data is prepared yet.
SMS_LENGTH_PROFILE = (2, 6, 8, 10, 11, 14, 16, 19, 23, 28, 33, 35, 37, 40, 42, 45, 47, 49, 51, 56, 120)
# Memory of the process itself: PyTorch's libraries and Python on a CPU (a worker's resident size
# before its model), the CUDA context and kernels on a GPU (outside PyTorch's own count).
RUNTIME_BYTES = {"cpu": 0.35e9, "cuda": 0.5e9, "mps": 0.35e9}
FP32 = 4


@dataclass(frozen=True)
class Lengths:
    """Each message's token count, per split; `measured`: read from prepared data (else the SMS profile)."""

    train: tuple[int, ...]
    validation: tuple[int, ...]
    test: tuple[int, ...]
    measured: bool


@dataclass(frozen=True)
class Memory:
    """Peak bytes, by what holds them."""

    weights: int  # the frozen model, as stored
    trainable: int  # what trains (LoRA and the head, or the weights the method trains): weights, gradients, AdamW's two moments
    activations: int  # kept for the backward pass of the longest batch, plus its working space
    runtime: int  # the process: libraries, CUDA context

    @property
    def total(self) -> int:
        return self.weights + self.trainable + self.activations + self.runtime


@dataclass(frozen=True)
class Estimate:
    """A run's cost on one device; seconds and bytes."""

    device: str
    precision: str
    steps: int
    steps_per_epoch: int
    epochs: int  # epochs begun (a run cut by max_steps begins fewer)
    epoch_s: float  # one epoch's training steps
    train_s: float  # every training step
    evaluation_s: float  # baseline, loss estimates, epoch accuracies, final evaluation
    memory: Memory
    measured_data: bool  # the prepared data's lengths (else the SMS data's known sizes)

    @property
    def total_s(self) -> float:
        return self.train_s + self.evaluation_s

    def to_dict(self) -> dict:
        memory = self.memory
        return {
            "device": self.device,
            "precision": self.precision,
            "steps": self.steps,
            "steps_per_epoch": self.steps_per_epoch,
            "epochs": self.epochs,
            "epoch_s": round(self.epoch_s, 1),
            "train_s": round(self.train_s, 1),
            "evaluation_s": round(self.evaluation_s, 1),
            "total_s": round(self.total_s, 1),
            "peak_memory_bytes": memory.total,
            "memory_bytes": {"weights": memory.weights, "trainable": memory.trainable, "activations": memory.activations, "runtime": memory.runtime},
            "measured_data": self.measured_data,
        }


def profile_lengths(count: int, profile: Sequence[int] = SMS_LENGTH_PROFILE) -> list[int]:
    """`count` lengths spread as `profile`'s percentiles say (linear between them)."""
    last = len(profile) - 1
    lengths = []
    for i in range(count):
        at = i * last / max(count - 1, 1)
        low = int(at)
        high = min(low + 1, last)
        lengths.append(round(profile[low] + (profile[high] - profile[low]) * (at - low)))
    return lengths


def sms_lengths() -> Lengths:
    """The SMS data's split sizes with its length profile: what a run reads when nothing is prepared yet."""
    return Lengths(*(tuple(profile_lengths(n)) for n in SMS_SPLITS.values()), measured=False)


@functools.lru_cache(maxsize=8)
def _folder_lengths(folder: str, stamp: tuple[int, ...]) -> Lengths:
    from engine.data.prepared import LABELS, load_splits, load_summary
    from engine.tokenizer import encode

    saved = load_summary(Path(folder))
    splits = load_splits(Path(folder), saved.labels if saved else LABELS)  # a folder of three or more classes reads as such
    counts = [tuple(len(encode(text)) for text in part["Text"]) for _, part in splits.items()]
    return Lengths(*counts, measured=True)


def data_lengths(folder: str | Path | None) -> Lengths:
    """The prepared folder's token counts (read once per change of its files), else the SMS data's."""
    if folder is None:
        return sms_lengths()
    files = [Path(folder) / f"{name}.csv" for name in SMS_SPLITS]
    try:
        stamp = tuple(file.stat().st_mtime_ns for file in files)
    except OSError:
        return sms_lengths()
    return _folder_lengths(str(Path(folder).resolve()), stamp)


def train_widths(lengths: Sequence[int], cfg: RunConfig, max_length: int) -> list[int]:
    """Each training batch's width (tokens a row) in one epoch, batched as the run's loader batches
    (whole batches only; length-sorted groups when grouping; a fixed shuffle stands in for the seed's)."""
    batch = cfg.train.batch_size
    order = [min(n, max_length) for n in lengths]
    random.Random(cfg.train.seed).shuffle(order)
    order = order[: len(order) // batch * batch]
    if cfg.train.padding == "longest":
        return [max_length] * (len(order) // batch)
    if cfg.train.group_by_length:
        group = batch * GROUP_BATCHES
        order = [n for start in range(0, len(order), group) for n in sorted(order[start : start + group])]
    return [max(order[i : i + batch]) for i in range(0, len(order), batch)]


def split_widths(lengths: Sequence[int], cfg: RunConfig, max_length: int) -> list[int]:
    """Each evaluation batch's width over a split in its order (the last batch may be short)."""
    batch = cfg.train.batch_size
    clipped = [min(n, max_length) for n in lengths]
    if cfg.train.padding == "longest":
        return [max_length] * math.ceil(len(clipped) / batch)
    return [max(clipped[i : i + batch]) for i in range(0, len(clipped), batch)]


def work_factor(shape: GPTConfig, cfg: RunConfig, width: float) -> float:
    """A training step's work by the run's method (at its rank and layers, for LoRA) over the calibration's
    (LoRA on every Linear at CALIBRATION_RANK)."""
    seq = max(1, round(width))
    run = method_step_flops(shape, 1, seq, cfg.lora.rank, cfg.method, targets=cfg.lora.targets)
    measured = method_step_flops(shape, 1, seq, CALIBRATION_RANK)
    return run / measured


def memory_of(shape: GPTConfig, cfg: RunConfig, trainable: int, total_parameters: int, precision: str, device_kind: str, widest: int) -> Memory:
    """Peak bytes of training `cfg` with batches at most `widest` tokens wide (see the module docstring)."""
    d, layers, batch = shape.n_embd, shape.n_layer, cfg.train.batch_size
    lora = cfg.method == "lora"
    product_bytes = 2 if precision == "bf16" and lora else FP32  # the other methods train in fp32 (engine/methods.py)
    # The frozen weights: the whole model under LoRA (the trained head is small), all but what trains otherwise.
    frozen = total_parameters if lora else total_parameters - trainable
    frozen_blocks = layers if lora else layers - 1 if cfg.method == "last-block" else 0
    block_linear = frozen_blocks * (12 * d * d + 9 * d)  # q, k, v, c_proj: 4 (d² + d); c_fc and the MLP's c_proj: 8d² + 5d
    weights = block_linear * product_bytes + (frozen - block_linear) * FP32
    trainable_bytes = 4 * trainable * FP32  # weights, gradients, AdamW's two moments
    # Kept per token and block for the backward pass: q, k, v and the MLP's two products (11d) in the
    # products' precision; both layer norms' inputs and outputs and attention's output (5d) in fp32;
    # LoRA's x·A (rank) on each adapted layer. Attention is PyTorch's fused kernel: no seq² scores kept.
    # Only the last block keeps any when only it trains: nothing before it needs a gradient.
    kept_blocks = 1 if cfg.method == "last-block" else layers
    lora_kept = len(cfg.lora.targets) * cfg.lora.rank * FP32 if lora else 0
    per_token = kept_blocks * (11 * d * product_bytes + 5 * d * FP32 + lora_kept)
    tokens = batch * widest
    working = 3 * tokens * 4 * d * FP32  # the backward pass's own temporaries: a few MLP-wide tensors
    return Memory(int(weights), int(trainable_bytes), int(per_token * tokens + working), int(RUNTIME_BYTES.get(device_kind, RUNTIME_BYTES["cpu"])))


def padded_length(cfg: RunConfig, shape: GPTConfig, lengths: Lengths) -> int:
    """The longest a batch row may be: the longest training message with "longest" padding (as the loaders cut it), else the context."""
    longest = max(lengths.train) if lengths.train else shape.context_length
    return min(longest, shape.context_length) if cfg.train.padding == "longest" else shape.context_length


def memory_for(cfg: RunConfig, shape: GPTConfig, lengths: Lengths, trainable: int, total_parameters: int, precision: str, device_kind: str) -> Memory:
    """`memory_of` at the run's widest training batch."""
    max_length = padded_length(cfg, shape, lengths)
    widest = max(train_widths(lengths.train, cfg, max_length) or [max_length])
    return memory_of(shape, cfg, trainable, total_parameters, precision, device_kind, widest)


def estimate(
    cfg: RunConfig,
    shape: GPTConfig,
    calibration: Calibration,
    lengths: Lengths,
    trainable: int,
    total_parameters: int,
    device: str,
    precision: str,
) -> Estimate:
    """The cost of `cfg` on `device` (a resolved name: "cpu", "cuda:0", ...), from its calibration and the data's lengths."""
    train = cfg.train
    max_length = padded_length(cfg, shape, lengths)
    widths = train_widths(lengths.train, cfg, max_length) or [max_length]
    per_epoch = len(widths)
    steps = per_epoch * train.epochs if train.max_steps is None else min(train.max_steps, per_epoch * train.epochs)
    epochs = math.ceil(steps / per_epoch)
    mean_width = sum(widths) / len(widths)
    factor = work_factor(shape, cfg, mean_width)
    step_s = lambda width: calibration.step_s(train.batch_size * width) * factor
    epoch_s = sum(step_s(w) for w in widths)
    full_epochs, rest = divmod(steps, per_epoch)
    train_s = full_epochs * epoch_s + sum(step_s(w) for w in widths[:rest])

    forward = lambda batch_widths: sum(calibration.forward_s(train.batch_size * w) for w in batch_widths)
    validation = split_widths(lengths.validation, cfg, max_length)
    test = split_widths(lengths.test, cfg, max_length)
    sample = [mean_width] * min(train.eval_iter, per_epoch)  # the estimates' shuffled training batches
    baseline = forward([mean_width] * min(BASELINE_BATCHES, per_epoch)) + forward(validation[:BASELINE_BATCHES]) + forward(test[:BASELINE_BATCHES])
    estimates = math.ceil(steps / train.eval_freq)  # after steps 1, 1 + eval_freq, ...
    each_estimate = forward(sample) + forward(validation if train.live_metrics else validation[: train.eval_iter])
    epoch_accuracies = epochs * (forward(sample) + forward(validation[: train.eval_iter]))
    final = forward(widths) + forward(validation) + forward(test)
    evaluation_s = baseline + estimates * each_estimate + epoch_accuracies + final

    memory = memory_of(shape, cfg, trainable, total_parameters, precision, device.partition(":")[0], max(widths))
    return Estimate(device, precision, steps, per_epoch, epochs, epoch_s, train_s, evaluation_s, memory, lengths.measured)


def duration_words(seconds: float) -> str:
    """ "about 40 s", "about 6 min", "about 1.5 h": as precise as an estimate deserves."""
    if seconds < 90:
        return f"about {max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"about {round(seconds / 60)} min"
    return f"about {seconds / 3600:.1f} h"


def gigabytes(size: float) -> str:
    """1.1 GB, 0.35 GB, 12 GB."""
    gb = size / 1e9
    return f"{gb:.2f} GB" if gb < 1 else f"{gb:.1f} GB" if gb < 10 else f"{gb:.0f} GB"
