"""`python -m engine bench`: how fast LoRA Lab trains and classifies on this machine, next to its peers.

Everything runs in one process tree, in one run, on the current device (noise between runs is about
±15 %, so only figures from the same run are compared):

1. the device's matrix-multiply peak at this model's shapes (fp32; bf16 too when the run computes
   in it; on CPU also int8 through dynamically quantised Linear layers) — `peak.py`, with the FLOP
   counts — and what the weights take in each precision (`training.footprint`);
2. the fixed workload: batch 8 × 120 random tokens, random weights of the chosen size, LoRA r16 on
   every Linear (book preset), timed through the engine's own training loop in the chosen precision;
   then the same batches through Hugging Face `transformers` + `peft` (skipped with a note when they
   are absent; bf16 under autocast). Each side runs in a fresh subprocess so its peak memory is its
   own — `training.py`, `peer.py`;
3. one epoch of the real SMS training split in `book` and `recommended` mode (timed on a few steps
   of the real, seeded batch order and extrapolated to all batches by their token counts, or whole
   with `full_epochs`), and what the preset's periodic loss estimates add to it, with and without
   live validation scoring — `epochs.py`;
4. the cost estimate (`engine/estimate.py`, what `python -m engine estimate` prints) against parts
   2 and 3: each epoch's time predicted from a calibration measured in this run, and the fixed
   workload's peak memory from arithmetic (`estimate_check.py`; goal within ±30 %);
5. classification latency, one message and 100 messages, for us (the chosen precision; int8 on CPU)
   and for `transformers` + `peft` (LoRA merged on both sides), and the least time the 100 messages'
   FLOPs allow at the fp32 and int8 peaks — `latency.py`.

Parts 3, 4 (its epochs) and 5 read the SMS data; without it (offline, nothing prepared) they are skipped with one
note. Results are frozen dataclasses gathered in a Report (`report.py`). Timing uses
time.perf_counter around whole steps, each step's loss read (which waits for the device), medians
after warm-up; the thread count is left as PyTorch sets it.
"""

import os
import platform
import time
from collections.abc import Callable
from typing import Any

import torch

from engine.adapted_linear import product_path
from engine.bench.epochs import load_splits_for_bench, time_epochs
from engine.bench.estimate_check import estimate_checks, memory_check
from engine.bench.latency import classification_floor, classification_latency, percentile
from engine.bench.peak import BATCH, SEQ, classify_flops, int8_matmul_peak, matmul_peak
from engine.bench.peer import PEER_BATCH, peers_available
from engine.bench.report import ClassificationFloor, EpochResult, Footprint, LatencyResult, MatmulPeak, Report, StepResult
from engine.bench.training import WARMUP_STEPS, fixed_workload, footprint, step_result
from engine.config import DEFAULT_MODEL, GPTConfig, preset
from engine.device import cpu_name
from engine.flops import step_flops
from engine.tokenizer import encode

__all__ = [
    "ClassificationFloor",
    "EpochResult",
    "Footprint",
    "LatencyResult",
    "MatmulPeak",
    "Report",
    "StepResult",
    "classify_flops",
    "peers_available",
    "percentile",
    "run_benchmark",
    "step_flops",
]

Progress = Callable[[str], None] | None


def _environment(cfg: GPTConfig, device: torch.device, precision: str) -> dict[str, Any]:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return {
        "model": cfg.name,
        "device": str(device),
        "device_name": name,
        "precision": precision,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "frozen_products": product_path().describe() if device.type == "cpu" else "F.linear",
        "rank": preset("book").lora.rank,
        "batch": BATCH,
        "seq": SEQ,
    }


