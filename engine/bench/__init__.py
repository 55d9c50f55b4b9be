"""`python -m engine bench`: how fast LoRA Lab trains and classifies on this machine, next to its peers.

Everything runs in one process tree, in one run, on the current device (noise between runs is about
±15 %, so only figures from the same run are compared):

1. the device's matrix-multiply peak at this model's shapes (fp32; on CUDA also bf16);
2. the fixed workload: batch 8 × 120 random tokens, random weights of the chosen size, LoRA r16 on
   every Linear (book preset), timed through the engine's own training loop; then the same batches
   through Hugging Face `transformers` + `peft` (skipped with a note when they are absent). Each side
   runs in a fresh subprocess so its peak memory is its own;
3. one epoch of the real SMS training split in `book` and `recommended` mode (timed on a few steps
   of the real, seeded batch order and extrapolated to all batches by their token counts);
4. classification latency, one message and 100 messages, for us and for `transformers` + `peft`
   (LoRA merged on both sides), plus the int8 path when the classifier offers one.

Timing uses time.perf_counter around whole steps (loss.item() synchronises the device), medians
after warm-up; the thread count is left as PyTorch sets it.
"""

import importlib.util
import inspect
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from engine.config import GPTConfig, LoRAConfig, preset
from engine.tokenizer import END_OF_TEXT_ID, encode

Progress = Callable[[str], None] | None

BATCH = 8
SEQ = 120  # the book's padded length: the longest training message
WARMUP_STEPS = 2  # train() evaluates after its first step, so step 2's interval holds that evaluation
REPO_ROOT = Path(__file__).resolve().parents[2]
SHIPPED_ZIP = REPO_ROOT / "tests" / "fixtures" / "sms_spam_collection.zip"
DEFAULT_CACHE = Path("data_cache")
PEER_BATCH = 32  # messages per forward pass for transformers, as engine.classifier batches ours
PEFT_TARGETS = ["c_attn", "c_proj", "c_fc", "score"]  # every Linear/Conv1D of GPT2ForSequenceClassification


# ---------------------------------------------------------------------------------------------
# FLOP count of one training step
# ---------------------------------------------------------------------------------------------


def step_flops(cfg: GPTConfig, batch: int, seq: int, rank: int, n_classes: int = 2) -> dict[str, float]:
    """FLOPs of one LoRA training step (forward + backward) over batch × seq tokens, all positions.

    With N = batch·seq tokens, d = n_embd, L = n_layer, r = rank:
      frozen products  4 · P · N,  P = L·12d² + d·n_classes (q, k, v, c_proj: 4d²; MLP: 8d²; head).
                       Forward 2PN; backward 2PN for the input gradients only: frozen weights need
                       no weight gradient (the usual 6PN counts a weight gradient we never compute).
      attention        3 · 4·L·seq·d · N: QKᵀ and A·V cost 2·seq·d each per token (full square, as
                       both implementations are charged alike), backward twice the forward.
      LoRA             3 · 2r·Σ(in + out) · N over every adapted Linear: forward x·A·B, backward
                       input gradient and the A and B weight gradients.
    Layer norms, GELU, softmax, the loss and AdamW are O(N·d) and ignored. For gpt2-small at 8 × 120:
    326.1 + 12.7 + 15.4 = 354.2 GFLOP, the issue's 354. Both implementations are credited with this
    same nominal work, so computing fewer positions (the engine's last block) shows up as speed.
    """
    d, L, N = cfg.n_embd, cfg.n_layer, batch * seq
    frozen_params = L * 12 * d * d + d * n_classes
    lora_widths = L * (4 * (d + d) + 2 * (d + 4 * d)) + (d + n_classes)
    parts = {
        "frozen_matmul": 4.0 * frozen_params * N,
        "attention": 3.0 * 4 * L * seq * d * N,
        "lora": 3.0 * 2 * rank * lora_widths * N,
    }
    parts["total"] = sum(parts.values())
    return parts


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MatmulPeak:
    dtype: str
    gflops: float  # the best of the large shapes: the "peak" the step figures are compared with
    shapes: dict[str, float]  # "MxK@KxN" -> GFLOP/s (median of repeats)


@dataclass(frozen=True)
class StepResult:
    """The fixed 8 × 120 workload through one implementation."""

    implementation: str
    precision: str
    step_s: float  # median of the timed steps
    step_min_s: float  # fastest timed step: the least disturbed by other work on a shared machine
    step_cpu_s: float  # median CPU time of a step, all threads: wall time far above cpu/threads means contention
    step_times_s: tuple[float, ...]
    examples_per_s: float
    gflop: float  # nominal work of a step (see step_flops)
    percent_of_peak: float
    peak_memory_mb: float
    memory_before_training_mb: float  # after imports and building the model
    memory_method: str
    trainable_parameters: int
    build_s: float


