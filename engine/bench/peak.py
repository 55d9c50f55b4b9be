"""How much work the benchmark's passes are (FLOP counts from the model's shape) and how fast this
device can do it at best (matrix-multiply peaks at the model's shapes): the yardsticks every
timing is set against."""

import math
import statistics
import time
import warnings
from collections.abc import Callable, Sequence

import torch
from torch import nn

from engine.adapted_linear import frozen_product
from engine.bench.report import MatmulPeak
from engine.config import GPTConfig

BATCH = 8
SEQ = 120  # the book's padded length: the longest training message


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so a timer around it measures the work itself."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def classify_flops(cfg: GPTConfig, lengths: Sequence[int], n_classes: int = 2) -> dict[str, float]:
    """FLOPs of one forward pass classifying messages of these token lengths, as the engine runs it
    (LoRA merged, each message's logits read at its last real token).

    With N = Σ lengths, M = len(lengths), d = n_embd, L = n_layer, each Linear costs 2 FLOPs per
    weight per token it sees:
      first L - 1 blocks  2 · 12d² · N each (q, k, v, c_proj: 4d²; MLP: 8d²);
      last block          2 · 2d² · N for k and v at every position, and 2 · 10d² · M for q, c_proj
                          and the MLP at the read position only;
      head                2 · d · n_classes · M;
      attention           causal work only: a query at position i meets i keys, QKᵀ and A·V 2·i·d
                          each, so 2·d·t(t+1) a message of t tokens in each early block and 4·d·t
                          for the last block's single query.
    Padding, biases, layer norms, GELU and softmax are left out (O(N·d) or less), and embeddings are
    lookups, so the count is a floor: gpt2-small at 32 tokens a message is about 5 GFLOP a message.
    """
    d, L, M, N = cfg.n_embd, cfg.n_layer, len(lengths), sum(lengths)
    linear = (L - 1) * 2 * 12 * d * d * N + 2 * 2 * d * d * N + 2 * 10 * d * d * M + 2 * d * n_classes * M
    attention = (L - 1) * sum(2 * d * t * (t + 1) for t in lengths) + sum(4 * d * t for t in lengths)
    return {"linear": float(linear), "attention": float(attention), "total": float(linear + attention)}


def _shapes(cfg: GPTConfig) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
    """(M, K, N) products: the step's large ones (8·120 rows by this model's widths), and one small one."""
    d, rows = cfg.n_embd, BATCH * SEQ
    large = [(rows, d, 3 * d), (rows, d, 4 * d), (rows, 4 * d, d)]
    small = [(20, d, 4 * d)]  # one 20-token message through c_fc: what classification runs into
    return large, small


def _gflops(run: Callable[[], object], flops: float, device: torch.device, repeats: int) -> float:
    """GFLOP/s of `run` (median of repeats); small products repeat inside each timing to about 20 ms."""
    once = []
    for _ in range(3):
        sync(device)
        start = time.perf_counter()
        run()
        sync(device)
        once.append(time.perf_counter() - start)
    inner = min(200, max(1, math.ceil(0.02 / max(statistics.median(once), 1e-7))))
    times: list[float] = []
    deadline = time.perf_counter() + 2.0  # a busy machine must not stretch this section
    while len(times) < repeats and (len(times) < 3 or time.perf_counter() < deadline):
        sync(device)
        start = time.perf_counter()
        for _ in range(inner):
            run()
        sync(device)
        times.append((time.perf_counter() - start) / inner)
    return flops / statistics.median(times) / 1e9


def _peak(dtype: str, results: dict[tuple[int, int, int], float], large: list[tuple[int, int, int]]) -> MatmulPeak:
    best = max(results[shape] for shape in large)
    return MatmulPeak(dtype, round(best, 1), {f"{m}x{k}@{k}x{n}": round(v, 1) for (m, k, n), v in results.items()})


def matmul_peak(cfg: GPTConfig, device: torch.device, dtype: torch.dtype = torch.float32, repeats: int = 10) -> MatmulPeak:
    """GFLOP/s of plain matrix products in `dtype` at this model's shapes (see _shapes): for each
    shape the faster of the default BLAS and the engine's frozen product (oneDNN on x86 CPUs), so
    the peak is the best this PyTorch can do here, whichever library reaches it."""
    large, small = _shapes(cfg)
    results = {}
    for m, k, n in large + small:
        a = torch.randn(m, k, device=device, dtype=dtype)
        b = torch.randn(k, n, device=device, dtype=dtype)
        weight = b.t().contiguous()  # nn.Linear's (out, in) layout
        out = torch.empty(m, n, device=device, dtype=dtype)
        blas = _gflops(lambda a=a, b=b, out=out: torch.matmul(a, b, out=out), 2 * m * k * n, device, repeats)
        engine = _gflops(lambda a=a, weight=weight: frozen_product(a, weight, None), 2 * m * k * n, device, repeats)
        results[(m, k, n)] = max(blas, engine)
    return _peak(str(dtype).removeprefix("torch."), results, large)


@torch.inference_mode()
def int8_matmul_peak(cfg: GPTConfig, repeats: int = 10) -> MatmulPeak:
    """GFLOP/s (int8 operations) of dynamically quantised nn.Linear layers on the CPU at the same
    shapes: what the int8 classification path's products can reach, quantising their input included."""
    large, small = _shapes(cfg)
    cpu = torch.device("cpu")
    results = {}
    for m, k, n in large + small:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PyTorch marks its quantised tensors as deprecated, yet they work
            # quantize_dynamic swaps children only, so the Linear goes in a container
            layer = torch.ao.quantization.quantize_dynamic(nn.Sequential(nn.Linear(k, n, bias=False)), {nn.Linear}, dtype=torch.qint8)
        x = torch.randn(m, k)
        results[(m, k, n)] = _gflops(lambda layer=layer, x=x: layer(x), 2 * m * k * n, cpu, repeats)
    return _peak("int8 (dynamic)", results, large)
