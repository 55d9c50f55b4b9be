"""Classification latency: one message and a batch of many, through our fp32 and int8 paths and the
`transformers` peer, interleaved run by run; and the floor the batch's FLOPs set on this machine."""

import copy
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from engine.bench.peak import classify_flops
from engine.bench.peer import peer_classifier
from engine.bench.report import ClassificationFloor, LatencyResult, MatmulPeak
from engine.config import GPTConfig, preset
from engine.tokenizer import encode

BATCH_TARGET_S = 2.0  # the project's aim: 100 messages classified in under 2 s


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _time_runners(
    runners: dict[str, Callable[[list[str]], Any]], single: str, batch: list[str], single_runs: int, batch_runs: int
) -> dict[str, tuple[list[float], list[float]]]:
    """Single-message and whole-batch timings of every runner, interleaved run by run."""
    names = list(runners)
    for name in names:
        runners[name]([single])
        runners[name]([single])
        runners[name](batch[:10])
    timings: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in names}
    for kind, texts, runs in ((0, [single], single_runs), (1, batch, batch_runs)):
        for i in range(runs):
            for name in names[i % len(names) :] + names[: i % len(names)]:
                start = time.perf_counter()
                runners[name](texts)
                timings[name][kind].append(time.perf_counter() - start)
    return timings


def _latency_result(name: str, singles: list[float], batches: list[float], single: str, batch: list[str], agreement: float | None = None) -> LatencyResult:
    return LatencyResult(
        implementation=name,
        single_tokens=len(encode(single)),
        single_p50_ms=round(1e3 * percentile(singles, 50), 2),
        single_p95_ms=round(1e3 * percentile(singles, 95), 2),
        single_runs=len(singles),
        batch_messages=len(batch),
        batch_tokens=sum(len(encode(text)) for text in batch),
        batch_p50_s=round(percentile(batches, 50), 3),
        batch_p95_s=round(percentile(batches, 95), 3),
        batch_runs=len(batches),
        agreement_with_fp32=None if agreement is None else round(agreement, 4),
    )


def classification_latency(
    cfg: GPTConfig, device: torch.device, messages: list[str], single: str, steps: int, with_peer: bool, notes: list[str], precision: str = "fp32"
) -> list[LatencyResult]:
    """p50/p95 latency of one message and of `messages`, ours (in `precision`; int8 on CPU) and the peer's, interleaved."""
    from engine.adapter import AdapterConfig
    from engine.classifier import Classifier, build_classifier
    from engine.model import GPT

    chosen = preset("recommended")  # classification as shipped: last real token, no padding
    single_runs, batch_runs = max(10, 4 * steps), max(2, (steps + 1) // 2)
    adapter = AdapterConfig("random:" + cfg.name, cfg, chosen.lora, chosen.train.pooling, chosen.train.padding, cfg.context_length)

    with torch.device(device):  # random weights, drawn where they are used (on a CPU the int8 copy quantises them there)
        random_classifier = build_classifier(GPT(cfg), chosen.lora)
    ours = Classifier(copy.deepcopy(random_classifier), adapter, device, precision=precision)  # int8 quantises the original: the same weights
    runners: dict[str, Callable[[list[str]], Any]] = {f"ours {precision}": ours.classify}
    agreement: dict[str, float] = {}
    if device.type != "cpu":
        notes.append(f"int8 classification: skipped on {device.type} (PyTorch's dynamic quantization runs on CPU)")
    else:
        int8 = Classifier(random_classifier, adapter, device, int8=True)
        reference = [p.label for p in ours.classify(messages)]
        agreement["ours int8"] = statistics.fmean(p.label == r for p, r in zip(int8.classify(messages), reference, strict=True))
        runners["ours int8"] = int8.classify
    if with_peer:
        runners["transformers+peft"] = peer_classifier(cfg, chosen.lora, device)
    timings = _time_runners(runners, single, messages, single_runs, batch_runs)
    return [_latency_result(name, *timings[name], single, messages, agreement.get(name)) for name in runners]


def classification_floor(cfg: GPTConfig, messages: list[str], fp32: MatmulPeak, int8: MatmulPeak | None) -> ClassificationFloor:
    """The least time one forward pass over `messages` can take at these peaks (see classify_flops)."""
    lengths = [min(len(encode(text)), cfg.context_length) for text in messages]  # the classifier truncates to the context
    flops = classify_flops(cfg, lengths)
    return ClassificationFloor(
        messages=len(messages),
        tokens=sum(lengths),
        gflop=round(flops["total"] / 1e9, 3),
        attention_gflop=round(flops["attention"] / 1e9, 3),
        fp32_peak_gflops=fp32.gflops,
        fp32_s=round(flops["total"] / 1e9 / fp32.gflops, 3),
        int8_peak_gflops=None if int8 is None else int8.gflops,
        int8_s=None if int8 is None else round(flops["total"] / 1e9 / int8.gflops, 3),
        target_s=BATCH_TARGET_S,
    )