@dataclass(frozen=True)
class EpochResult:
    """One epoch of the SMS training split in one preset's mode."""

    mode: str
    precision: str
    steps_per_epoch: int
    rows: int
    mean_padded_length: float  # tokens per row actually fed
    mean_real_length: float
    padded_tokens: int
    measured_steps: int
    measured_step_times_s: tuple[float, ...]
    measured_step_widths: tuple[int, ...]
    epoch_s: float
    extrapolated: bool
    method: str


@dataclass(frozen=True)
class LatencyResult:
    implementation: str
    single_tokens: int
    single_p50_ms: float
    single_p95_ms: float
    single_runs: int
    batch_messages: int
    batch_tokens: int
    batch_p50_s: float
    batch_p95_s: float
    batch_runs: int
    agreement_with_fp32: float | None = None  # the int8 path only: share of equal labels


@dataclass(frozen=True)
class Report:
    environment: dict[str, Any]
    flops: dict[str, float]
    peaks: tuple[MatmulPeak, ...]  # at the start of the run
    ours: StepResult
    peer: StepResult | None
    epochs: tuple[EpochResult, ...]
    latency: tuple[LatencyResult, ...]
    notes: tuple[str, ...] = field(default_factory=tuple)
    elapsed_s: float = 0.0
    step_pair_ratios: tuple[float, ...] = ()  # transformers / ours for each interleaved pair of timed steps
    peak_at_end: MatmulPeak | None = None  # measured again last: a large drift means the machine's speed changed mid-run

    @property
    def speedup_vs_peer(self) -> float | None:
        """transformers + peft step time / ours (above 1: we are faster)."""
        return self.peer.step_s / self.ours.step_s if self.peer else None

    @property
    def epoch_speedup(self) -> float | None:
        modes = {e.mode: e for e in self.epochs}
        if "book" in modes and "recommended" in modes:
            return modes["book"].epoch_s / modes["recommended"].epoch_s
        return None

    @property
    def padding_ratio(self) -> float | None:
        modes = {e.mode: e for e in self.epochs}
        if "book" in modes and "recommended" in modes:
            return modes["book"].mean_padded_length / modes["recommended"].mean_padded_length
        return None

    def latency_ratios(self) -> dict[str, float]:
        """transformers latency / ours for each of our paths (above 1: we are faster)."""
        by_name = {r.implementation: r for r in self.latency}
        peer = by_name.get("transformers+peft")
        if peer is None:
            return {}
        ratios = {}
        for name, result in by_name.items():
            if name != peer.implementation:
                ratios[f"{name}_single"] = peer.single_p50_ms / result.single_p50_ms
                ratios[f"{name}_batch"] = peer.batch_p50_s / result.batch_p50_s
        return ratios

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ratios"] = {
            "step_speedup_vs_transformers_peft": self.speedup_vs_peer,
            "step_speedup_paired_median": statistics.median(self.step_pair_ratios) if self.step_pair_ratios else None,
            "epoch_speedup_recommended_vs_book": self.epoch_speedup,
            "padded_length_book_over_recommended": self.padding_ratio,
            "classification_speedup_vs_transformers": self.latency_ratios(),
        }
        return data

    def lines(self) -> list[str]:
        env = self.environment
        out = [
            f"LoRA Lab benchmark: {env['model']} (random weights), {env['device']} ({env['device_name']}), "
            f"torch {env['torch']}, {env['threads']} threads, {self.elapsed_s:.0f} s",
        ]
        for peak in self.peaks:
            shapes = ", ".join(f"{k} {v:.0f}" for k, v in peak.shapes.items())
            out.append(f"matmul peak ({peak.dtype}): {peak.gflops:.1f} GFLOP/s  [GFLOP/s by shape: {shapes}]")
        if self.peak_at_end is not None:
            out.append(f"  again at the end of the run: {self.peak_at_end.gflops:.1f} GFLOP/s ({self.peak_at_end.dtype})")
        f = self.flops
        out.append(
            f"fixed workload: batch {BATCH} x {SEQ} tokens, LoRA r{env['rank']} on every Linear, book preset; "
            f"{f['total'] / 1e9:.1f} GFLOP a step (frozen matmuls {f['frozen_matmul'] / 1e9:.1f}, "
            f"attention {f['attention'] / 1e9:.1f}, LoRA {f['lora'] / 1e9:.1f})"
        )
        for result in (self.ours, self.peer):
            if result is None:
                continue
            out.append(
                f"  {result.implementation:<18} step {result.step_s:6.2f} s (median of {len(result.step_times_s)}; "
                f"best {result.step_min_s:.2f} s; CPU {result.step_cpu_s:.1f} s), "
                f"{result.examples_per_s:5.2f} examples/s, {result.percent_of_peak:5.1f} % of peak, "
                f"peak memory {result.peak_memory_mb / 1024:.2f} GB (built {result.memory_before_training_mb / 1024:.2f} GB) ({result.precision})"
            )
        if self.speedup_vs_peer is not None:
            paired = (
                f", median of {len(self.step_pair_ratios)} interleaved pairs {statistics.median(self.step_pair_ratios):.2f}x" if self.step_pair_ratios else ""
            )
            out.append(f"  ours vs transformers+peft: {self.speedup_vs_peer:.2f}x faster per step{paired} (target 1.15x, aim 1.25x)")
        if self.epochs:
            out.append("one epoch of the SMS training split:")
            for e in self.epochs:
                how = f"extrapolated from {e.measured_steps} timed steps ({e.method})" if e.extrapolated else "measured"
                out.append(
                    f"  {e.mode:<12} {e.epoch_s:7.1f} s for {e.steps_per_epoch} steps, mean padded length {e.mean_padded_length:.1f} "
                    f"(real {e.mean_real_length:.1f}), {how}"
                )
            if self.epoch_speedup is not None:
                out.append(
                    f"  recommended vs book: {self.epoch_speedup:.2f}x faster per epoch, {self.padding_ratio:.2f}x fewer padded tokens per row (target 3x)"
                )
        if self.latency:
            out.append("classification latency (LoRA merged, inference mode):")
            for r in self.latency:
                agreement = f", agrees with fp32 on {r.agreement_with_fp32:.1%}" if r.agreement_with_fp32 is not None else ""
                out.append(
                    f"  {r.implementation:<18} 1 message ({r.single_tokens} tokens): p50 {r.single_p50_ms:6.1f} ms, p95 {r.single_p95_ms:6.1f} ms; "
                    f"{r.batch_messages} messages: p50 {r.batch_p50_s:5.2f} s, p95 {r.batch_p95_s:5.2f} s{agreement}"
                )
            for name, ratio in self.latency_ratios().items():
                out.append(f"  {name} vs transformers: {ratio:.2f}x faster")
        out += [f"note: {note}" for note in self.notes]
        return out


