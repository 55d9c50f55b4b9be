"""A frozen Linear product plus LoRA updates on column ranges of its output, with its own backward.

    y = f(x)·Wᵀ + b,  then  y[:, start_i : start_i + width_i] += scale_i · (f(x)·A_i)·B_i  for each update i
    f = identity, or GPT-2's tanh GELU (the MLP's output projection reads the GELU of its input)

One function serves a single adapted layer and q, k, v fused into one product (each keeping its
own pair). Written by hand because autograd's path is wasteful here:
- fused q/k/v as one block-diagonal B triples the update's products, most of them on zeros;
- autograd keeps both the GELU input and its output for backward (about 140 MB a step for
  gpt2-small on the book's 8 × 120 batch); this keeps only the input and recomputes the output;
- the input gradient of the update is added in place into the frozen product's, not summed after.
W and b never train here (under LoRA they are frozen); the caller takes autograd's path otherwise.

On x86 CPUs the frozen forward product runs through oneDNN, whose kernels beat the default BLAS
(MKL) at these shapes reading W as it is (docs/benchmark-cpu.txt has the figures). That op is
private to PyTorch, so it is a fast path only: one tiny call checks it once, any failure (or
LORA_LAB_ONEDNN=0) leaves every product on F.linear, which is also the path off x86. Backward keeps
BLAS: oneDNN is fast there only with Wᵀ laid out anew, a copy of every frozen weight that buys little.

A layer that wraps a Linear from outside (LoRA's) joins these products by two names: `base_linear`,
the plain nn.Linear it wraps, and `updates(start)`, the low-rank updates it adds to that layer's
output. The model asks through `frozen_linear` and `updates_of`, and so knows of no adapter.
"""

import functools
import math
import os
import platform
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

ONEDNN_SWITCH = "LORA_LAB_ONEDNN"  # set to 0 (or off, false, no) to keep every frozen product on F.linear


@dataclass(frozen=True)
class ProductPath:
    """Which path frozen fp32 products take on the CPU, and why."""

    onednn: bool
    reason: str

    def describe(self) -> str:
        return "oneDNN (x86 fast path)" if self.onednn else f"F.linear ({self.reason})"


