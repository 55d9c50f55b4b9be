"""The anatomy of an adapter: what the update ΔW = scale · A·B of each adapted layer looks like.

Per layer: its size (Frobenius norm), its singular values (the strength of each direction it
writes along: at most `rank` of them), how many directions carry 90 % of it (its effective rank,
counted on the squared singular values, the share of ‖ΔW‖² each direction holds), and its size
against the frozen weight it is added to (‖ΔW‖ / ‖W‖), where that weight is known.

The singular values come without forming ΔW: with A = Q_a·R_a and Bᵀ = Q_b·R_b (thin QR, r columns),
A·B = Q_a·(R_a·R_bᵀ)·Q_bᵀ has the singular values of the r × r matrix R_a·R_bᵀ. That costs a few
thin products instead of an SVD of a 768 × 3072 matrix, so a run can measure itself at every estimate.
"""

import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from engine.adapter import AdapterConfig, read_adapter
from engine.config import LORA_TARGETS, LoRAConfig
from engine.errors import AdapterError, WeightsError
from engine.lora import LoRALinear
from engine.methods import METHOD_WORDS
from engine.weights import cached, resolve

ENERGY_SHARE = 0.9  # the effective rank: the fewest directions holding this share of ‖ΔW‖²
TOP_VALUES = 4  # singular values a run keeps per layer at each estimate (its growth, in run.json)

# Each LoRA target as people call it, in the order the heat map's columns go.
KIND_WORDS: dict[str, str] = {
    "attn.q_proj": "q",
    "attn.k_proj": "k",
    "attn.v_proj": "v",
    "attn.c_proj": "attention out",
    "mlp.c_fc": "MLP in",
    "mlp.c_proj": "MLP out",
    "score": "head",
}
assert tuple(KIND_WORDS) == LORA_TARGETS, "every LoRA target needs its words"
_BLOCK = re.compile(r"(?:^|\.)h\.(\d+)\.")


@dataclass(frozen=True)
class LayerAnatomy:
    """The update one adapted layer learned."""

    name: str  # the module's name: transformer.h.3.attn.q_proj, score
    kind: str  # its LoRA target: attn.q_proj, ..., score
    block: int | None  # the transformer block it sits in; None for the head
    norm: float  # ‖ΔW‖, the Frobenius norm
    singular_values: list[float]  # largest first; as many as the rank
    effective_rank: int  # directions holding ENERGY_SHARE of ‖ΔW‖² (0 for an update that is still zero)
    base_norm: float | None  # ‖W‖ of the frozen weight it is added to; None when that weight is not at hand
    relative: float | None  # ‖ΔW‖ / ‖W‖

    @property
    def kind_words(self) -> str:
        return KIND_WORDS[self.kind]


@dataclass(frozen=True)
class Anatomy:
    """Every adapted layer's update, in the model's order."""

    base_model: str
    rank: int
    scale: float
    layers: tuple[LayerAnatomy, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"base_model": self.base_model, "rank": self.rank, "scale": self.scale, "summary": summary(self), "layers": [asdict(x) for x in self.layers]}


def kind_of(name: str) -> str:
    """The LoRA target a module name ends with (transformer.h.0.mlp.c_proj -> mlp.c_proj)."""
    found = [target for target in LORA_TARGETS if name == target or name.endswith("." + target)]
    if not found:
        raise ValueError(f"{name} is not a LoRA target")
    return max(found, key=len)


def block_of(name: str) -> int | None:
    match = _BLOCK.search(name)
    return int(match.group(1)) if match else None


def singular_values(lora_a: torch.Tensor, lora_b: torch.Tensor, scale: float) -> list[float]:
    """The singular values of scale · A·B (A: in × r, B: r × out), largest first, through two thin QRs."""
    a, b = lora_a.detach().to("cpu", torch.float64), lora_b.detach().to("cpu", torch.float64)
    _, r_a = torch.linalg.qr(a)  # (r, r) when in >= r
    _, r_b = torch.linalg.qr(b.t())  # (min(out, r), r): the head's out is its class count, maybe below r
    values = torch.linalg.svdvals(abs(scale) * (r_a @ r_b.t()))
    return values.tolist() + [0.0] * (lora_a.size(1) - values.numel())


def effective_rank(values: list[float], share: float = ENERGY_SHARE) -> int:
    """The fewest leading directions whose squared singular values hold `share` of the total."""
    energies = [v * v for v in values]
    total = sum(energies)
    if total == 0:
        return 0
    held = 0.0
    for count, energy in enumerate(energies, start=1):
        held += energy
        if held >= share * total * (1 - 1e-12):  # rounding must not push a direction past its share
            return count
    return len(values)


def layer_anatomy(name: str, lora_a: torch.Tensor, lora_b: torch.Tensor, scale: float, base_norm: float | None = None) -> LayerAnatomy:
    values = singular_values(lora_a, lora_b, scale)
    norm = math.sqrt(sum(v * v for v in values))
    relative = norm / base_norm if base_norm else None
    return LayerAnatomy(name, kind_of(name), block_of(name), norm, values, effective_rank(values), base_norm, relative)


def anatomy_of(tensors: dict[str, torch.Tensor], lora: LoRAConfig, base_model: str, base_norms: dict[str, float] | None = None) -> Anatomy:
    """The anatomy of an adapter's tensors (as `engine.adapter.adapter_tensors` names them).

    `base_norms` gives ‖W‖ by module name; the head's frozen weight travels in the adapter itself.
    """
    norms = dict(base_norms or {})
    for key in ("score.base_layer.weight", "score.weight"):
        if key in tensors:
            norms.setdefault("score", float(torch.linalg.matrix_norm(tensors[key].double())))
    names = [key.removesuffix(".lora_A") for key in tensors if key.endswith(".lora_A")]
    layers = tuple(layer_anatomy(name, tensors[f"{name}.lora_A"], tensors[f"{name}.lora_B"], lora.scale, norms.get(name)) for name in names)
    return Anatomy(base_model, lora.rank, lora.scale, layers)