# ---------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def matmul_peak(cfg: GPTConfig, device: torch.device, dtype: torch.dtype = torch.float32, repeats: int = 10) -> MatmulPeak:
    """GFLOP/s of the step's large products (8·120 rows by this model's widths), and one small one."""
    d, rows = cfg.n_embd, BATCH * SEQ
    large = [(rows, d, 3 * d), (rows, d, 4 * d), (rows, 4 * d, d)]
    small = [(20, d, 4 * d)]  # one 20-token message through c_fc: what classification runs into
    results = {}
    for m, k, n in large + small:
        a = torch.randn(m, k, device=device, dtype=dtype)
        b = torch.randn(k, n, device=device, dtype=dtype)
        out = torch.empty(m, n, device=device, dtype=dtype)
        once = []
        for _ in range(3):
            _sync(device)
            start = time.perf_counter()
            torch.matmul(a, b, out=out)
            _sync(device)
            once.append(time.perf_counter() - start)
        inner = min(200, max(1, math.ceil(0.02 / max(statistics.median(once), 1e-7))))  # small products repeat to ~20 ms
        times: list[float] = []
        deadline = time.perf_counter() + 2.0  # a busy machine must not stretch this section
        while len(times) < repeats and (len(times) < 3 or time.perf_counter() < deadline):
            _sync(device)
            start = time.perf_counter()
            for _ in range(inner):
                torch.matmul(a, b, out=out)
            _sync(device)
            times.append((time.perf_counter() - start) / inner)
        results[f"{m}x{k}@{k}x{n}"] = 2 * m * k * n / statistics.median(times) / 1e9
    best = max(results[f"{m}x{k}@{k}x{n}"] for m, k, n in large)
    return MatmulPeak(str(dtype).removeprefix("torch."), round(best, 1), {k: round(v, 1) for k, v in results.items()})


