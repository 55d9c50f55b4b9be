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
Products compute in the dtype W is stored in: float32, or bf16 when the run's precision stores the
frozen base so (engine/device.py), while LoRA's A and B and their gradients stay float32.

On x86 CPUs the frozen forward product runs through oneDNN, whose kernels beat the default BLAS
(MKL) at these shapes reading W as it is (docs/benchmark-cpu.txt has the figures). That op is
private to PyTorch, so it is a fast path only: one tiny call checks it once, any failure (or
LORA_LAB_ONEDNN=0) leaves every product on F.linear, which is also the path off x86. Backward keeps
BLAS: oneDNN is fast there only with Wᵀ laid out anew, a copy of every frozen weight that buys little.
Where nothing needs a gradient and no update comes between, the MLP's GELU rides in the epilogue of
the product before it (`gelu_of_frozen`); elsewhere it is PyTorch's one-pass kernel.

A layer that wraps a Linear from outside (LoRA's) joins these products by two names: `base_linear`,
the plain nn.Linear it wraps, and `updates(start)`, the low-rank updates it adds to that layer's
output. The model asks through `frozen_linear` and `updates_of`, and so knows of no adapter.
"""

import functools
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
    gelu_epilogue: bool = False  # oneDNN also applies GPT-2's tanh GELU inside the product (no-grad paths)

    def describe(self) -> str:
        if not self.onednn:
            return f"F.linear ({self.reason})"
        return "oneDNN (x86 fast path" + (", GELU in the product when nothing trains)" if self.gelu_epilogue else ")")


def _onednn_product(rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, post_op: str = "none", algorithm: str = "") -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(rows, weight, bias, post_op, [], algorithm)


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
    expected = F.linear(rows, weight, bias)
    try:
        agrees = torch.allclose(_onednn_product(rows, weight, bias), expected, rtol=1e-4, atol=1e-5)
    except Exception as error:  # a PyTorch without the op, or with another signature
        return ProductPath(False, f"oneDNN's product failed its check: {type(error).__name__}")
    if not agrees:
        return ProductPath(False, "oneDNN's product gave other numbers in its check")
    try:
        with_gelu = torch.allclose(_onednn_product(rows, weight, bias, "gelu", "tanh"), gelu(expected), rtol=1e-4, atol=1e-5)
    except Exception:  # the product works without its epilogue: keep it, and run the GELU on its own
        with_gelu = False
    return ProductPath(True, "", gelu_epilogue=with_gelu)


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
    """GPT-2's tanh GELU, in one pass over x (PyTorch's fused kernel, on every device)."""
    return F.gelu(x, approximate="tanh")


def frozen_product(rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, then_gelu: bool = False) -> torch.Tensor:
    """rows·Wᵀ + b (its GELU with `then_gelu`) for a weight that does not train, in W's dtype: oneDNN for
    fp32 on x86 CPUs (see `product_path`), the GELU in the same call as its epilogue; else F.linear."""
    rows = rows.to(weight.dtype)
    path = product_path()
    if rows.device.type == "cpu" and weight.dtype == torch.float32 and weight.is_contiguous() and path.onednn:  # a strided W would be laid out anew
        if not then_gelu:
            return _onednn_product(rows, weight, bias)
        if path.gelu_epilogue:
            return _onednn_product(rows, weight, bias, "gelu", "tanh")
    out = F.linear(rows, weight, bias)
    return gelu(out) if then_gelu else out


def gelu_of_frozen(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """gelu(x·Wᵀ + b) for a frozen layer without updates, where nothing needs a gradient: the GELU
    rides in the product's epilogue (oneDNN) instead of a pass of its own; x (..., in) → (..., out)."""
    out = frozen_product(x.reshape(-1, x.size(-1)), weight, bias, then_gelu=True)
    return out.view(*x.shape[:-1], out.size(-1))


