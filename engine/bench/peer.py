"""The peer the benchmark compares against: Hugging Face `transformers` GPT-2 with `peft` LoRA,
built to the same shape as ours and run the usual `transformers` way (dev dependencies)."""

import importlib.util
import warnings
from collections.abc import Callable
from typing import Any

import torch

from engine.config import GPTConfig, LoRAConfig
from engine.loaders import collate
from engine.tokenizer import END_OF_TEXT_ID, encode

PEER_BATCH = 32  # messages per forward pass for transformers, as engine.classifier batches ours
PEFT_TARGETS = ["c_attn", "c_proj", "c_fc", "score"]  # every Linear/Conv1D of GPT2ForSequenceClassification


def peers_available() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("transformers", "peft"))


def peer_model(cfg: GPTConfig, lora: LoRAConfig) -> Any:
    """GPT2ForSequenceClassification of the same shape (dropout 0, pad id 50256) with peft LoRA on every layer."""
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2ForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    config = GPT2Config(
        vocab_size=cfg.vocab_size,
        n_positions=cfg.context_length,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        layer_norm_epsilon=cfg.layer_norm_eps,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        num_labels=2,
        pad_token_id=END_OF_TEXT_ID,
    )
    base = GPT2ForSequenceClassification(config)
    # alpha scaling as in the book: peft scales by lora_alpha / r, so lora_alpha = scale · r.
    peft_config = LoraConfig(r=lora.rank, lora_alpha=lora.scale * lora.rank, lora_dropout=0.0, target_modules=PEFT_TARGETS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fan_in_fan_out notices for GPT-2's Conv1D layers
        return get_peft_model(base, peft_config)


def peer_classifier(cfg: GPTConfig, lora: LoRAConfig, device: torch.device) -> Callable[[list[str]], list[int]]:
    """The peer with its LoRA merged, as a function from messages to labels."""
    with torch.device(device):  # random weights, drawn where they are used
        peer = peer_model(cfg, lora).merge_and_unload().eval()

    @torch.inference_mode()
    def run_peer(texts: list[str]) -> list[int]:
        # the usual transformers batching: in the given order, right-padded to each batch's longest, attention mask
        labels: list[int] = []
        for start in range(0, len(texts), PEER_BATCH):
            batch = collate([(encode(text)[: cfg.context_length], 0) for text in texts[start : start + PEER_BATCH]])  # 0: no label to know
            mask = (torch.arange(batch.input_ids.size(1))[None, :] < batch.lengths[:, None]).long()
            logits = peer(input_ids=batch.input_ids.to(device), attention_mask=mask.to(device)).logits
            labels += torch.softmax(logits.float(), dim=-1).argmax(dim=-1).tolist()
        return labels

    return run_peer
