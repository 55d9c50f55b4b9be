"""Parameter counts for a model size and LoRA settings, computed on the meta device (no weights, no memory)."""

import functools
from dataclasses import dataclass

import torch

from engine.classifier import build_classifier
from engine.config import LABELS, LoRAConfig
from engine.lora import count_parameters
from engine.model import GPT
from engine.weights import resolve

BYTES_PER_PARAMETER = 4  # fp32, as saved


@dataclass(frozen=True)
class ParamSummary:
    model: str
    total_before_freeze: int  # base model + class head, all trainable (the book's first figure)
    trainable_after_freeze: int  # 0 unless the head is trained
    trainable_lora: int  # what LoRA trains: the book's 2,666,528 for gpt2-small at rank 16
    trainable: int  # everything the optimiser updates (LoRA + head if trained)
    adapter_megabytes: float  # the saved adapter: LoRA tensors + class head
    model_megabytes: float  # the base model's weights

    @property
    def ratio(self) -> float:
        """How many times fewer parameters are trained than the model holds."""
        return self.total_before_freeze / self.trainable


@functools.lru_cache(maxsize=64)
def param_summary(model: str, lora: LoRAConfig) -> ParamSummary:
    """Counts for `model` (size name or local folder) with `lora` applied, without loading weights."""
    config = resolve(model).config
    with torch.device("meta"):
        total_before = count_parameters(GPT(config, n_classes=len(LABELS))).total
        adapted = build_classifier(GPT(config), lora, n_classes=len(LABELS))
    counts = count_parameters(adapted)
    head = sum(t.numel() for name, t in adapted.state_dict().items() if name.startswith("score.") and "lora_" not in name)
    return ParamSummary(
        model=model,
        total_before_freeze=total_before,
        trainable_after_freeze=counts.trainable - counts.lora,
        trainable_lora=counts.lora,
        trainable=counts.trainable,
        adapter_megabytes=round((counts.lora + head) * BYTES_PER_PARAMETER / 1e6, 2),
        model_megabytes=round((total_before - head) * BYTES_PER_PARAMETER / 1e6, 1),
    )