def adapted_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, updates: list[Update], gelu_first: bool = False) -> torch.Tensor:
    """f(x)·Wᵀ + b plus each update on its columns; x (..., in) → (..., out), in W's dtype. W and b must be frozen.

    The product computes in the dtype W is stored in (bf16 under that precision, see engine/device.py):
    x is cast to it (autograd casts its gradient back), and each update's A and B, which train in
    float32, are cast for the product; their gradients come back in float32.
    """
    if weight.requires_grad or (bias is not None and bias.requires_grad):
        raise ValueError("adapted_linear keeps no gradient for W or b: use autograd's path for a trainable base")
    rows = x.reshape(-1, x.size(-1)).to(weight.dtype)
    layout = tuple((u.scale, u.start) for u in updates)
    pairs = [t for u in updates for t in (u.lora_a, u.lora_b)]
    if torch.is_grad_enabled() and any(t.requires_grad for t in (rows, *pairs)):
        out = _AdaptedLinear.apply(rows, weight, bias, gelu_first, layout, *pairs)
    else:  # inference: the same arithmetic without autograd's bookkeeping
        out, _ = _forward(gelu(rows) if gelu_first else rows, weight, bias, layout, [t.to(weight.dtype) for t in pairs])
    return out.view(*x.shape[:-1], out.size(-1))


def _forward(
    inputs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, layout: tuple, pairs: tuple | list
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The output and, when there are updates, every pair's down-projection inputs·[A₁ A₂ …]; every
    tensor already in the product's dtype."""
    out = frozen_product(inputs, weight, bias)
    lora_as, lora_bs = pairs[0::2], pairs[1::2]
    if not lora_as:
        return out, None
    # One product for every pair's down-projection: the A's are thin, the input is not.
    down = inputs @ (torch.cat(lora_as, dim=1) if len(lora_as) > 1 else lora_as[0])
    columns = 0
    for lora_b, (scale, start) in zip(lora_bs, layout, strict=True):
        rank, width = lora_b.shape
        out[:, start : start + width].addmm_(down[:, columns : columns + rank], lora_b, alpha=scale)
        columns += rank
    return out, down


class _AdaptedLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rows, weight, bias, gelu_first, layout, *pairs):
        lowered = [t.to(weight.dtype) for t in pairs]  # A and B train in float32; the product runs in W's dtype
        out, down = _forward(gelu(rows) if gelu_first else rows, weight, bias, layout, lowered)
        ctx.save_for_backward(rows, weight, down, *lowered)
        ctx.gelu_first, ctx.layout, ctx.pair_dtypes = gelu_first, layout, [t.dtype for t in pairs]
        return out

    @staticmethod
    def backward(ctx, grad_out):
        rows, weight, down, *pairs = ctx.saved_tensors
        needs_rows, needs_pairs = ctx.needs_input_grad[0], ctx.needs_input_grad[5:]
        lora_as, lora_bs = pairs[0::2], pairs[1::2]
        grad_inputs = grad_out @ weight if needs_rows else None
        grad_pairs: list[torch.Tensor | None] = [None] * len(pairs)
        if lora_as:
            grad_down = torch.cat(
                [grad_out[:, start : start + b.size(1)] @ b.t() * scale for b, (scale, start) in zip(lora_bs, ctx.layout, strict=True)], dim=1
            )  # (rows, sum of ranks)
            if grad_inputs is not None:
                grad_inputs.addmm_(grad_down, torch.cat(lora_as, dim=1).t() if len(lora_as) > 1 else lora_as[0].t())
            inputs = gelu(rows) if ctx.gelu_first else rows  # the GELU recomputation
            columns = 0
            for i, (b, (scale, start)) in enumerate(zip(lora_bs, ctx.layout, strict=True)):
                rank = b.size(0)
                if needs_pairs[2 * i]:
                    # as (δᵀ·x)ᵀ: BLAS is slower with x transposed when x is tall and wide (docs/benchmark-cpu.txt)
                    grad_pairs[2 * i] = (grad_down[:, columns : columns + rank].t() @ inputs).t().to(ctx.pair_dtypes[2 * i])
                if needs_pairs[2 * i + 1]:
                    grad_b = down[:, columns : columns + rank].t() @ grad_out[:, start : start + b.size(1)] * scale
                    grad_pairs[2 * i + 1] = grad_b.to(ctx.pair_dtypes[2 * i + 1])
                columns += rank
        if grad_inputs is not None and ctx.gelu_first:
            grad_inputs = torch.ops.aten.gelu_backward(grad_inputs, rows, approximate="tanh")
        return grad_inputs, None, None, None, None, *grad_pairs
