"""How fast this machine trains a model shape: a few timed steps, kept in a small JSON file.

A calibration builds random weights of the real width (no download) but only CALIBRATION_LAYERS of
its blocks, adapts every Linear at rank CALIBRATION_RANK and times forward + backward + AdamW steps
at two batch widths, and forward passes alone (what the evaluations cost) at the same two: a fixed
cost per pass plus a cost per token fits both. The blocks are alike and run one after the other, so
the whole model's times are the measured ones times its blocks over those measured (the embeddings
and the head are a few per cent of a block); `engine/estimate.py` scales them to any run's batches
and rank. Two blocks keep the first estimate to seconds on a laptop CPU, where all of gpt2-small's
twelve would take a minute.

Measured once per device, precision, thread count and model shape: the file (CALIBRATION_NAME in
the data cache, written atomically) answers every later estimate at once. The tensor work runs where runs run: in
this process for a worker or the CLI, or in a short subprocess (`python -m engine.calibration`) for
the web app, which does no tensor math itself.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from engine import strict_json
from engine.atomic import atomic_path
from engine.config import CALIBRATION_NAME, DATA_CACHE, GPTConfig, LoRAConfig, TrainConfig
from engine.device import PACKAGE_ROOT

CALIBRATION_FILE = Path(DATA_CACHE) / CALIBRATION_NAME
CALIBRATION_LAYERS = 2  # blocks measured (see the module docstring)
CALIBRATION_RANK = 16  # LoRA on every Linear at the presets' rank: what the timings are measured at
BATCH = 8
WIDTHS = (24, 96)  # tokens a message: the SMS data's typical and near-longest padded batches
TIMED_ROUNDS = 3  # timed passes per width, after one warm-up each
SUBPROCESS_TIMEOUT_S = 600.0  # a large model on a busy CPU: minutes at most
_measuring = threading.Lock()  # one calibration at a time in a process: two at once would time each other


@dataclass(frozen=True)
class Calibration:
    """A pass's seconds as `fixed + per_token x tokens`, for a training step and for a forward pass."""

    key: str
    step_fixed_s: float
    step_per_token_s: float
    forward_fixed_s: float
    forward_per_token_s: float
    rank: int = CALIBRATION_RANK
    measured_at: float = 0.0  # Unix time
    took_s: float = 0.0  # what the calibration itself took

    def step_s(self, tokens: float) -> float:
        return self.step_fixed_s + self.step_per_token_s * tokens

    def forward_s(self, tokens: float) -> float:
        return self.forward_fixed_s + self.forward_per_token_s * tokens


def calibration_key(shape: GPTConfig, device_name: str, precision: str, threads: int | None) -> str:
    """What a calibration holds for: the device (by its model name), precision, threads and the model's shape (not its name)."""
    cores = f", {threads} threads" if threads else ""
    return f"{device_name}{cores}, {precision}: d{shape.n_embd} L{shape.n_layer} h{shape.n_head} V{shape.vocab_size} C{shape.context_length}"


def cached(key: str, path: Path = CALIBRATION_FILE) -> Calibration | None:
    """The calibration kept under `key`, or None (none yet, or an unreadable file: measured again)."""
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))[key]
        return Calibration(**entry)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def keep(calibration: Calibration, path: Path = CALIBRATION_FILE) -> None:
    """Add `calibration` to the file, atomically (a reader sees the old file or the new one)."""
    try:
        kept = json.loads(path.read_text(encoding="utf-8"))
        kept = kept if isinstance(kept, dict) else {}
    except (OSError, ValueError):
        kept = {}
    kept[calibration.key] = asdict(calibration)
    with atomic_path(path) as temporary:
        temporary.write_text(strict_json.dumps(kept, indent=1), encoding="utf-8")