def fixed_batches(vocab_size: int, steps: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """`steps` batches of 8 × 120 random non-pad tokens and labels: (steps, 8, 120), (steps, 8)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, min(vocab_size, END_OF_TEXT_ID), (steps, BATCH, SEQ), generator=generator)
    labels = torch.randint(0, 2, (steps, BATCH), generator=generator)
    return ids, labels


def _rss_mb() -> float:
    """This process's resident-set high-water mark so far, MB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def _memory_now_mb(device: torch.device) -> float:
    """Memory held now: allocated on CUDA; on CPU the RSS high-water mark so far (imports and model)."""
    return torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else _rss_mb()


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _memory_mb(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "torch.cuda.max_memory_allocated"
    return _rss_mb(), "RSS high-water mark (ru_maxrss), imports and model build included"


class _OursStepper:
    """The fixed workload through the engine's own `train` loop (book preset, LoRA on every Linear), a step at a time."""

    def __init__(self, cfg: GPTConfig, device: torch.device, total: int) -> None:
        from torch.utils.data import DataLoader

        from engine.classifier import build_classifier
        from engine.loaders import Loaders, collate
        from engine.lora import count_parameters
        from engine.model import GPT
        from engine.train import train

        book = preset("book")
        ids, labels = fixed_batches(cfg.vocab_size, total)
        rows = [(row.tolist(), int(label)) for batch, batch_labels in zip(ids, labels, strict=True) for row, label in zip(batch, batch_labels, strict=True)]
        loader = DataLoader(rows, batch_size=BATCH, shuffle=False, collate_fn=lambda items: collate(items, SEQ))
        # eval_iter 1 and a far eval_freq: the only evaluation is train()'s after step 1, inside the warm-up.
        train_cfg = replace(book.train, epochs=1, max_steps=total, eval_iter=1, eval_freq=10**9, bf16_autocast=True)
        self.device = device
        torch.manual_seed(123)
        start = time.perf_counter()
        model = build_classifier(GPT(cfg).to(device), book.lora)
        _sync(device)
        self.info = dict(build_s=time.perf_counter() - start, before_mb=_memory_now_mb(device), trainable=count_parameters(model).trainable)
        _reset_peak(device)
        self.events = train(model, Loaders(loader, loader, loader, SEQ), train_cfg, device)

    def step(self) -> tuple[float, float]:
        from engine.train import StepDone

        start, cpu = time.perf_counter(), time.process_time()
        for event in self.events:
            if isinstance(event, StepDone):
                break
        return time.perf_counter() - start, time.process_time() - cpu

    def finish(self) -> dict[str, Any]:
        self.events.close()  # skip the end-of-epoch evaluation
        peak, method = _memory_mb(self.device)
        return dict(peak_mb=peak, method=method)


class _PeerStepper:
    """The same batches through transformers' GPT2ForSequenceClassification + peft LoRA, the same optimiser."""

    def __init__(self, cfg: GPTConfig, device: torch.device, total: int) -> None:
        book = preset("book")
        self.ids, self.labels = fixed_batches(cfg.vocab_size, total)
        self.device = device
        torch.manual_seed(123)
        start = time.perf_counter()
        self.model = _peer_model(cfg, book.lora).to(device)
        _sync(device)
        parameters = [p for p in self.model.parameters() if p.requires_grad]
        self.info = dict(build_s=time.perf_counter() - start, before_mb=_memory_now_mb(device), trainable=sum(p.numel() for p in parameters))
        _reset_peak(device)
        self.optimizer = torch.optim.AdamW(parameters, lr=book.train.lr, weight_decay=book.train.weight_decay)
        self.model.train()
        self.index = 0

    def step(self) -> tuple[float, float]:
        import torch.nn.functional as F

        from engine.train import autocast

        start, cpu = time.perf_counter(), time.process_time()
        ids, labels = self.ids[self.index].to(self.device), self.labels[self.index].to(self.device)
        self.index += 1
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, True):
            logits = self.model(input_ids=ids).logits
        loss = F.cross_entropy(logits.float(), labels)
        loss.backward()
        self.optimizer.step()
        loss.item()
        return time.perf_counter() - start, time.process_time() - cpu

    def finish(self) -> dict[str, Any]:
        peak, method = _memory_mb(self.device)
        return dict(peak_mb=peak, method=method)


STEPPERS = {"ours": _OursStepper, "peer": _PeerStepper}


def _peer_model(cfg: GPTConfig, lora: LoRAConfig) -> Any:
    """GPT2ForSequenceClassification of the same shape (dropout 0, pad id 50256) with peft LoRA on every layer."""
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2ForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    config = GPT2Config(
        vocab_size=cfg.vocab_size,
        n_positions=cfg.context_length,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        layer_norm_epsilon=cfg.layer_norm_eps,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        num_labels=2,
        pad_token_id=END_OF_TEXT_ID,
    )
    base = GPT2ForSequenceClassification(config)
    # alpha scaling as in the book: peft scales by lora_alpha / r, so lora_alpha = scale · r.
    peft_config = LoraConfig(r=lora.rank, lora_alpha=lora.scale * lora.rank, lora_dropout=0.0, target_modules=PEFT_TARGETS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fan_in_fan_out notices for GPT-2's Conv1D layers
        return get_peft_model(base, peft_config)


PROTOCOL = "@@bench "  # prefix of the lines a measuring subprocess answers with


def _child_main() -> None:
    """A measuring subprocess: JSON arguments on the first stdin line, then `step` / `finish` commands."""
    args = json.loads(sys.stdin.readline())
    warnings.simplefilter("ignore")
    stepper = STEPPERS[args["kind"]](GPTConfig(**args["cfg"]), torch.device(args["device"]), args["total"])
    answer = lambda payload: print(PROTOCOL + json.dumps(payload), flush=True)  # noqa: E731
    answer(stepper.info)
    for command in sys.stdin:
        if command.strip() == "step":
            answer(stepper.step())
        else:
            answer(stepper.finish())
            return


class _Subprocess:
    """A stepper living in a fresh Python process, so its peak memory is its own."""

    def __init__(self, kind: str, cfg: GPTConfig, device: torch.device, total: int) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        self.kind = kind
        self.stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (lives as long as the child; closed in kill)
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from engine.bench import _child_main; _child_main()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            env=env,
        )
        self.info = self._ask(json.dumps({"kind": kind, "cfg": asdict(cfg), "device": str(device), "total": total}))

    def _ask(self, line: str) -> Any:
        assert self.process.stdin is not None and self.process.stdout is not None
        try:
            self.process.stdin.write(line + "\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            pass  # reported below, with the child's own error
        for answer in self.process.stdout:
            if answer.startswith(PROTOCOL):
                return json.loads(answer[len(PROTOCOL) :])
        code = self.process.wait()
        self.stderr.seek(0)
        tail = " ".join(self.stderr.read().strip().splitlines()[-3:])
        raise RuntimeError(f"the {self.kind} measurement failed in its subprocess (exit {code}): {tail}")

    def step(self) -> tuple[float, float]:
        wall, cpu = self._ask("step")
        return wall, cpu

    def finish(self) -> dict[str, Any]:
        result = self._ask("finish")
        self.process.wait()
        result["method"] += ", in a fresh subprocess per implementation"
        return result

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.stderr.close()


def fixed_workload(
    cfg: GPTConfig, device: torch.device, steps: int, kinds: Sequence[str], isolate: bool, say: Callable[[str], None]
) -> dict[str, dict[str, Any]]:
    """Time `steps` steps (after WARMUP_STEPS) of each implementation, interleaved step by step.

    Interleaving (in alternating order) makes both sides see the same background load, so their
    ratio holds even when the machine's speed drifts during the run.
    """
    total = WARMUP_STEPS + steps
    workers: dict[str, Any] = {}
    try:
        for kind in kinds:
            say(f"  building {kind} ({'fresh subprocess' if isolate else 'this process'}) ...")
            workers[kind] = _Subprocess(kind, cfg, device, total) if isolate else STEPPERS[kind](cfg, device, total)
        times: dict[str, list[float]] = {kind: [] for kind in workers}
        cpu: dict[str, list[float]] = {kind: [] for kind in workers}
        for i in range(total):
            order = list(workers) if i % 2 == 0 else list(reversed(workers))
            this_round = {kind: workers[kind].step() for kind in order}
            if i >= WARMUP_STEPS:
                for kind, (wall, used) in this_round.items():
                    times[kind].append(wall)
                    cpu[kind].append(used)
            say(f"  step {i + 1}/{total}{' (warm-up)' if i < WARMUP_STEPS else ''}: " + ", ".join(f"{k} {t:.2f} s" for k, (t, _) in this_round.items()))
        results = {}
        for kind, worker in workers.items():
            finished = worker.finish()
            if not isolate:
                finished["method"] += ", in one shared process (not isolated)"
            results[kind] = {**worker.info, **finished, "times": times[kind], "cpu_times": cpu[kind]}
        return results
    finally:
        for worker in workers.values():
            if isinstance(worker, _Subprocess):
                worker.kill()


def _step_result(name: str, raw: dict[str, Any], flops: float, peak_gflops: float, precision: str) -> StepResult:
    step = statistics.median(raw["times"])
    return StepResult(
        implementation=name,
        precision=precision,
        step_s=round(step, 4),
        step_min_s=round(min(raw["times"]), 4),
        step_cpu_s=round(statistics.median(raw["cpu_times"]), 4),
        step_times_s=tuple(round(t, 4) for t in raw["times"]),
        examples_per_s=round(BATCH / step, 3),
        gflop=round(flops / 1e9, 1),
        percent_of_peak=round(100 * flops / step / 1e9 / peak_gflops, 1),
        peak_memory_mb=round(raw["peak_mb"], 1),
        memory_before_training_mb=round(raw["before_mb"], 1),
        memory_method=raw["method"],
        trainable_parameters=raw["trainable"],
        build_s=round(raw["build_s"], 2),
    )


def load_splits_for_bench(data: str | None) -> Any:
    """The SMS splits: `data` if given, else the prepared data cache, else the shipped zip (nothing written)."""
    from engine.data import prepare

    if data is None and (DEFAULT_CACHE / "train.csv").is_file():
        data = str(DEFAULT_CACHE)
    if data is None:
        data = str(SHIPPED_ZIP)
    if not data.startswith(("http://", "https://")) and Path(data).is_dir():
        return prepare(data).splits
    with tempfile.TemporaryDirectory() as scratch:
        return prepare(data, scratch).splits


class _EpochRun:
    """One preset's real training epoch through `train`, advanced a step at a time."""

    def __init__(self, mode: str, cfg: GPTConfig, splits: Any, device: torch.device, timed: int | None) -> None:
        from engine.classifier import build_classifier
        from engine.loaders import make_loaders
        from engine.model import GPT
        from engine.train import train

        chosen = preset(mode)
        self.mode, self.device, self.rows_per_batch = mode, device, chosen.train.batch_size
        self.widths, self.real = [], []
        for batch in make_loaders(splits, chosen.train, cfg.context_length).train:  # the same seeded order train() will see
            self.widths.append(batch.input_ids.size(1))
            self.real += batch.lengths.tolist()
        self.total = len(self.widths) if timed is None else min(len(self.widths), timed)
        self.full = timed is None
        self.train_cfg = replace(chosen.train, epochs=1, max_steps=self.total, eval_iter=1, eval_freq=10**9)
        torch.manual_seed(123)
        model = build_classifier(GPT(cfg).to(device), chosen.lora)
        self.events = train(model, make_loaders(splits, chosen.train, cfg.context_length), self.train_cfg, device)
        self.intervals: list[float] = []

    def step(self) -> None:
        from engine.train import StepDone

        if len(self.intervals) >= self.total:
            return
        start = time.perf_counter()
        for event in self.events:
            if isinstance(event, StepDone):
                break
        self.intervals.append(time.perf_counter() - start)

    def result(self) -> EpochResult:
        self.events.close()
        intervals, widths = list(self.intervals), self.widths
        bf16 = self.device.type == "cuda" and self.train_cfg.bf16_autocast and torch.cuda.is_bf16_supported()
        padded = [w * self.rows_per_batch for w in widths]
        if self.full:
            # step 2's interval holds train()'s evaluation after step 1: count it as its neighbours' mean
            if len(intervals) > 2:
                intervals[1] = (intervals[0] + intervals[2]) / 2
            epoch_s, method, kept, kept_widths = sum(intervals), "full epoch", intervals, widths
        else:
            kept = intervals[WARMUP_STEPS:] or intervals[-1:]
            kept_widths = widths[WARMUP_STEPS : len(intervals)] or widths[len(intervals) - 1 : len(intervals)]
            epoch_s, method = _extrapolate(kept, [w * self.rows_per_batch for w in kept_widths], padded)
        return EpochResult(
            mode=self.mode,
            precision="bf16 autocast" if bf16 else "fp32",
            steps_per_epoch=len(widths),
            rows=len(widths) * self.rows_per_batch,
            mean_padded_length=round(statistics.fmean(widths), 2),
            mean_real_length=round(statistics.fmean(self.real), 2),
            padded_tokens=sum(padded),
            measured_steps=len(kept),
            measured_step_times_s=tuple(round(t, 4) for t in kept),
            measured_step_widths=tuple(kept_widths),
            epoch_s=round(epoch_s, 2),
            extrapolated=not self.full,
            method=method,
        )


def epochs(cfg: GPTConfig, splits: Any, device: torch.device, steps: int, full: bool, say: Callable[[str], None]) -> list[EpochResult]:
    """`book` and `recommended` epochs, their steps interleaved so both see the same machine load."""
    runs = [_EpochRun(mode, cfg, splits, device, None if full else WARMUP_STEPS + steps) for mode in ("book", "recommended")]
    for i in range(max(run.total for run in runs)):
        for run in runs if i % 2 == 0 else runs[::-1]:
            run.step()
        if i % 10 == 9 or i < WARMUP_STEPS + steps:
            say(f"  step {i + 1}: " + ", ".join(f"{r.mode} {r.intervals[-1]:.2f} s (width {r.widths[len(r.intervals) - 1]})" for r in runs))
    return [run.result() for run in runs]


def _extrapolate(times: Sequence[float], tokens: Sequence[int], all_tokens: Sequence[int]) -> tuple[float, str]:
    """Epoch time from timed steps: a per-step + per-token least-squares fit when the timed widths
    spread enough to support one, else time proportional to tokens (the steps' mean rate)."""
    if len(set(tokens)) >= 2 and max(tokens) >= 1.5 * min(tokens):
        mean_t, mean_x = statistics.fmean(times), statistics.fmean(tokens)
        slope = sum((x - mean_x) * (t - mean_t) for x, t in zip(tokens, times, strict=True)) / sum((x - mean_x) ** 2 for x in tokens)
        intercept = mean_t - slope * mean_x
        if slope > 0 and intercept >= 0:
            return intercept * len(all_tokens) + slope * sum(all_tokens), f"fit {intercept:.3f} s + {slope * 1e3:.3f} ms/token"
    if len(set(tokens)) == 1:
        step = statistics.median(times)
        return step * len(all_tokens), "median step x steps"
    rate = sum(times) / sum(tokens)
    return rate * sum(all_tokens), f"{rate * 1e3:.3f} ms/token x epoch tokens"


def _latency(
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


def _int8_option() -> str | None:
    """The keyword the classifier takes to switch on its int8 path, if it has one."""
    from engine.classifier import Classifier

    parameters = inspect.signature(Classifier.__init__).parameters
    return next((name for name in ("quantize", "int8", "quantized") if name in parameters), None)


def classification_latency(
    cfg: GPTConfig, device: torch.device, messages: list[str], single: str, steps: int, with_peer: bool, notes: list[str]
) -> list[LatencyResult]:
    """p50/p95 latency of one message and of `messages`, ours (fp32, int8 if offered) and the peer's, interleaved."""
    from engine.adapter import AdapterConfig
    from engine.classifier import Classifier, build_classifier
    from engine.model import GPT

    chosen = preset("recommended")  # classification as shipped: last real token, no padding
    single_runs, batch_runs = max(10, 4 * steps), max(2, (steps + 1) // 2)
    adapter = AdapterConfig("random:" + cfg.name, cfg, chosen.lora, chosen.train.pooling, chosen.train.padding, cfg.context_length)

    def ours(**options: Any) -> Any:
        torch.manual_seed(123)
        return Classifier(build_classifier(GPT(cfg), chosen.lora), adapter, device, **options)

    fp32 = ours()
    runners: dict[str, Callable[[list[str]], Any]] = {"ours fp32": fp32.classify}
    agreement: dict[str, float] = {}
    option = _int8_option()
    if option is None:
        notes.append("int8 classification: not measured, engine.classifier.Classifier has no quantize/int8 option yet (issue 4 target 4)")
    elif device.type != "cpu":
        notes.append(f"int8 classification: skipped on {device.type} (PyTorch's dynamic quantization runs on CPU)")
    else:
        int8 = ours(**{option: True})
        reference = [p.label for p in fp32.classify(messages)]
        agreement["ours int8"] = statistics.fmean(p.label == r for p, r in zip(int8.classify(messages), reference, strict=True))
        runners["ours int8"] = int8.classify
    if with_peer:
        torch.manual_seed(123)
        peer = _peer_model(cfg, chosen.lora).merge_and_unload().to(device).eval()

        @torch.inference_mode()
        def run_peer(texts: list[str]) -> list[int]:
            # the usual transformers batching: in the given order, right-padded to each batch's longest, attention mask
            labels: list[int] = []
            for start in range(0, len(texts), PEER_BATCH):
                encoded = [encode(text)[: cfg.context_length] for text in texts[start : start + PEER_BATCH]]
                width = max(len(ids) for ids in encoded)
                ids = torch.full((len(encoded), width), END_OF_TEXT_ID, dtype=torch.long)
                mask = torch.zeros((len(encoded), width), dtype=torch.long)
                for row, tokens in enumerate(encoded):
                    ids[row, : len(tokens)] = torch.tensor(tokens)
                    mask[row, : len(tokens)] = 1
                logits = peer(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
                labels += torch.softmax(logits.float(), dim=-1).argmax(dim=-1).tolist()
            return labels

        runners["transformers+peft"] = run_peer
    timings = _latency(runners, single, messages, single_runs, batch_runs)
    return [_latency_result(name, *timings[name], single, messages, agreement.get(name)) for name in runners]


def _environment(cfg: GPTConfig, device: torch.device) -> dict[str, Any]:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    return {
        "model": cfg.name,
        "device": str(device),
        "device_name": name,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "rank": preset("book").lora.rank,
        "batch": BATCH,
        "seq": SEQ,
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f", {os.cpu_count()} cores"
    except OSError:
        pass
    return (platform.processor() or "cpu") + f", {os.cpu_count()} cores"


def peers_available() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("transformers", "peft"))


def run_benchmark(
    model: str | GPTConfig = "gpt2-small",
    device: str = "auto",
    steps: int = 5,
    data: str | None = None,
    progress: Progress = None,
    *,
    full_epochs: bool = False,
    peers: bool = True,
    isolate: bool = True,
) -> Report:
    """Run every measurement in one go; see the module docstring.

    `full_epochs` times whole epochs instead of extrapolating; `peers=False` skips transformers + peft;
    `isolate=False` runs the fixed workload in this process (faster to start, but its peak memory is
    then this process's high-water mark, not the measurement's own).
    """
    from engine.device import pick_device
    from engine.weights import resolve

    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"--steps must be a whole number of at least 1, got {steps!r}")
    say = progress or (lambda message: None)
    began = time.perf_counter()
    cfg = model if isinstance(model, GPTConfig) else resolve(model).config
    torch_device = pick_device(device)
    notes: list[str] = []
    with_peer = peers and peers_available()
    if peers and not with_peer:
        notes.append("transformers + peft not installed (pip install -r requirements-dev.txt): peer figures skipped")
    book = preset("book")
    flops = step_flops(cfg, BATCH, SEQ, book.lora.rank)
    environment = _environment(cfg, torch_device)

    say(f"matmul peak on {torch_device} ...")
    peaks = [matmul_peak(cfg, torch_device)]
    precision = "fp32"
    if torch_device.type == "cuda" and torch.cuda.is_bf16_supported():
        peaks.append(matmul_peak(cfg, torch_device, torch.bfloat16))
        precision = "bf16 autocast"
    train_peak = peaks[-1].gflops

    kinds = ["ours", "peer"] if with_peer else ["ours"]
    say(f"fixed workload {BATCH}x{SEQ}: {WARMUP_STEPS} warm-up + {steps} timed steps each, {' and '.join(kinds)} interleaved ...")
    raw = fixed_workload(cfg, torch_device, steps, kinds, isolate, say)
    ours = _step_result("ours", raw["ours"], flops["total"], train_peak, precision)
    peer = None
    pairs: tuple[float, ...] = ()
    if with_peer:
        peer = _step_result("transformers+peft", raw["peer"], flops["total"], train_peak, precision)
        pairs = tuple(round(p / o, 4) for p, o in zip(raw["peer"]["times"], raw["ours"]["times"], strict=True))
        notes.append(
            "transformers+peft: GPT2ForSequenceClassification (sdpa attention, dropout 0, pad id 50256), LoRA r16 alpha-scaled as the book on "
            "c_attn, c_proj, c_fc, score (its fused c_attn has one LoRA pair where ours has three: same frozen work, 2% fewer LoRA FLOPs)"
        )

    say("loading the SMS splits ...")
    splits = load_splits_for_bench(data)
    say(f"one epoch, book and recommended interleaved: {'every step' if full_epochs else f'{WARMUP_STEPS} warm-up + {steps} timed steps each'} ...")
    epoch_results = epochs(cfg, splits, torch_device, steps, full_epochs, say)

    say("classification latency ...")
    test_texts = splits.test["Text"].tolist()
    messages = (test_texts * (100 // max(1, len(test_texts)) + 1))[:100]
    single = min(test_texts, key=lambda text: (abs(len(encode(text)) - 20), test_texts.index(text)))
    latency = classification_latency(cfg, torch_device, messages, single, steps, with_peer, notes)
    notes.append(
        "% of peak: the nominal step FLOPs (all positions, both sides alike) over the median step time, against the matmul peak "
        f"({train_peak:.1f} GFLOP/s); peak memory: {ours.memory_method}"
    )
    say("matmul peak again (drift check) ...")
    peak_at_end = matmul_peak(cfg, torch_device, torch.bfloat16 if precision != "fp32" else torch.float32)
    drift = peak_at_end.gflops / train_peak - 1
    if abs(drift) > 0.15:
        notes.append(f"the matmul peak moved {drift:+.0%} between the start and the end of the run: the machine's speed changed, compare ratios only")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if torch_device.type == "cpu" and max(load, environment["load_average_1min"] or 0.0) > 0.5 * (os.cpu_count() or 1) + 0.5:
        notes.append(f"the machine was busy (1-min load average {environment['load_average_1min']} at the start, {load:.2f} at the end): figures are noisy")
    notes.append(
        "classification: ours as the recommended preset ships (last real token; many messages in length-sorted batches); "
        f"transformers reads the last non-pad token, many messages in batches of {PEER_BATCH} in the given order with an attention mask; "
        "implementations interleaved run by run"
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
        notes=tuple(notes),
        elapsed_s=round(time.perf_counter() - began, 1),
    )
