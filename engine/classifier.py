"""A GPT-2 spam classifier: build one for training, or load a saved adapter and classify messages."""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.adapter import AdapterConfig, check_base, load_tensors, read_adapter
from engine.config import LoRAConfig
from engine.errors import InputError
from engine.lora import apply_lora, freeze_base, merge_lora, set_lora_enabled
from engine.model import GPT, read_positions
from engine.tokenizer import END_OF_TEXT_ID, encode
from engine.weights import load_model

MAX_MESSAGE_CHARS = 100_000  # far beyond any SMS; longer input is cut before tokenising


def build_classifier(base: GPT, lora: LoRAConfig, n_classes: int = 2, seed: int = 123) -> GPT:
    """Turn a pretrained GPT-2 into a LoRA classifier in place: new seeded head, adapters, frozen base."""
    base.add_classifier(n_classes, seed)
    apply_lora(base, lora)
    freeze_base(base, lora.train_head)
    return base


@dataclass(frozen=True)
class Prediction:
    label: str
    probabilities: dict[str, float]
    tokens: int  # tokens read (after truncation)
    truncated: bool

    @property
    def p_spam(self) -> float:
        return self.probabilities.get("spam", float("nan"))


class Classifier:
    """A loaded adapter on its base model, ready to classify (LoRA merged, inference mode)."""

    def __init__(self, model: GPT, config: AdapterConfig, device: torch.device) -> None:
        self.model = model.to(device).eval()
        self.config = config
        self.device = device
        merge_lora(self.model)

    @classmethod
    def load(cls, adapter: Path | str, device: torch.device, model: str | None = None) -> "Classifier":
        """Load an adapter folder onto its base model (or `model`, which must have the same shape)."""
        config, tensors = read_adapter(Path(adapter))
        base = load_model(model or config.base_model, device)
        check_base(config, base)
        classifier = build_classifier(base, config.lora, n_classes=len(config.labels))
        load_tensors(classifier, tensors)
        return cls(classifier, config, device)

    def classify(self, texts: str | Sequence[str]) -> list[Prediction]:
        """Label and class probabilities for each message.

        Raises:
            InputError: a message is empty or whitespace only (its position is named).
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        encoded = [self._encode(text, i) for i, text in enumerate(texts)]
        return [self._predict(ids, truncated) for ids, truncated in encoded]

    def compare_with_base(self, text: str) -> tuple[Prediction, Prediction]:
        """The same message scored with the adapter switched off (before) and on (after)."""
        ids, truncated = self._encode(text, 0)
        set_lora_enabled(self.model, False)
        try:
            before = self._predict(ids, truncated)
        finally:
            set_lora_enabled(self.model, True)
            merge_lora(self.model)
        return before, self._predict(ids, truncated)

    def _encode(self, text: str, position: int) -> tuple[list[int], bool]:
        if not isinstance(text, str):
            raise InputError(f"message {position + 1} is not text")
        if not text.strip():
            raise InputError(f"message {position + 1} is empty: type some text to classify")
        ids = encode(text[:MAX_MESSAGE_CHARS])
        limit = self.config.max_length
        return ids[:limit], len(ids) > limit or len(text) > MAX_MESSAGE_CHARS

    @torch.inference_mode()
    def _predict(self, ids: list[int], truncated: bool) -> Prediction:
        # The book's "last" reading was trained on messages padded to max_length, so pad the same way;
        # reading the last real token needs no padding at all.
        width = self.config.max_length if self.config.pooling == "last" else len(ids)
        input_ids = torch.full((1, width), END_OF_TEXT_ID, dtype=torch.long)
        input_ids[0, : len(ids)] = torch.tensor(ids)
        lengths = torch.tensor([len(ids)])
        read = read_positions(lengths, width, self.config.pooling).to(self.device)
        probabilities = torch.softmax(self.model(input_ids.to(self.device), read).float(), dim=-1)[0].tolist()
        labels = self.config.labels
        best = max(range(len(labels)), key=probabilities.__getitem__)
        return Prediction(labels[best], dict(zip(labels, probabilities, strict=True)), len(ids), truncated)
