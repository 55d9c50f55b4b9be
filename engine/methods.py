"""What a fine-tuning method trains, besides LoRA: the last block (the book's chapter 6) or every weight.

  lora        LoRA's A and B beside frozen Linear layers, plus the class head (engine/lora.py)
  last-block  the last transformer block and the final LayerNorm as they are, plus the class head
  full        every weight of the model

For the last two the saved "adapter" is the trained tensors themselves (engine/adapter.py): a last
block of gpt2-small is about 28 MB, a full model about 500 MB. One name test (`trains`) decides both
what trains and what is saved, so the two never disagree.
"""

from torch import nn

from engine.config import METHODS
from engine.errors import ConfigError

# What each method means, in words for the app and the docs.
METHOD_WORDS: dict[str, str] = {
    "lora": "LoRA: small low-rank matrices beside the frozen model, plus the class head",
    "last-block": "last block: the model's last transformer block and final norm retrained, plus the class head (no LoRA)",
    "full": "full fine-tuning: every weight of the model retrained (no LoRA)",
}


def method_precision(method: str, precision: str) -> str:
    """The precision `method` trains in: LoRA's frozen base may be stored in bf16; the other methods train
    the base's own weights, kept in fp32 (AdamW on bf16 weights would lose most of each update)."""
    return precision if method == "lora" else "fp32"


def check_method(method: str) -> None:
    """Raises ConfigError unless `method` is one of METHODS."""
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}: choose {', '.join(METHODS)}")


def trains(name: str, method: str, n_layer: int) -> bool:
    """Whether the parameter called `name` (in the classifier's naming) trains under `method` (not "lora")."""
    if method == "full":
        return True
    return name.startswith((f"transformer.h.{n_layer - 1}.", "transformer.ln_f.", "score."))


def train_only_method(model: nn.Module, method: str, n_layer: int) -> None:
    """Make exactly the parameters `method` trains trainable, and freeze the rest."""
    for name, parameter in model.named_parameters():
        parameter.requires_grad = trains(name, method, n_layer)
