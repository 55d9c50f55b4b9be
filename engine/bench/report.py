"""The benchmark's results: one frozen dataclass per measurement, and the Report that prints them
(`lines()`) or serialises them for `--json` (`to_dict()`)."""

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

# The goals set for a CPU run (docs/benchmark.md): a training step this much faster than transformers + peft, the
# many-message batch within this factor of its arithmetic floor, training under this much memory.
STEP_GOAL = 1.2
FLOOR_GOAL = 1.3
MEMORY_GOAL_GB = 1.2
ESTIMATE_GOAL = 0.3  # the cost estimate's aim: within ±30 % of what the bench measures


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
    tokens_per_s: float  # padded tokens fed per second (batch × seq / step)
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
    # What the preset's periodic evaluation adds to an epoch: the loss estimate (eval_iter batches of
    # train and validation) every eval_freq steps, and the same with live validation scoring, whose
    # validation half is one pass over the whole validation set.
    estimates_per_epoch: int = 0
    estimate_s: float = 0.0
    live_estimate_s: float = 0.0
    estimate_validation_batches: int = 0  # validation batches a loss estimate reads (eval_iter)
    live_validation_batches: int = 0  # ... and with live scoring: the whole validation set
    real_tokens: int = 0  # the messages' own tokens in an epoch, padding left out
    preset_epochs: int = 1  # how many epochs the preset trains

    @property
    def tokens_per_s(self) -> float:
        """Padded tokens through training per second: the work the device did."""
        return self.padded_tokens / self.epoch_s if self.epoch_s else 0.0

    @property
    def real_tokens_per_s(self) -> float:
        """The messages' own tokens per second: what padding less (recommended) gains shows here."""
        return self.real_tokens / self.epoch_s if self.epoch_s else 0.0

    @property
    def preset_training_s(self) -> float:
        """The preset's whole training: its epochs, each with its loss estimates scored live (the app's default)."""
        return self.preset_epochs * (self.epoch_s + self.estimates_per_epoch * self.live_estimate_s)

    @property
    def estimate_overhead(self) -> float:
        """The loss estimates' share of an epoch's training time."""
        return self.estimates_per_epoch * self.estimate_s / self.epoch_s if self.epoch_s else 0.0

    @property
    def live_overhead(self) -> float:
        """The same with live validation scoring (the app's default)."""
        return self.estimates_per_epoch * self.live_estimate_s / self.epoch_s if self.epoch_s else 0.0


@dataclass(frozen=True)
class Footprint:
    """What a model's weights take in one precision (the book's LoRA, r16 on every Linear), counted
    from the tensors the engine keeps, not measured: the frozen base as stored, LoRA's trainable
    tensors (float32 in every precision) and AdamW's two moments for them."""

    precision: str
    frozen_bytes: int
    trainable_bytes: int
    optimizer_bytes: int


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
class ClassificationFloor:
    """The least time the many-message batch's forward pass can take on this machine: its FLOPs
    (see classify_flops) over a matmul peak. No implementation beats it, so a target below it
    needs fewer FLOPs or faster hardware, not better code."""

    messages: int
    tokens: int  # real tokens after truncation; padding is left out, so the floor is a lower bound
    gflop: float
    attention_gflop: float  # part of gflop
    fp32_peak_gflops: float
    fp32_s: float
    int8_peak_gflops: float | None  # None where int8 was not measured (off the CPU)
    int8_s: float | None
    target_s: float  # the aim for the many-message batch (latency.BATCH_TARGET_S)


