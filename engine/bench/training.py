"""The fixed training workload: batch 8 × 120 random tokens through ours and the peer, a step at a
time, each side in a fresh subprocess (so its peak memory is its own) or in this process, steps
interleaved so both see the same machine load."""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from engine import strict_json
from engine.bench.peak import BATCH, SEQ, sync
from engine.bench.peer import peer_model
from engine.bench.report import Footprint, StepResult
from engine.config import MAX_EVAL_FREQ, GPTConfig, preset
from engine.tokenizer import END_OF_TEXT_ID

WARMUP_STEPS = 2  # train() evaluates after its first step, so step 2's interval holds that evaluation
REPO_ROOT = Path(__file__).resolve().parents[2]
PROTOCOL = "@@bench "  # prefix of the lines a measuring subprocess answers with


def fixed_batches(vocab_size: int, steps: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """`steps` batches of 8 × 120 random non-pad tokens and labels: (steps, 8, 120), (steps, 8)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, min(vocab_size, END_OF_TEXT_ID), (steps, BATCH, SEQ), generator=generator)
    labels = torch.randint(0, 2, (steps, BATCH), generator=generator)
    return ids, labels


def _rss_mb() -> float:
    """This process's resident-set high-water mark so far, MB."""
    try:
        import resource  # Unix only
    except ImportError:
        return _peak_working_set_mb()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def _peak_working_set_mb() -> float:
    """Windows: this process's peak working set (its resident high-water mark), MB."""
    import ctypes
    from ctypes import wintypes

    class MemoryCounters(ctypes.Structure):  # PROCESS_MEMORY_COUNTERS
        _fields_ = [("cb", wintypes.DWORD), ("PageFaultCount", wintypes.DWORD)] + [
            (name, ctypes.c_size_t)
            for name in (
                "PeakWorkingSetSize",
                "WorkingSetSize",
                "QuotaPeakPagedPoolUsage",
                "QuotaPagedPoolUsage",
                "QuotaPeakNonPagedPoolUsage",
                "QuotaNonPagedPoolUsage",
                "PagefileUsage",
                "PeakPagefileUsage",
            )
        ]

    kernel32 = ctypes.WinDLL("kernel32")
    kernel32.GetCurrentProcess.restype = wintypes.HANDLE
    kernel32.K32GetProcessMemoryInfo.argtypes = [wintypes.HANDLE, ctypes.POINTER(MemoryCounters), wintypes.DWORD]
    counters = MemoryCounters(cb=ctypes.sizeof(MemoryCounters))
    if not kernel32.K32GetProcessMemoryInfo(kernel32.GetCurrentProcess(), ctypes.byref(counters), counters.cb):
        raise ctypes.WinError()
    return counters.PeakWorkingSetSize / 2**20


def _memory_now_mb(device: torch.device) -> float:
    """Memory held now: allocated on CUDA; on CPU the RSS high-water mark so far (imports and model)."""
    return torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else _rss_mb()


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _memory_mb(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "torch.cuda.max_memory_allocated"
    how = "ru_maxrss" if sys.platform != "win32" else "peak working set"
    return _rss_mb(), f"RSS high-water mark ({how}), imports and model build included"


class _OursStepper:
    """The fixed workload through the engine's own `train` loop (book preset, LoRA on every Linear), a step at a time,
    its frozen base stored in `precision`'s dtype."""

    def __init__(self, cfg: GPTConfig, device: torch.device, total: int, precision: str) -> None:
        from torch.utils.data import DataLoader

        from engine.classifier import build_classifier
        from engine.device import dtype_of
        from engine.loaders import Loaders, collate
        from engine.lora import count_parameters
        from engine.model import GPT
        from engine.train import train

        book = preset("book")
        ids, labels = fixed_batches(cfg.vocab_size, total)
        rows = [(row.tolist(), int(label)) for batch, batch_labels in zip(ids, labels, strict=True) for row, label in zip(batch, batch_labels, strict=True)]
        loader = DataLoader(rows, batch_size=BATCH, shuffle=False, collate_fn=lambda items: collate(items, SEQ), pin_memory=device.type == "cuda")
        # eval_iter 1 and a far eval_freq: the only evaluation is train()'s after step 1, inside the warm-up.
        train_cfg = replace(book.train, epochs=1, max_steps=total, eval_iter=1, eval_freq=MAX_EVAL_FREQ, live_metrics=False, precision=precision)
        self.device = device
        start = time.perf_counter()
        with torch.device(device):  # random weights, drawn where they are used
            base = GPT(cfg)
        base.store_products_in(dtype_of(precision))
        model = build_classifier(base, book.lora)
        sync(device)
        self.info = dict(build_s=time.perf_counter() - start, before_mb=_memory_now_mb(device), trainable=count_parameters(model).trainable)
        _reset_peak(device)
        # Each step's loss read as it ends: a per-step timer needs the device done with that step.
        self.events = train(model, Loaders(loader, loader, loader, SEQ), train_cfg, device, read_losses_every_s=0.0)

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
    """The same batches through transformers' GPT2ForSequenceClassification + peft LoRA, the same optimiser;
    in bf16 the usual `transformers` way, under autocast with float32 weights."""

    def __init__(self, cfg: GPTConfig, device: torch.device, total: int, precision: str) -> None:
        book = preset("book")
        self.ids, self.labels = fixed_batches(cfg.vocab_size, total)
        self.device, self.bf16 = device, precision == "bf16"
        start = time.perf_counter()
        with torch.device(device):  # random weights, drawn where they are used, as ours are
            self.model = peer_model(cfg, book.lora)
        sync(device)
        parameters = [p for p in self.model.parameters() if p.requires_grad]
        self.info = dict(build_s=time.perf_counter() - start, before_mb=_memory_now_mb(device), trainable=sum(p.numel() for p in parameters))
        _reset_peak(device)
        self.optimizer = torch.optim.AdamW(parameters, lr=book.train.lr, weight_decay=book.train.weight_decay, fused=device.type == "cuda")
        self.model.train()
        self.index = 0

    def step(self) -> tuple[float, float]:
        import torch.nn.functional as F

        start, cpu = time.perf_counter(), time.process_time()
        ids, labels = self.ids[self.index].to(self.device), self.labels[self.index].to(self.device)
        self.index += 1
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
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


def _child_main() -> None:
    """A measuring subprocess: JSON arguments on the first stdin line, then `step` / `finish` commands."""
    args = json.loads(sys.stdin.readline())
    warnings.simplefilter("ignore")
    device = torch.device(args["device"])
    from engine.device import prepare_device

    prepare_device(device)
    stepper = STEPPERS[args["kind"]](GPTConfig(**args["cfg"]), device, args["total"], args["precision"])
    answer = lambda payload: print(PROTOCOL + strict_json.dumps(payload), flush=True)
    answer(stepper.info)
    for command in sys.stdin:
        if command.strip() == "step":
            answer(stepper.step())
        else:
            answer(stepper.finish())
            return


class _Subprocess:
    """A stepper living in a fresh Python process, so its peak memory is its own."""

    def __init__(self, kind: str, cfg: GPTConfig, device: torch.device, total: int, precision: str) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        self.kind = kind
        self.stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (lives as long as the child; closed in kill)
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from engine.bench.training import _child_main; _child_main()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            env=env,
        )
        self.info = self._ask(strict_json.dumps({"kind": kind, "cfg": asdict(cfg), "device": str(device), "total": total, "precision": precision}))

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
    cfg: GPTConfig, device: torch.device, steps: int, kinds: Sequence[str], isolate: bool, say: Callable[[str], None], precision: str = "fp32"
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
            workers[kind] = _Subprocess(kind, cfg, device, total, precision) if isolate else STEPPERS[kind](cfg, device, total, precision)
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


def step_result(name: str, raw: dict[str, Any], flops: float, peak_gflops: float, precision: str) -> StepResult:
    """One implementation's fixed-workload timings as a StepResult, against the nominal step FLOPs and the peak."""
    step = statistics.median(raw["times"])
    return StepResult(
        implementation=name,
        precision=precision,
        step_s=round(step, 6),
        step_min_s=round(min(raw["times"]), 6),
        step_cpu_s=round(statistics.median(raw["cpu_times"]), 6),
        step_times_s=tuple(round(t, 6) for t in raw["times"]),
        examples_per_s=round(BATCH / step, 3),
        tokens_per_s=round(BATCH * SEQ / step, 1),
        gflop=round(flops / 1e9, 1),
        percent_of_peak=round(100 * flops / step / 1e9 / peak_gflops, 1),
        peak_memory_mb=round(raw["peak_mb"], 1),
        memory_before_training_mb=round(raw["before_mb"], 1),
        memory_method=raw["method"],
        trainable_parameters=raw["trainable"],
        build_s=round(raw["build_s"], 2),
    )


def footprint(cfg: GPTConfig, precision: str) -> Footprint:
    """The book's LoRA classifier's weights in `precision`, counted on PyTorch's meta device (shapes, no numbers)."""
    from engine.classifier import build_classifier
    from engine.device import dtype_of
    from engine.model import GPT

    with torch.device("meta"):
        base = GPT(cfg)
    base.store_products_in(dtype_of(precision))  # type: ignore[arg-type]
    model = build_classifier(base, preset("book").lora)
    size = lambda trains: sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad == trains)
    return Footprint(precision, size(False), size(True), 2 * size(True))
