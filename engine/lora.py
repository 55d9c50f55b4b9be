"""Low-rank adaptation (Hu et al., 2021) of nn.Linear layers: wrap, freeze, count, merge.

      x ──► base_layer (frozen W, b) ──────────────┐
      │                                            + ──► y = xWᵀ + b + scale · (x A B)
      └──► lora_A (in × r) ──► lora_B (r × out) ───┘

A starts Kaiming-uniform and B at zero, so a fresh adapter leaves the model unchanged. The
layout (A: in × r, B: r × out) is the book's, so its initialisation (fan-in = r) is reproduced.
A is drawn from a generator the caller owns, never PyTorch's global one, on the CPU as the book
draws it (then moved), so a seeded run gets the same A on any device.
"""

import math
from dataclasses import dataclass

import torch
from torch import nn

from engine.adapted_linear import Update, adapted_linear, frozen_linear
from engine.config import LoRAConfig
from engine.errors import AdapterError, ConfigError


class LoRALinear(nn.Module):
    def __init__(self, base_layer: nn.Linear, rank: int, scale: float, generator: torch.Generator | None = None) -> None:
        """Wrap `base_layer`; A is drawn from `generator` (default: a new one at PyTorch's default seed)."""
        super().__init__()
        self.base_layer = base_layer
        self.rank = rank
        self.scale = scale
        self.merged = False
        self.enabled = True  # off: behave as the base layer (the "before" model)
        weight = base_layer.weight
        dtype = torch.promote_types(weight.dtype, torch.float32)  # A and B train in float32 even over a bf16 base
        a = torch.empty(base_layer.in_features, rank, device="meta" if weight.device.type == "meta" else "cpu")
        if a.device.type != "meta":
            nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator or torch.Generator())
        self.lora_A = nn.Parameter(a.to(device=weight.device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(rank, base_layer.out_features, device=weight.device, dtype=dtype))

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    @property
    def update_sign(self) -> int:
        """How the forward pass applies the update on the fly: +1 adds it (enabled, not merged),
        -1 takes it back out of merged weights (disabled while merged: the base model's answer at
        the cost of a low-rank product, without rewriting any weight), 0 leaves it alone."""
        return int(self.enabled and not self.merged) - int(self.merged and not self.enabled)

    def update(self, start: int = 0) -> Update | None:
        """The update the forward pass applies on the fly (see `update_sign`), placed at output column `start`."""
        sign = self.update_sign
        return Update(self.lora_A, self.lora_B, sign * self.scale, start) if sign else None

    @property
    def base_linear(self) -> nn.Module:
        """The wrapped layer, by the name the model's fused products ask for (engine.adapted_linear)."""
        return self.base_layer

    def updates(self, start: int = 0) -> list[Update]:
        """The updates the forward pass adds on the fly, from output column `start` (see engine.adapted_linear)."""
        update = self.update(start)
        return [update] if update else []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = self.update()
        base = frozen_linear(self.base_layer)
        if base is not None:
            return adapted_linear(x, base.weight, base.bias, [update] if update else [])
        if update is None:
            return self.base_layer(x)
        # A trainable or int8 base: one in-place BLAS call adds the update into its output.
        rows = x.reshape(-1, x.size(-1))
        out = self.base_layer(rows)
        out.addmm_((rows @ self.lora_A).to(out.dtype), self.lora_B.to(out.dtype), alpha=update.scale)  # A and B are float32, the output may not be
        return out.view(*x.shape[:-1], out.size(-1))

    def delta_weight(self) -> torch.Tensor:
        """The update in nn.Linear's (out, in) layout."""
        return (self.lora_A @ self.lora_B).t() * self.scale

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into the base weight (idempotent): faster inference, same outputs."""
        if not self.merged:
            delta = self.delta_weight()
            if not torch.isfinite(delta).all():
                # Finite A and B can still multiply past float range: the adapter's values are absurd.
                raise AdapterError("the LoRA update B·A holds NaN or infinity: the adapter is broken; train again with a lower learning rate")
            self.base_layer.weight += delta
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.base_layer.weight -= self.delta_weight()
            self.merged = False

    def extra_repr(self) -> str:
        return f"rank={self.rank}, scale={self.scale:g}, merged={self.merged}"


def matches_target(name: str, target: str) -> bool:
    """Whether the module called `name` is the LoRA target `target`: the whole name, or its dotted end.

    A dotted end, not a bare suffix: "c_proj" matches "transformer.h.0.mlp.c_proj" but never a
    "transformer.h.0.mlp.xc_proj". One test, so apply_lora and the parameter counts (engine.params)
    always agree on which layers a target names.
    """
    return name == target or name.endswith("." + target)


def apply_lora(model: nn.Module, cfg: LoRAConfig, generator: torch.Generator | None = None) -> list[str]:
    """Wrap each nn.Linear whose name ends with one of `cfg.targets`; returns the wrapped names.

    Layers are wrapped in module order (depth first, as the book's replacement goes), each A drawn
    from `generator` in turn (default: a new one at PyTorch's default seed), so a seeded run
    initialises every A the same way.

    Raises:
        ConfigError: no layer matched, or the rank is larger than a target layer's input width.
    """
    chosen = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Linear) and any(matches_target(name, t) for t in cfg.targets)]
    if not chosen:
        raise ConfigError(f"no layer matches the LoRA targets {list(cfg.targets)}")
    too_small = [name for name, module in chosen if cfg.rank > module.in_features]
    if too_small:
        raise ConfigError(f"rank {cfg.rank} is larger than the input width of {too_small[0]}: choose a rank up to {min(m.in_features for _, m in chosen)}")
    generator = generator or torch.Generator()
    for name, module in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(module, cfg.rank, cfg.scale, generator))
    return [name for name, _ in chosen]


def lora_layers(model: nn.Module) -> list[LoRALinear]:
    return [m for m in model.modules() if isinstance(m, LoRALinear)]


def freeze_base(model: nn.Module, train_head: bool = False) -> None:
    """Only LoRA tensors stay trainable (and the class head's own weights if `train_head`)."""
    for name, parameter in model.named_parameters():
        is_head = name.startswith("score.") and "lora_" not in name
        parameter.requires_grad = "lora_" in name or (train_head and is_head)


def set_lora_enabled(model: nn.Module, enabled: bool) -> None:
    """Switch every adapter on or off (off: the base model's answers); no weight is rewritten."""
    for layer in lora_layers(model):
        layer.enabled = enabled


def merge_lora(model: nn.Module) -> None:
    for layer in lora_layers(model):
        layer.merge()


def unmerge_lora(model: nn.Module) -> None:
    for layer in lora_layers(model):
        layer.unmerge()


@dataclass(frozen=True)
class ParamCounts:
    total: int  # every parameter, frozen or not
    trainable: int
    frozen: int
    lora: int  # the LoRA A and B tensors


def count_parameters(model: nn.Module) -> ParamCounts:
    total = trainable = lora = 0
    for name, parameter in model.named_parameters():
        total += parameter.numel()
        trainable += parameter.numel() if parameter.requires_grad else 0
        lora += parameter.numel() if "lora_" in name else 0
    return ParamCounts(total, trainable, total - trainable, lora)