@dataclass(frozen=True)
class EstimateCheck:
    """One figure of the cost estimate (engine/estimate.py) against the bench's measurement of it."""

    what: str  # "book epoch", "fixed workload peak memory"
    unit: str  # "s", "GB"
    predicted: float
    measured: float

    @property
    def error(self) -> float:
        """predicted / measured - 1: +0.1 means 10 % too high."""
        return self.predicted / self.measured - 1 if self.measured else 0.0


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
    classification_floor: ClassificationFloor | None = None
    footprints: tuple[Footprint, ...] = ()
    estimate_checks: tuple[EstimateCheck, ...] = ()

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
            "evaluation_overhead": {e.mode: {"loss_estimates": e.estimate_overhead, "with_live_scoring": e.live_overhead} for e in self.epochs},
            "classification_speedup_vs_transformers": self.latency_ratios(),
            "classification_batch_over_floor": self.batch_over_floor,
            "estimate_errors": {check.what: round(check.error, 3) for check in self.estimate_checks},
        }
        data["rates"] = {
            "step_tokens_per_s": self.ours.tokens_per_s,
            "epochs": {
                e.mode: {
                    "precision": e.precision,
                    "tokens_per_s": round(e.tokens_per_s, 1),
                    "real_tokens_per_s": round(e.real_tokens_per_s, 1),
                    "preset_training_s": round(e.preset_training_s, 2),
                }
                for e in self.epochs
            },
        }
        return data

    @property
    def batch_over_floor(self) -> float | None:
        """Our fp32 time for the many-message batch over its arithmetic floor (1: no code could do better here)."""
        ours = next((r for r in self.latency if r.implementation == "ours fp32"), None)
        floor = self.classification_floor
        return ours.batch_p50_s / floor.fp32_s if ours and floor and floor.fp32_s else None

    def lines(self) -> list[str]:
        env = self.environment
        out = [
            f"LoRA Lab benchmark: {env['model']} (random weights), {env['device']} ({env['device_name']}), "
            f"torch {env['torch']}, {env['threads']} threads, {self.elapsed_s:.0f} s",
            f"precision: {env['precision']}; frozen products: {env['frozen_products']}",
        ]
        if self.footprints:
            mb = lambda size: f"{size / 2**20:,.1f} MB"
            sizes = (f"{f.precision}: frozen {mb(f.frozen_bytes)}, LoRA {mb(f.trainable_bytes)} + AdamW {mb(f.optimizer_bytes)}" for f in self.footprints)
            out.append("weights (book LoRA): " + "; ".join(sizes))
        for peak in self.peaks:
            shapes = ", ".join(f"{k} {v:.0f}" for k, v in peak.shapes.items())
            out.append(f"matmul peak ({peak.dtype}): {peak.gflops:.1f} GFLOP/s  [GFLOP/s by shape: {shapes}]")
        if self.peak_at_end is not None:
            out.append(f"  again at the end of the run: {self.peak_at_end.gflops:.1f} GFLOP/s ({self.peak_at_end.dtype})")
        out += self._step_lines()
        out += self._epoch_lines()
        out += self._latency_lines()
        out += self._estimate_lines()
        out += [f"note: {note}" for note in self.notes]
        return out

    def _step_lines(self) -> list[str]:
        env, f = self.environment, self.flops
        out = [
            f"fixed workload: batch {env['batch']} x {env['seq']} tokens, LoRA r{env['rank']} on every Linear, book preset; "
            f"{f['total'] / 1e9:.1f} GFLOP a step (frozen matmuls {f['frozen_matmul'] / 1e9:.1f}, "
            f"attention {f['attention'] / 1e9:.1f}, LoRA {f['lora'] / 1e9:.1f})"
        ]
        for result in (self.ours, self.peer):
            if result is None:
                continue
            out.append(
                f"  {result.implementation:<18} step {result.step_s:6.2f} s (median of {len(result.step_times_s)}; "
                f"best {result.step_min_s:.2f} s; CPU {result.step_cpu_s:.1f} s), "
                f"{result.examples_per_s:5.2f} examples/s, {result.tokens_per_s:,.0f} tokens/s, {result.percent_of_peak:5.1f} % of peak, "
                f"peak memory {result.peak_memory_mb / 1024:.2f} GB (built {result.memory_before_training_mb / 1024:.2f} GB) ({result.precision})"
            )
        out.append(f"  training memory: ours {self.ours.peak_memory_mb / 1024:.2f} GB at its peak (goal under {MEMORY_GOAL_GB:g} GB on a CPU)")
        if self.speedup_vs_peer is not None:
            paired = (
                f", median of {len(self.step_pair_ratios)} interleaved pairs {statistics.median(self.step_pair_ratios):.2f}x" if self.step_pair_ratios else ""
            )
            out.append(f"  ours vs transformers+peft: {self.speedup_vs_peer:.2f}x faster per step{paired} (goal {STEP_GOAL:g}x)")
        return out

    def _epoch_lines(self) -> list[str]:
        if not self.epochs:
            return []
        out = ["one epoch of the SMS training split:"]
        for e in self.epochs:
            how = f"extrapolated from {e.measured_steps} timed steps ({e.method})" if e.extrapolated else e.method
            out.append(
                f"  {e.mode:<12} {e.epoch_s:7.2f} s for {e.steps_per_epoch} steps ({e.precision}), {e.tokens_per_s:,.0f} tokens/s "
                f"({e.real_tokens_per_s:,.0f} of them the messages' own), mean padded length {e.mean_padded_length:.1f} (real {e.mean_real_length:.1f}), {how}"
            )
            if e.estimates_per_epoch:
                out.append(
                    f"  {'':<12} + {e.estimates_per_epoch} loss estimates: {e.estimate_s:.2f} s each (+{e.estimate_overhead:.0%}); "
                    f"with live validation scoring {e.live_estimate_s:.2f} s each (+{e.live_overhead:.0%}; "
                    f"{e.live_validation_batches} validation batches instead of {e.estimate_validation_batches})"
                )
                out.append(f"  {'':<12} the preset's {e.preset_epochs} epochs with live scoring: about {e.preset_training_s:.1f} s")
        if self.epoch_speedup is not None:
            out.append(f"  recommended vs book: {self.epoch_speedup:.2f}x faster per epoch, {self.padding_ratio:.2f}x fewer padded tokens per row (target 3x)")
        return out

    def _estimate_lines(self) -> list[str]:
        if not self.estimate_checks:
            return []
        out = [f"the cost estimate (python -m engine estimate) against the measurements (goal within ±{ESTIMATE_GOAL:.0%}):"]
        for check in self.estimate_checks:
            verdict = "" if abs(check.error) <= ESTIMATE_GOAL else "  OUTSIDE THE GOAL"
            out.append(
                f"  {check.what:<28} predicted {check.predicted:8.2f} {check.unit}, measured {check.measured:8.2f} {check.unit} ({check.error:+.0%}){verdict}"
            )
        return out

    def _latency_lines(self) -> list[str]:
        if not self.latency:
            return []
        out = ["classification latency (LoRA merged, inference mode):"]
        for r in self.latency:
            agreement = f", agrees with fp32 on {r.agreement_with_fp32:.1%}" if r.agreement_with_fp32 is not None else ""
            out.append(
                f"  {r.implementation:<18} 1 message ({r.single_tokens} tokens): p50 {r.single_p50_ms:6.1f} ms, p95 {r.single_p95_ms:6.1f} ms; "
                f"{r.batch_messages} messages: p50 {r.batch_p50_s:5.2f} s, p95 {r.batch_p95_s:5.2f} s{agreement}"
            )
        for name, ratio in self.latency_ratios().items():
            out.append(f"  {name} vs transformers: {ratio:.2f}x faster")
        floor = self.classification_floor
        if floor is not None:
            int8 = f", {floor.int8_s:.2f} s at the int8 peak" if floor.int8_s is not None else ""
            out.append(
                f"  {floor.messages} messages: {floor.tokens:,} tokens, {floor.gflop:,.1f} GFLOP: "
                f"at least {floor.fp32_s:.2f} s at the fp32 peak{int8} (target {floor.target_s:g} s)"
            )
            if self.batch_over_floor is not None:
                out.append(f"  ours fp32 for {floor.messages} messages: {self.batch_over_floor:.2f}x the fp32 floor (goal within {FLOOR_GOAL:g}x)")
        return out