def run_benchmark(
    model: str | GPTConfig = DEFAULT_MODEL,
    device: str = "auto",
    steps: int = 5,
    data: str | None = None,
    progress: Progress = None,
    *,
    full_epochs: bool = False,
    peers: bool = True,
    isolate: bool = True,
    precision: str | None = None,
) -> Report:
    """Run every measurement in one go; see the module docstring.

    `full_epochs` times whole epochs instead of extrapolating; `peers=False` skips transformers + peft;
    `isolate=False` runs the fixed workload in this process (faster to start, but its peak memory is
    then this process's high-water mark, not the measurement's own). `precision` ("auto", "fp32",
    "bf16") is the fixed workload's and classification's, and both epochs'; None: auto, and each
    preset's own for its epoch.
    """
    from engine.device import pick_device, precision_for, prepare_device
    from engine.errors import DownloadError
    from engine.weights import resolve

    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"--steps must be a whole number of at least 1, got {steps!r}")
    say = progress or (lambda message: None)
    began = time.perf_counter()
    cfg = model if isinstance(model, GPTConfig) else resolve(model).config
    torch_device = pick_device(device)
    prepare_device(torch_device)
    chosen = precision_for(precision or "auto", torch_device)
    notes: list[str] = []
    with_peer = peers and peers_available()
    if peers and not with_peer:
        notes.append("transformers + peft not installed (pip install -r requirements-dev.txt): peer figures skipped")
    book = preset("book")
    flops = step_flops(cfg, BATCH, SEQ, book.lora.rank)
    environment = _environment(cfg, torch_device, chosen)
    footprints = tuple(footprint(cfg, kind) for kind in ("fp32", "bf16"))

    say(f"matmul peak on {torch_device} ...")
    fp32_peak = matmul_peak(cfg, torch_device)
    train_peak = fp32_peak
    peaks = [fp32_peak]
    if chosen == "bf16":
        train_peak = matmul_peak(cfg, torch_device, torch.bfloat16)
        peaks.append(train_peak)
    int8_peak = int8_matmul_peak(cfg) if torch_device.type == "cpu" else None  # dynamic quantisation is CPU-only
    if int8_peak is not None:
        peaks.append(int8_peak)

    kinds = ["ours", "peer"] if with_peer else ["ours"]
    say(f"fixed workload {BATCH}x{SEQ}: {WARMUP_STEPS} warm-up + {steps} timed steps each, {' and '.join(kinds)} interleaved ...")
    raw = fixed_workload(cfg, torch_device, steps, kinds, isolate, say, chosen)
    ours = step_result("ours", raw["ours"], flops["total"], train_peak.gflops, chosen)
    peer = None
    pairs: tuple[float, ...] = ()
    if with_peer:
        peer = step_result("transformers+peft", raw["peer"], flops["total"], train_peak.gflops, "bf16 autocast" if chosen == "bf16" else chosen)
        pairs = tuple(round(p / o, 4) for p, o in zip(raw["peer"]["times"], raw["ours"]["times"], strict=True))
        notes.append(
            "transformers+peft: GPT2ForSequenceClassification (sdpa attention, dropout 0, pad id 50256), LoRA r16 alpha-scaled as the book on "
            "c_attn, c_proj, c_fc, score (its fused c_attn has one LoRA pair where ours has three: same frozen work, 2% fewer LoRA FLOPs)"
        )

    say("loading the SMS splits ...")
    try:
        splits = load_splits_for_bench(data)
    except DownloadError:
        if data is not None:
            raise
        splits = None
        notes.append(
            "the epoch comparison and classification latency need the SMS data, which is not on this machine and could not be downloaded: "
            "prepare it with `python -m engine data --source sms_spam_collection.zip` (or pass --data), then run the benchmark again"
        )
    epoch_results: list[EpochResult] = []
    checks = [memory_check(cfg, torch_device, ours)]
    latency: list[LatencyResult] = []
    floor = None
    if splits is not None:
        say(f"one epoch, book and recommended: {'each whole' if full_epochs else f'{WARMUP_STEPS} warm-up + {steps} timed steps each, interleaved'} ...")
        epoch_results = time_epochs(cfg, splits, torch_device, steps, full_epochs, say, precision)
        say("the cost estimate: a calibration, then its prediction of each epoch ...")
        checks += estimate_checks(cfg, splits, torch_device, epoch_results)
        say("classification latency ...")
        test_texts = splits.test["Text"].tolist()
        messages = (test_texts * (100 // max(1, len(test_texts)) + 1))[:100]
        single = min(test_texts, key=lambda text: (abs(len(encode(text)) - 20), test_texts.index(text)))
        latency = classification_latency(cfg, torch_device, messages, single, steps, with_peer, notes, chosen)
        floor = classification_floor(cfg, messages, fp32_peak, int8_peak)
    notes.append(
        "% of peak: the nominal step FLOPs (all positions, both sides alike) over the median step time, against the matmul peak "
        f"({train_peak.gflops:.1f} GFLOP/s); peak memory: {ours.memory_method}"
    )
    say("matmul peak again (drift check) ...")
    peak_at_end = matmul_peak(cfg, torch_device, torch.bfloat16 if chosen == "bf16" else torch.float32)
    drift = peak_at_end.gflops / train_peak.gflops - 1
    if abs(drift) > 0.15:
        notes.append(f"the matmul peak moved {drift:+.0%} between the start and the end of the run: the machine's speed changed, compare ratios only")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    others_at_end = load - torch.get_num_threads()  # the last minute's load is mostly this run's own threads
    if torch_device.type == "cpu" and max(others_at_end, environment["load_average_1min"] or 0.0) > 0.5 * (os.cpu_count() or 1) + 0.5:
        notes.append(
            f"the machine was busy (1-min load average {environment['load_average_1min']} at the start, {load:.2f} at the end, "
            f"about {torch.get_num_threads()} of it this run's own threads): figures are noisy"
        )
    if floor is not None:
        notes.append(
            "classification: ours as the recommended preset ships (last real token; many messages in length-sorted batches); "
            f"transformers reads the last non-pad token, many messages in batches of {PEER_BATCH} in the given order with an attention mask; "
            "implementations interleaved run by run"
        )
        notes.append(
            f"classification floor: the {floor.messages} messages' forward FLOPs (2 per Linear weight per real token, the last block only at "
            f"the read position, causal attention {floor.attention_gflop:.2f} GFLOP included, padding left out) over the matmul peaks; "
            "no implementation can beat it on this machine"
        )
    return Report(
        environment=environment,
        flops={k: round(v) for k, v in flops.items()},
        peaks=tuple(peaks),
        ours=ours,
        peer=peer,
        epochs=tuple(epoch_results),
        latency=tuple(latency),
        step_pair_ratios=pairs,
        peak_at_end=peak_at_end,
        classification_floor=floor,
        footprints=footprints,
        estimate_checks=tuple(checks),
        notes=tuple(notes),
        elapsed_s=round(time.perf_counter() - began, 1),
    )
