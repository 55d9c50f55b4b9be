"""A GPT-2 spam classifier: build one for training, or load a saved adapter and classify messages."""

import itertools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from engine.adapter import AdapterConfig, check_base, load_tensors, read_adapter
from engine.config import DEFAULT_SEED, LoRAConfig
from engine.device import dtype_of, precision_for, prepare_device
from engine.draws import RunDraws
from engine.errors import AdapterError, InputError
from engine.loaders import PASS_COST_TOKENS, collate, least_padding_cuts
from engine.lora import apply_lora, freeze_base, merge_lora, set_lora_enabled
from engine.methods import check_method, train_only_method
from engine.model import GPT, read_positions
from engine.tokenizer import encode
from engine.weights import load_model

MAX_MESSAGE_CHARS = 100_000  # far beyond any SMS; longer input is cut before tokenising
BATCH_SIZE = 32  # at most this many messages per forward pass when classifying many


def build_classifier(base: GPT, lora: LoRAConfig, n_classes: int = 2, draws: RunDraws | None = None, method: str = "lora") -> GPT:
    """Turn a pretrained GPT-2 into a classifier in place: a new head, then what `method` trains (engine/methods.py):
    LoRA adapters on a frozen base, or the model's own last block or all its weights (`lora` then unused).

    The head and the adapters are drawn as `draws` says (default: independent draws from the default
    seed), never from PyTorch's global generator: two classifiers built at once get the same weights.
    """
    check_method(method)
    draws = draws or RunDraws(seed=DEFAULT_SEED)
    base.add_classifier(n_classes, draws.for_head())
    if method != "lora":
        train_only_method(base, method, base.cfg.n_layer)
        return base
    apply_lora(base, lora, draws.for_lora())
    freeze_base(base, lora.train_head)
    return base


@dataclass(frozen=True)
class Prediction:
    label: str  # the most likely class
    probabilities: dict[str, float]  # every class of the adapter, by name
    tokens: int  # tokens read (after truncation)
    truncated: bool

    @property
    def probability(self) -> float:
        """P(label): how sure the model is of its answer."""
        return self.probabilities[self.label]


class Classifier:
    """A loaded adapter on its base model, ready to classify (LoRA merged, inference mode).

    `precision` ("auto", "fp32" or "bf16", see engine.device) is what the merged products compute
    in; the merge itself is done in float32 first, so bf16 rounds the merged weights once.
    """

    def __init__(self, model: GPT, config: AdapterConfig, device: torch.device, int8: bool = False, precision: str = "auto") -> None:
        if int8 and precision == "bf16":
            raise InputError("int8 classification quantises float32 weights: use precision fp32 (or auto), or drop int8")
        self.precision = "fp32" if int8 else precision_for(precision, device)
        self.config = config
        self.device = device
        self.int8 = int8
        prepare_device(device)
        merge_lora(model)
        model.store_products_in(dtype_of(self.precision))
        self.model = model.to(device).eval()
        if int8:
            quantize_int8(self.model, device)

    @classmethod
    def load(cls, adapter: Path | str, device: torch.device, model: str | None = None, int8: bool = False, precision: str = "auto") -> "Classifier":
        """Load an adapter folder onto its base model (or `model`, which must have the same shape)."""
        config, tensors = read_adapter(Path(adapter))
        base = load_model(model or config.base_model, torch.device("cpu"))  # merged in float32 here, then moved in the chosen precision
        check_base(config, base)
        classifier = build_classifier(base, config.lora, n_classes=len(config.labels), method=config.method)
        load_tensors(classifier, tensors, config.method)
        return cls(classifier, config, device, int8, precision)

    def classify(self, texts: str | Sequence[str]) -> list[Prediction]:
        """Label and class probabilities for each message.

        Raises:
            InputError: a message is empty or whitespace only (its position is named).
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        encoded = [self._encode(text, i) for i, text in enumerate(texts)]
        # Batches of similar length: little padding, and with last-token reading padding cannot change an answer.
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
        if self.config.pooling == "last":  # every message is padded to max_length anyway
            cuts = list(range(0, len(order), BATCH_SIZE)) + [len(order)]
        else:
            cuts = least_padding_cuts([len(encoded[i][0]) for i in order], BATCH_SIZE, PASS_COST_TOKENS)
        predictions: list[Prediction | None] = [None] * len(encoded)
        for start, end in itertools.pairwise(cuts):
            chunk = order[start:end]
            for index, prediction in zip(chunk, self._predict([encoded[i] for i in chunk]), strict=True):
                predictions[index] = prediction
        return predictions  # type: ignore[return-value]

    def compare_with_base(self, text: str) -> tuple[Prediction | None, Prediction]:
        """The same message scored with the adapter switched off (before) and on (after); no before when the run
        retrained the model's own weights (last-block, full): the untouched model is no longer there to ask."""
        encoded = [self._encode(text, 0)]
        if self.config.method != "lora":
            return None, self._predict(encoded)[0]
        set_lora_enabled(self.model, False)  # merged weights stay; the update is taken out on the fly
        try:
            (before,) = self._predict(encoded)
        finally:
            set_lora_enabled(self.model, True)
        return before, self._predict(encoded)[0]

    def _encode(self, text: str, position: int) -> tuple[list[int], bool]:
        if not isinstance(text, str):
            raise InputError(f"message {position + 1} is not text")
        if not text.strip():
            raise InputError(f"message {position + 1} is empty: type some text to classify")
        ids = encode(text[:MAX_MESSAGE_CHARS])
        limit = self.config.max_length
        return ids[:limit], len(ids) > limit or len(text) > MAX_MESSAGE_CHARS

    @torch.inference_mode()
    def _predict(self, encoded: list[tuple[list[int], bool]]) -> list[Prediction]:
        # The book's "last" reading was trained on messages padded to max_length, so pad the same way;
        # reading the last real token needs padding only to the batch's longest message.
        batch = collate([(ids, 0) for ids, _ in encoded], self.config.max_length if self.config.pooling == "last" else None)  # 0: no label to know
        read = read_positions(batch.lengths, batch.input_ids.size(1), self.config.pooling).to(self.device)
        probabilities = class_probabilities(self.model(batch.input_ids.to(self.device), read)).tolist()
        labels = self.config.labels
        return [
            Prediction(labels[max(range(len(labels)), key=row.__getitem__)], dict(zip(labels, row, strict=True)), len(ids), truncated)
            for row, (ids, truncated) in zip(probabilities, encoded, strict=True)
        ]


def class_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the classes (last dimension), in float32; a probability that is not a number is never an answer."""
    probabilities = torch.softmax(logits.float(), dim=-1)
    if not torch.isfinite(probabilities).all():
        raise AdapterError(
            "the model's answer is not a number: the adapter's values overflow the float32 numbers the model computes in "
            "(they are far beyond anything training makes), so the adapter is broken; retrain it"
        )
    return probabilities


def quantize_int8(model: GPT, device: torch.device) -> None:
    """Dynamic int8 quantisation of every (merged) Linear, in place: faster CPU inference, slightly different numbers."""
    if device.type != "cpu":
        raise InputError("int8 classification runs on the CPU only: use --device cpu or drop int8")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyTorch marks its quantised tensors as deprecated, yet they work
        torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=True)