def measure(shape: GPTConfig, device: str, precision: str, key: str) -> Calibration:
    """Time training steps and forward passes of `shape` on `device` (this process); see the module docstring."""
    import torch

    from engine.classifier import build_classifier
    from engine.device import dtype_of, pick_device, prepare_device
    from engine.loaders import collate
    from engine.model import GPT
    from engine.train import make_optimizer

    began = time.perf_counter()
    torch_device = pick_device(device)
    prepare_device(torch_device)
    measured = replace(shape, n_layer=min(shape.n_layer, CALIBRATION_LAYERS))
    with torch.device(torch_device):  # random weights of the real width, drawn where they are used
        base = GPT(measured)
    base.store_products_in(dtype_of(precision))  # type: ignore[arg-type]
    model = build_classifier(base, LoRAConfig(rank=CALIBRATION_RANK))
    optimizer, _ = make_optimizer([p for p in model.parameters() if p.requires_grad], TrainConfig())
    generator = torch.Generator().manual_seed(0)
    batches = []
    for width in sorted({min(w, shape.context_length) for w in WIDTHS}):
        ids = torch.randint(0, min(shape.vocab_size, 50000), (BATCH, width), generator=generator).tolist()
        batches.append((BATCH * width, collate([(row, i % 2) for i, row in enumerate(ids)]).to(torch_device)))
    for _, batch in batches:  # warm-up: the first pass at a shape picks its kernels
        _time_batch(model, optimizer, batch)
    rounds = [[_time_batch(model, optimizer, batch) for _, batch in batches] for _ in range(TIMED_ROUNDS)]  # interleaved: both see the same load
    step_points = [(tokens, statistics.median(r[i][0] for r in rounds)) for i, (tokens, _) in enumerate(batches)]
    forward_points = [(tokens, statistics.median(r[i][1] for r in rounds)) for i, (tokens, _) in enumerate(batches)]
    blocks = shape.n_layer / measured.n_layer
    step_fixed, step_per_token = (blocks * part for part in _line(step_points))
    forward_fixed, forward_per_token = (blocks * part for part in _line(forward_points))
    return Calibration(key, step_fixed, step_per_token, forward_fixed, forward_per_token, measured_at=time.time(), took_s=time.perf_counter() - began)


def _time_batch(model: Any, optimizer: Any, batch: Any) -> tuple[float, float]:
    """Seconds of one training step and of one forward pass over `batch`."""
    import torch

    from engine.evaluate import batch_loss

    model.train()
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    loss = batch_loss(model, batch, "last_token")
    loss.backward()
    optimizer.step()
    loss.item()  # waits for the device
    step_s = time.perf_counter() - start
    model.eval()
    start = time.perf_counter()
    with torch.no_grad():
        batch_loss(model, batch, "last_token").item()
    return step_s, time.perf_counter() - start


def _line(points: list[tuple[int, float]]) -> tuple[float, float]:
    """(fixed, per token) through two (tokens, seconds) points; a negative part (noise) goes to the other."""
    (x0, y0), (x1, y1) = points[0], points[-1]
    if x1 == x0 or y1 <= y0:  # one width (a short context), or noise made the wider batch look cheaper: a fixed cost
        return statistics.fmean(y for _, y in points), 0.0
    per_token = (y1 - y0) / (x1 - x0)
    fixed = y0 - per_token * x0
    if fixed < 0:  # noise made the short batch look cheap: all of it per token
        return 0.0, y1 / x1
    return fixed, per_token


def calibrate(shape: GPTConfig, device: str, precision: str, key: str, path: Path = CALIBRATION_FILE) -> Calibration:
    """The cached calibration under `key`, else measured here now and kept."""
    with _measuring:
        found = cached(key, path)
        if found is None:
            found = measure(shape, device, precision, key)
            keep(found, path)
        return found


def calibrate_in_subprocess(shape: GPTConfig, device: str, precision: str, key: str, threads: int | None, path: Path = CALIBRATION_FILE) -> Calibration:
    """`calibrate` in a short subprocess with `threads` threads (as a worker has): this process does no tensor math.

    Raises:
        RuntimeError: the subprocess failed (its last error line is in the message).
    """
    with _measuring:
        found = cached(key, path)
        if found is not None:
            return found
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [PACKAGE_ROOT, os.environ.get("PYTHONPATH")]))}
        if threads:
            env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        command = [sys.executable, "-m", "engine.calibration", "--shape", strict_json.dumps(asdict(shape)), "--device", device]
        command += ["--precision", precision, "--key", key, "--file", str(path)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S, env=env)
        found = cached(key, path)
        if done.returncode != 0 or found is None:
            tail = (done.stderr.strip().splitlines() or ["no message"])[-1]
            raise RuntimeError(f"measuring this machine failed (exit {done.returncode}): {tail}")
        return found


def main(argv: list[str] | None = None) -> int:
    """`python -m engine.calibration`: measure one shape and keep it (what `calibrate_in_subprocess` runs)."""
    parser = argparse.ArgumentParser(prog="python -m engine.calibration")
    parser.add_argument("--shape", required=True)
    parser.add_argument("--device", required=True)
    parser.add_argument("--precision", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--file", default=str(CALIBRATION_FILE))
    args = parser.parse_args(argv)
    calibrate(GPTConfig(**json.loads(args.shape)), args.device, args.precision, args.key, Path(args.file))
    return 0


if __name__ == "__main__":
    sys.exit(main())
