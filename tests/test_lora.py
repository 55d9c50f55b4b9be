import math

import pytest
import torch
from conftest import TINY, randomise_lora
from torch import nn

from engine.classifier import build_classifier
from engine.config import LORA_TARGETS, LoRAConfig
from engine.errors import ConfigError
from engine.lora import LoRALinear, apply_lora, count_parameters, merge_lora, set_lora_enabled, unmerge_lora
from engine.model import GPT
from engine.params import param_summary


def classifier(lora: LoRAConfig | None = None, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return build_classifier(GPT(TINY), lora or LoRAConfig(rank=4, alpha=8))


def test_book_counts_for_gpt2_small_at_rank_16():
    summary = param_summary("gpt2-small", LoRAConfig(rank=16, alpha=16, scaling="alpha"))
    assert summary.total_before_freeze == 124_441_346
    assert summary.trainable_after_freeze == 0
    assert summary.trainable_lora == 2_666_528
    assert round(summary.ratio) == 47  # "almost 50x" fewer
    assert 10 < summary.adapter_megabytes < 11  # about 10 MB, not 500


def test_counts_follow_rank_and_targets():
    base = param_summary("gpt2-small", LoRAConfig(rank=8, alpha=16)).trainable_lora
    assert base == 2_666_528 // 2
    attention_only = param_summary("gpt2-small", LoRAConfig(rank=8, alpha=16, targets=("attn.q_proj", "attn.v_proj"))).trainable_lora
    assert attention_only == 12 * 2 * (768 * 8 + 8 * 768)


def plain_and_adapted() -> tuple[GPT, GPT]:
    """The same random classifier twice: as it is, and with fresh LoRA adapters on every Linear."""
    torch.manual_seed(0)
    plain = GPT(TINY)
    plain.add_classifier(2)
    adapted = GPT(TINY)
    adapted.load_state_dict(plain.state_dict(), strict=False)
    adapted.add_classifier(2)
    apply_lora(adapted, LoRAConfig(rank=4, alpha=8))
    return plain, adapted


def test_initial_adapter_leaves_outputs_unchanged():
    plain, adapted = plain_and_adapted()
    ids = torch.randint(0, 50257, (2, 9))
    assert torch.equal(plain(ids), adapted(ids))
    a = adapted.transformer.h[0].attn.q_proj.lora_A
    assert a.shape == (TINY.n_embd, 4) and a.abs().max() > 0
    bound = 1 / math.sqrt(4)  # kaiming-uniform, a=sqrt(5), fan-in = rank (the book's A layout)
    assert a.abs().max() <= bound


def test_every_linear_is_wrapped_and_only_lora_trains():
    model = classifier()
    wrapped = {name for name, m in model.named_modules() if isinstance(m, LoRALinear)}
    assert len(wrapped) == 6 * TINY.n_layer + 1 and "score" in wrapped
    assert not any(isinstance(m, nn.Linear) and not name.endswith("base_layer") for name, m in model.named_modules())
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    counts = count_parameters(model)
    assert counts.trainable == counts.lora and counts.frozen == counts.total - counts.lora


def test_train_head_makes_the_head_trainable_too():
    model = classifier(LoRAConfig(rank=4, alpha=8, train_head=True))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert {"score.base_layer.weight", "score.base_layer.bias"} <= trainable
    assert all("lora_" in n or n.startswith("score.") for n in trainable)


@pytest.mark.parametrize("scaling", ["alpha", "alpha_over_rank"])
def test_merge_equals_unmerged_and_unmerge_restores(scaling):
    model = classifier(LoRAConfig(rank=4, alpha=8, scaling=scaling)).eval()
    randomise_lora(model, 0.1)
    ids = torch.randint(0, 50257, (2, 11))
    weight = model.transformer.h[1].mlp.c_fc.base_layer.weight.clone()
    expected = model(ids)
    merge_lora(model)
    merge_lora(model)  # idempotent
    assert not torch.equal(model.transformer.h[1].mlp.c_fc.base_layer.weight, weight)
    assert torch.allclose(model(ids), expected, atol=1e-5)
    unmerge_lora(model)
    assert torch.allclose(model.transformer.h[1].mlp.c_fc.base_layer.weight, weight, atol=1e-6)
    assert torch.allclose(model(ids), expected, atol=1e-5)


def test_scaling_modes_differ_by_rank():
    assert LoRAConfig(rank=16, alpha=16, scaling="alpha").scale == 16
    assert LoRAConfig(rank=16, alpha=16, scaling="alpha_over_rank").scale == 1


@pytest.mark.parametrize("tokens", [6, 70])  # 70 rows take the fused q/k/v product
@pytest.mark.parametrize("merged", [False, True])
def test_disabling_gives_the_base_model_without_rewriting_weights(tokens, merged):
    plain, model = plain_and_adapted()
    randomise_lora(model, 0.1)
    if merged:
        merge_lora(model)
    weights = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    ids = torch.randint(0, 50257, (2, tokens))
    set_lora_enabled(model, False)
    assert torch.allclose(model(ids), plain(ids), atol=1e-5)
    set_lora_enabled(model, True)
    assert not torch.allclose(model(ids), plain(ids), atol=1e-4)
    assert all(torch.equal(tensor, weights[name]) for name, tensor in model.state_dict().items())


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"rank": 0}, "rank must be a whole number from 1 to 2,048"),
        ({"rank": -3}, "rank must be"),
        ({"rank": 2.5}, "rank must be"),
        ({"alpha": 0}, "alpha must be a number above 0 and at most 10,000"),
        ({"alpha": -1}, "alpha must be"),
        ({"alpha": float("nan")}, "alpha must be"),
        ({"alpha": float("inf")}, "alpha must be"),
        ({"targets": ("attn.qkv",)}, "unknown targets"),
        ({"targets": ()}, "targets is empty"),
    ],
)
def test_bad_lora_settings_are_named(kwargs, problem):
    with pytest.raises(ConfigError, match=problem):
        LoRAConfig(**kwargs)


def test_rank_larger_than_the_layer_is_refused():
    with pytest.raises(ConfigError, match=f"rank {TINY.n_embd + 1} is larger than the input width"):
        classifier(LoRAConfig(rank=TINY.n_embd + 1, alpha=1))


def test_targets_constant_covers_every_linear():
    model = GPT(TINY, n_classes=2)
    linears = {name for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert all(any(n == t or n.endswith("." + t) for t in LORA_TARGETS) for n in linears)