def _onednn_product(rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(rows, weight, bias, "none", [], "")


@functools.cache
def product_path() -> ProductPath:
    """The frozen-product path of this process, decided once: oneDNN only where a tiny call through it
    gives F.linear's answer."""
    if os.environ.get(ONEDNN_SWITCH, "").strip().lower() in ("0", "off", "false", "no"):
        return ProductPath(False, f"oneDNN switched off by {ONEDNN_SWITCH}")
    if platform.machine().lower() not in ("x86_64", "amd64") or not torch.backends.mkldnn.is_available():
        return ProductPath(False, "oneDNN serves x86 CPUs only")
    generator = torch.Generator().manual_seed(0)
    rows, weight, bias = (torch.randn(shape, generator=generator) for shape in ((3, 8), (5, 8), (5,)))
    try:
        agrees = torch.allclose(_onednn_product(rows, weight, bias), F.linear(rows, weight, bias), rtol=1e-4, atol=1e-5)
    except Exception as error:  # a PyTorch without the op, or with another signature
        return ProductPath(False, f"oneDNN's product failed its check: {type(error).__name__}")
    return ProductPath(True, "") if agrees else ProductPath(False, "oneDNN's product gave other numbers in its check")


@dataclass(frozen=True)
class Update:
    """scale·(x·A)·B added to the output columns starting at `start` (width: B's columns)."""

    lora_a: torch.Tensor  # (in, rank)
    lora_b: torch.Tensor  # (rank, width)
    scale: float
    start: int = 0


def linear_of(layer: nn.Module) -> nn.Linear | None:
    """The plain nn.Linear computing `layer`'s product: the layer itself, or the `base_linear` a wrapping
    layer names; None for anything else (an int8 layer, say), which then runs as itself."""
    if type(layer) is nn.Linear:
        return layer
    base = getattr(layer, "base_linear", None)
    return base if type(base) is nn.Linear else None


def frozen_linear(layer: nn.Module) -> nn.Linear | None:
    """`linear_of(layer)` when neither its weight nor its bias trains (only then may it join these products), else None."""
    linear = linear_of(layer)
    if linear is None or linear.weight.requires_grad or (linear.bias is not None and linear.bias.requires_grad):
        return None
    return linear


def updates_of(layer: nn.Module, start: int = 0) -> list["Update"]:
    """The low-rank updates a wrapping layer adds on the fly (its `updates(start)`), placed from output column `start`; none for a plain layer."""
    updates = getattr(layer, "updates", None)
    return updates(start) if callable(updates) else []


def gelu(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


_TWO_ROOT_TWO_OVER_PI = 2 * math.sqrt(2 / math.pi)
_CHUNK_ELEMENTS = 1 << 18  # 1 MB of fp32: each chunk's five passes stay in cache


def _gelu_untracked(x: torch.Tensor) -> torch.Tensor:
    """gelu(x) without autograd, faster on CPU fp32 through 0.5·(1 + tanh z) = sigmoid(2z).

    PyTorch's CPU tanh is far slower than its sigmoid; the five in-place passes run a cache-sized
    chunk at a time, so each reads memory once (docs/benchmark-cpu.txt has the figures).
    """
    if x.device.type != "cpu" or x.dtype != torch.float32:
        return gelu(x)  # one fused kernel on GPUs; bf16 would round at every pass
    source = x.reshape(-1, x.size(-1))
    out = torch.empty_like(source, memory_format=torch.contiguous_format)
    rows = max(1, _CHUNK_ELEMENTS // x.size(-1))
    for part, result in zip(source.split(rows), out.split(rows), strict=True):
        torch.mul(part, part, out=result)
        result.mul_(_TWO_ROOT_TWO_OVER_PI * 0.044715).add_(_TWO_ROOT_TWO_OVER_PI).mul_(part).sigmoid_().mul_(part)
    return out.view(x.shape)


def frozen_product(rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """rows·Wᵀ + b for a weight that does not train: oneDNN for fp32 on x86 CPUs (see `product_path`), else F.linear."""
    on_cpu_fp32 = rows.device.type == "cpu" and rows.dtype == weight.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
    if on_cpu_fp32 and weight.is_contiguous() and product_path().onednn:  # a strided W would be laid out anew on every call
        return _onednn_product(rows, weight, bias)
    return F.linear(rows, weight, bias)


def adapted_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, updates: list[Update], gelu_first: bool = False) -> torch.Tensor:
    """f(x)·Wᵀ + b plus each update on its columns; x (..., in) → (..., out). W and b must be frozen."""
    if weight.requires_grad or (bias is not None and bias.requires_grad):
        raise ValueError("adapted_linear keeps no gradient for W or b: use autograd's path for a trainable base")
    rows = x.reshape(-1, x.size(-1))
    layout = tuple((u.scale, u.start) for u in updates)
    pairs = [t for u in updates for t in (u.lora_a, u.lora_b)]
    if torch.is_grad_enabled() and any(t.requires_grad for t in (rows, *pairs)):
        out = _AdaptedLinear.apply(rows, weight, bias, gelu_first, layout, *pairs)
    else:  # inference: the same arithmetic without autograd's bookkeeping
        out, _ = _forward(_gelu_untracked(rows) if gelu_first else rows, weight, bias, layout, pairs)
    return out.view(*x.shape[:-1], out.size(-1))


def _forward(
    inputs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, layout: tuple, pairs: tuple | list
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The output and, when there are updates, every pair's down-projection inputs·[A₁ A₂ …]."""
    out = frozen_product(inputs, weight, bias)
    lora_as, lora_bs = pairs[0::2], pairs[1::2]
    if not lora_as:
        return out, None
    # One product for every pair's down-projection: the A's are thin, the input is not.
    down = inputs @ (torch.cat(lora_as, dim=1) if len(lora_as) > 1 else lora_as[0])
    columns = 0
    for lora_b, (scale, start) in zip(lora_bs, layout, strict=True):
        rank, width = lora_b.shape
        # In-place ops escape autocast: match the output's dtype.
        out[:, start : start + width].addmm_(down[:, columns : columns + rank].to(out.dtype), lora_b.to(out.dtype), alpha=scale)
        columns += rank
    return out, down


class _AdaptedLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rows, weight, bias, gelu_first, layout, *pairs):
        out, down = _forward(_gelu_untracked(rows) if gelu_first else rows, weight, bias, layout, pairs)
        ctx.save_for_backward(rows, weight, down, *pairs)
        ctx.gelu_first, ctx.layout = gelu_first, layout
        return out

    @staticmethod
    def backward(ctx, grad_out):
        rows, weight, down, *pairs = ctx.saved_tensors
        needs_rows, needs_pairs = ctx.needs_input_grad[0], ctx.needs_input_grad[5:]
        # Under autocast the forward products ran in bf16 while W, A and B stay fp32: backward,
        # which autocast does not reach, computes in the gradient's dtype as the forward did.
        dtype = grad_out.dtype
        weight = weight.to(dtype)
        lora_as, lora_bs = [a.to(dtype) for a in pairs[0::2]], [b.to(dtype) for b in pairs[1::2]]
        grad_inputs = grad_out @ weight if needs_rows else None
        grad_pairs: list[torch.Tensor | None] = [None] * len(pairs)
        if lora_as:
            grad_down = torch.cat(
                [grad_out[:, start : start + b.size(1)] @ b.t() * scale for b, (scale, start) in zip(lora_bs, ctx.layout, strict=True)], dim=1
            )  # (rows, sum of ranks)
            if grad_inputs is not None:
                grad_inputs.addmm_(grad_down, torch.cat(lora_as, dim=1).t() if len(lora_as) > 1 else lora_as[0].t())
            inputs = (_gelu_untracked(rows) if ctx.gelu_first else rows).to(dtype)  # the GELU recomputation
            down = down.to(dtype)
            columns = 0
            for i, (b, (scale, start)) in enumerate(zip(lora_bs, ctx.layout, strict=True)):
                rank = b.size(0)
                if needs_pairs[2 * i]:
                    # as (δᵀ·x)ᵀ: BLAS is slower with x transposed when x is tall and wide (docs/benchmark-cpu.txt)
                    grad_pairs[2 * i] = (grad_down[:, columns : columns + rank].t() @ inputs).t()
                if needs_pairs[2 * i + 1]:
                    grad_pairs[2 * i + 1] = down[:, columns : columns + rank].t() @ grad_out[:, start : start + b.size(1)] * scale
                columns += rank
        if grad_inputs is not None and ctx.gelu_first:
            grad_inputs = torch.ops.aten.gelu_backward(grad_inputs, rows, approximate="tanh")
        return grad_inputs, None, None, None, None, *grad_pairs