def no_lora_adapter(method: str) -> str:
    """Why a run of `method` (not LoRA) has no adapter anatomy, in words for anyone."""
    return f"this run has no LoRA adapter to look inside: it trained with {METHOD_WORDS[method]}, so there are no low-rank updates to measure"


def inspect_adapter(folder: Path, model: str | None = None, with_base: bool = True) -> Anatomy:
    """The anatomy of a saved adapter; ‖W‖ from its base model (or `model`) when that is on this machine."""
    config, tensors = read_adapter(Path(folder))
    if config.method != "lora":
        raise AdapterError(no_lora_adapter(config.method))
    norms = base_weight_norms(model or config.base_model, config) if with_base else None
    return anatomy_of(tensors, config.lora, config.base_model, norms)


# Where each adapted layer's frozen weight is in a Hugging Face GPT-2 checkpoint: (tensor, which third of c_attn).
_HF_WEIGHTS = {
    "attn.q_proj": ("attn.c_attn.weight", 0),
    "attn.k_proj": ("attn.c_attn.weight", 1),
    "attn.v_proj": ("attn.c_attn.weight", 2),
    "attn.c_proj": ("attn.c_proj.weight", None),
    "mlp.c_fc": ("mlp.c_fc.weight", None),
    "mlp.c_proj": ("mlp.c_proj.weight", None),
}


def base_weight_norms(spec: str, config: AdapterConfig) -> dict[str, float] | None:
    """‖W‖ of every frozen weight LoRA can adapt, read from the base model's file (only those tensors);
    None when the model is not on this machine (nothing is downloaded) or does not fit the adapter."""
    try:
        weights = cached(resolve(spec))
    except WeightsError:
        return None
    if weights is None:
        return None
    width = config.model.n_embd
    norms: dict[str, float] = {}
    try:
        with safe_open(str(weights), "pt") as handle:
            keys = {key.removeprefix("transformer."): key for key in handle.keys()}
            for block in range(config.model.n_layer):
                for target, (tensor, third) in _HF_WEIGHTS.items():
                    key = keys.get(f"h.{block}.{tensor}")
                    if key is None:
                        return None
                    part = handle.get_slice(key)
                    value = part[:, third * width : (third + 1) * width] if third is not None else part[:]
                    norms[f"transformer.h.{block}.{target}"] = float(torch.linalg.matrix_norm(value.double()))
    except (SafetensorError, OSError, ValueError):
        return None
    return norms


def summary(anatomy: Anatomy) -> str:
    """One sentence on what the adapter's updates look like: "rank 16, but most layers use 2-3 directions ..."."""
    learned = [layer for layer in anatomy.layers if layer.norm > 0]
    if not learned:
        return f"rank {anatomy.rank}, but every update is still zero: nothing has been learned yet."
    used = sorted(layer.effective_rank for layer in learned)
    low, high = used[len(used) // 4], used[(3 * len(used)) // 4]  # the middle half of the layers
    span = f"{low}" if low == high else f"{low}-{high}"
    direction = "direction" if span == "1" else "directions"
    biggest = max(learned, key=lambda layer: layer.relative if layer.relative is not None else layer.norm)
    where = f"block {biggest.block} ({biggest.kind_words})" if biggest.block is not None else "the head"
    measure = f", {100 * biggest.relative:.1f}% of its frozen weight" if biggest.relative is not None else f", norm {biggest.norm:.3g}"
    return (
        f"rank {anatomy.rank}, but most layers use {span} {direction} (which hold {100 * ENERGY_SHARE:.0f}% of each update); "
        f"the largest update is in {where}{measure}."
    )


def growth_point(tensors: dict[str, torch.Tensor], lora: LoRAConfig, base_norms: dict[str, float] | None) -> dict[str, dict[str, Any]]:
    """A compact anatomy for a run's record at one estimate: per layer, its norm, effective rank, size
    against ‖W‖ and its TOP_VALUES largest singular values (rounded: a record, not a measurement tool)."""
    anatomy = anatomy_of(tensors, lora, "", base_norms)
    return {
        layer.name: {
            "norm": _figures(layer.norm),
            "effective_rank": layer.effective_rank,
            "relative": _figures(layer.relative) if layer.relative is not None else None,
            "top": [_figures(v) for v in layer.singular_values[:TOP_VALUES]],
        }
        for layer in anatomy.layers
    }


def layers_of_point(layers: dict[str, dict[str, Any]]) -> tuple[LayerAnatomy, ...]:
    """A record's growth point read back as layers (their TOP_VALUES largest singular values only; ‖W‖ not kept)."""
    return tuple(
        LayerAnatomy(name, kind_of(name), block_of(name), float(v["norm"]), [float(x) for x in v["top"]], int(v["effective_rank"]), None, v["relative"])
        for name, v in layers.items()
    )


def frozen_weight_norms(model: nn.Module) -> dict[str, float]:
    """‖W‖ of the frozen weight under each LoRA layer of a model being trained, by module name."""
    layers = [(name, layer) for name, layer in model.named_modules() if isinstance(layer, LoRALinear)]
    return {name: float(torch.linalg.matrix_norm(layer.base_layer.weight.detach().double())) for name, layer in layers}


def _figures(value: float) -> float:
    return float(f"{value:.5g}")  # five significant figures: small early updates keep theirs
