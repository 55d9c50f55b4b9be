"""Parameter counts for a model size and LoRA settings, computed on the meta device (no weights, no memory):
the totals, the split by kind of layer, and the shapes of one adapted layer (W beside LoRA's A and B)."""

import functools
from dataclasses import dataclass

import torch

from engine.classifier import build_classifier
from engine.config import LABELS, LORA_TARGETS, LoRAConfig
from engine.lora import count_parameters, matches_target
from engine.model import GPT
from engine.weights import resolve

BYTES_PER_PARAMETER = 4  # fp32, as saved


@dataclass(frozen=True)
class ParamSummary:
    model: str
    total_before_freeze: int  # base model + class head, all trainable (the book's first figure)
    trainable_after_freeze: int  # 0 unless the head is trained (LoRA); every weight the last-block and full methods train
    trainable_lora: int  # what LoRA trains: the book's 2,666,528 for gpt2-small at rank 16; 0 for the other methods
    trainable: int  # everything the optimiser updates (LoRA + head if trained)
    adapter_megabytes: float  # the saved adapter: LoRA tensors + class head, or the weights another method trained
    model_megabytes: float  # the base model's weights

    @property
    def ratio(self) -> float:
        """How many times fewer parameters are trained than the model holds."""
        return self.total_before_freeze / self.trainable


@functools.lru_cache(maxsize=64)
def param_summary(model: str, lora: LoRAConfig, method: str = "lora") -> ParamSummary:
    """Counts for `model` (size name or local folder) trained by `method` (with `lora` for LoRA), without loading weights."""
    config = resolve(model).config
    with torch.device("meta"):
        total_before = count_parameters(GPT(config, n_classes=len(LABELS))).total
        adapted = build_classifier(GPT(config), lora, n_classes=len(LABELS), method=method)
    counts = count_parameters(adapted)
    head = sum(t.numel() for name, t in adapted.state_dict().items() if name.startswith("score.") and "lora_" not in name)
    saved = counts.lora + head if method == "lora" else counts.trainable  # what engine.adapter saves for each method
    return ParamSummary(
        model=model,
        total_before_freeze=total_before,
        trainable_after_freeze=counts.trainable - counts.lora,
        trainable_lora=counts.lora,
        trainable=counts.trainable,
        adapter_megabytes=round(saved * BYTES_PER_PARAMETER / 1e6, 2),
        model_megabytes=round((total_before - head) * BYTES_PER_PARAMETER / 1e6, 1),
    )


# How the Parameters tab groups the model's weights: each Linear by its LoRA target name, the rest by kind.
EMBEDDINGS, LAYER_NORMS = "embeddings", "layer norms"


@dataclass(frozen=True)
class LayerTypeCounts:
    """One kind of layer over the whole model: its frozen weights and the LoRA weights trained beside them."""

    name: str  # a LoRA target ("attn.q_proj", ..., "score"), "embeddings" or "layer norms"
    layers: int  # how many such layers the model holds (one per block; the embeddings and the head once)
    frozen: int  # weights and biases kept as they are
    lora: int  # LoRA's A and B matrices on these layers (0 when LoRA leaves them alone)
    trained_as_is: int = 0  # weights trained as they are: the head's when trained too; the last block's or all with those methods


@dataclass(frozen=True)
class LoRAShape:
    """One adapted layer as LoRA sees it: x (1 × d) · W (d × k), plus x · A (d × r) · B (r × k)."""

    target: str
    d: int  # input width
    k: int  # output width
    rank: int

    @property
    def frozen(self) -> int:
        """Entries of W (its bias aside): d × k, all frozen."""
        return self.d * self.k

    @property
    def a(self) -> int:
        return self.d * self.rank

    @property
    def b(self) -> int:
        return self.rank * self.k

    @property
    def share(self) -> float:
        """LoRA's trained entries as a fraction of W's: r (d + k) / (d k)."""
        return (self.a + self.b) / self.frozen


def _kind(module: str) -> str:
    """The group a parameter of the classifier belongs to, from the name of the layer holding it."""
    target = next((t for t in LORA_TARGETS if matches_target(module, t)), None)
    if target is not None:
        return target
    return EMBEDDINGS if module.endswith(("wte", "wpe")) else LAYER_NORMS


@functools.lru_cache(maxsize=64)
def param_breakdown(model: str, lora: LoRAConfig, n_classes: int = len(LABELS), method: str = "lora") -> tuple[LayerTypeCounts, ...]:
    """Frozen, LoRA and as-is trained weights by kind of layer (`LORA_TARGETS` order, then embeddings and layer norms),
    for `method`, without weights."""
    config = resolve(model).config
    with torch.device("meta"):
        adapted = build_classifier(GPT(config), lora, n_classes=n_classes, method=method)
    frozen: dict[str, int] = {}
    lora_counts: dict[str, int] = {}
    as_is: dict[str, int] = {}
    layers: dict[str, set[str]] = {}
    for name, parameter in adapted.named_parameters():
        module = name.rsplit(".", 1)[0].removesuffix(".base_layer")  # a LoRA layer's base counts as the layer itself
        kind = _kind(module)
        layers.setdefault(kind, set()).add(module)
        if "lora_" in name:
            lora_counts[kind] = lora_counts.get(kind, 0) + parameter.numel()
        elif parameter.requires_grad:
            as_is[kind] = as_is.get(kind, 0) + parameter.numel()
        else:
            frozen[kind] = frozen.get(kind, 0) + parameter.numel()
    order = [*LORA_TARGETS, EMBEDDINGS, LAYER_NORMS]
    return tuple(
        LayerTypeCounts(
            kind,
            len(layers[kind]),
            frozen.get(kind, 0),
            lora_counts.get(kind, 0),
            as_is.get(kind, 0),
        )
        for kind in order
        if kind in layers
    )


@functools.lru_cache(maxsize=256)
def lora_shape(model: str, target: str, rank: int, n_classes: int = len(LABELS)) -> LoRAShape:
    """The width in (d) and out (k) of one adapted layer of `model`, with LoRA's A and B at `rank`.

    Raises:
        ConfigError: `target` is not one of LORA_TARGETS, or `rank` is not a whole number of at least 1.
    """
    LoRAConfig(rank=rank, targets=(target,))  # validates both, with the config's own messages
    config = resolve(model).config
    with torch.device("meta"):
        classifier = GPT(config, n_classes=n_classes)
    layer = next(module for name, module in classifier.named_modules() if matches_target(name, target))
    return LoRAShape(target, layer.in_features, layer.out_features, rank)
