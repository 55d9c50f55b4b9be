import pytest
import torch
from conftest import TINY, randomise_lora, write_hf_checkpoint

from engine.config import GPT2_SIZES
from engine.model import GPT, generate_greedy, read_positions
from engine.weights import load_model

PROMPT = [3887, 3626, 6100, 345]  # "Every effort moves you"


@pytest.fixture(scope="module")
def hf_pair(tmp_path_factory):
    """A random-init transformers GPT-2 saved with save_pretrained, and the same weights in our model
    (transformers is a dev dependency: the tests that compare with it skip without it)."""
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("hf-gpt2")
    config = transformers.GPT2Config(vocab_size=50257, n_positions=128, n_embd=48, n_layer=3, n_head=4)
    torch.manual_seed(7)
    reference = transformers.GPT2LMHeadModel(config).eval()
    # Non-trivial layer norms and biases, so a mix-up of tensors cannot pass by accident.
    with torch.no_grad():
        for name, parameter in reference.named_parameters():
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")) or name.endswith("bias"):
                parameter.normal_(0.5 if name.endswith("weight") else 0.0, 0.1)
    reference.save_pretrained(folder)
    return reference, load_model(str(folder), torch.device("cpu")), folder


def test_logits_match_transformers(hf_pair):
    reference, ours, _ = hf_pair
    ids = torch.randint(0, 50257, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference(ids).logits
        actual = ours.lm_logits(ids)
    assert (actual - expected).abs().max().item() < 1e-4


def test_greedy_tokens_match_transformers(hf_pair):
    reference, ours, _ = hf_pair
    expected = reference.generate(torch.tensor([PROMPT]), max_new_tokens=15, do_sample=False, pad_token_id=50256)[0].tolist()
    assert generate_greedy(ours, PROMPT, 15) == expected


def test_loads_keys_without_transformer_prefix(hf_pair, tmp_path):
    from safetensors.torch import load_file, save_file

    reference, ours, folder = hf_pair
    stripped = {k.removeprefix("transformer."): v for k, v in load_file(folder / "model.safetensors").items()}
    assert not any(k.startswith("transformer.") for k in stripped)
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    save_file(stripped, tmp_path / "model.safetensors")
    again = load_model(str(tmp_path), torch.device("cpu"))
    ids = torch.tensor([PROMPT])
    assert torch.equal(again.lm_logits(ids), ours.lm_logits(ids))


def test_gpt2_small_parameter_count_matches_the_book():
    with torch.device("meta"):
        model = GPT(GPT2_SIZES["gpt2-small"], n_classes=2)
    assert sum(p.numel() for p in model.parameters()) == 124_441_346


def test_reading_only_the_last_position_equals_the_full_forward(tmp_path):
    model = load_model(str(write_hf_checkpoint(tmp_path)), torch.device("cpu"))
    model.add_classifier(2)
    ids = torch.randint(0, 50257, (3, 12))
    read = torch.tensor([11, 4, 0])
    full = model.hidden_states(ids)  # every position through every block
    expected = model.score(full[torch.arange(3), read])
    assert torch.allclose(model(ids, read), expected, atol=1e-5)


def test_last_token_logits_do_not_depend_on_padding(tmp_path):
    model = load_model(str(write_hf_checkpoint(tmp_path)), torch.device("cpu"))
    model.add_classifier(2)
    message = torch.randint(0, 50000, (7,))
    logits = []
    for padding in (0, 5, 60):
        ids = torch.cat([message, torch.full((padding,), 50256)])[None]
        read = read_positions(torch.tensor([7]), ids.size(1), "last_token")
        logits.append(model(ids, read))
    assert torch.allclose(logits[0], logits[1], atol=1e-5) and torch.allclose(logits[0], logits[2], atol=1e-5)
    # The book's reading (the last position) does change with padding: the pitfall last_token avoids.
    last = [model(torch.cat([message, torch.full((p,), 50256)])[None]) for p in (0, 60)]
    assert not torch.allclose(last[0], last[1], atol=1e-3)


def test_too_long_input_is_an_error():
    model = GPT(TINY)
    with pytest.raises(ValueError, match="exceeds the model's context"):
        model.lm_logits(torch.zeros(1, TINY.context_length + 1, dtype=torch.long))


@pytest.mark.parametrize("targets", [("attn.q_proj", "attn.k_proj", "attn.v_proj"), ("attn.q_proj", "attn.v_proj"), ("mlp.c_fc",)])
def test_fused_projection_equals_separate_layers(targets):
    from engine.config import LoRAConfig
    from engine.lora import apply_lora, merge_lora
    from engine.model import FUSE_MIN_ROWS, project

    torch.manual_seed(0)
    model = GPT(TINY, n_classes=2)
    apply_lora(model, LoRAConfig(rank=3, alpha=5, targets=targets))
    randomise_lora(model, 0.5)
    attention = model.transformer.h[0].attn
    layers = (attention.q_proj, attention.k_proj, attention.v_proj)
    x = torch.randn(2, FUSE_MIN_ROWS, TINY.n_embd)
    for merged in (False, True):
        if merged:
            merge_lora(model)
        fused = project(x, layers)
        for part, layer in zip(fused, layers, strict=True):
            assert torch.allclose(part, layer(x), atol=1e-5)


def _tiny_classifier_with_nonzero_b(b_std: float = 0.5) -> GPT:
    """A seeded tiny LoRA classifier whose B matrices are random: a fresh B is zero, which hides A's gradient."""
    from engine.classifier import build_classifier
    from engine.config import LoRAConfig

    torch.manual_seed(0)
    model = build_classifier(GPT(TINY), LoRAConfig(rank=2, alpha=4))
    torch.manual_seed(1)  # the B matrices: the build draws nothing from the global generator
    randomise_lora(model, b_std)
    return model


def test_fused_and_unfused_training_gradients_agree(monkeypatch):
    import engine.model

    def gradients(min_rows):
        monkeypatch.setattr(engine.model, "FUSE_MIN_ROWS", min_rows)
        model = _tiny_classifier_with_nonzero_b()
        ids = torch.randint(0, 50257, (4, 30), generator=torch.Generator().manual_seed(3))
        model(ids, torch.tensor([29, 10, 3, 0])).sum().backward()
        return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    fused, separate = gradients(1), gradients(10**9)
    assert fused.keys() == separate.keys()
    for name in fused:
        scale = separate[name].abs().max().item()  # gradients here reach tens: compare relatively
        assert torch.allclose(fused[name], separate[name], rtol=1e-4, atol=1e-5 * scale), name


def _qkv_share_one_storage(model: GPT) -> bool:
    attention = model.transformer.h[0].attn
    weights = [getattr(layer, "base_layer", layer).weight for layer in (attention.q_proj, attention.k_proj, attention.v_proj)]
    return len({w.untyped_storage().data_ptr() for w in weights}) == 1


def test_qkv_weights_stay_end_to_end_through_moves_and_lora():
    from engine.config import LoRAConfig
    from engine.lora import apply_lora, freeze_base
    from engine.model import fused

    model = GPT(TINY, n_classes=2)
    assert _qkv_share_one_storage(model)
    model = model.to(torch.float64)  # a cast copies every parameter on its own
    apply_lora(model, LoRAConfig(rank=2, alpha=4))
    freeze_base(model)
    assert _qkv_share_one_storage(model)
    attention = model.transformer.h[0].attn
    bases = [layer.base_layer for layer in (attention.q_proj, attention.k_proj, attention.v_proj)]
    view = fused([b.weight for b in bases])
    assert view.untyped_storage().data_ptr() == bases[0].weight.untyped_storage().data_ptr()  # no copy
    assert torch.equal(view, torch.cat([b.weight for b in bases]))


def test_fused_copies_tensors_that_train_or_are_not_adjacent():
    from engine.model import fused

    storage = torch.arange(12.0)
    first, second = storage[:6].view(2, 3), storage[6:].view(2, 3)
    assert fused([first, second]).untyped_storage().data_ptr() == storage.untyped_storage().data_ptr()
    assert torch.equal(fused([second, first]), torch.cat([second, first]))  # wrong order: a copy
    assert fused([second, first]).untyped_storage().data_ptr() != storage.untyped_storage().data_ptr()
    trainable = [torch.zeros(2, 3, requires_grad=True), torch.ones(2, 3)]
    joined = fused(trainable)
    joined.sum().backward()
    assert torch.equal(trainable[0].grad, torch.ones(2, 3))


def test_a_bf16_base_trains_with_fp32_gradients_that_match_fp32s():
    # The bf16 precision stores the blocks' Linear weights in bf16 and computes their products in it;
    # LoRA's tensors and their gradients stay float32. B at the scale of a trained adapter: far larger
    # ones make this random model chaotic, where bf16's rounding alone can turn a gradient around.
    from engine.classifier import build_classifier
    from engine.config import LoRAConfig

    reference_model = _tiny_classifier_with_nonzero_b(b_std=0.1)
    torch.manual_seed(0)  # the same base as the reference's, then in bf16 before LoRA wraps it, as a bf16 run loads it
    base = GPT(TINY)
    base.store_products_in(torch.bfloat16)
    model = build_classifier(base, LoRAConfig(rank=2, alpha=4))
    torch.manual_seed(1)
    randomise_lora(model, 0.1)
    ids = torch.randint(0, 50257, (2, 40), generator=torch.Generator().manual_seed(3))  # 80 rows: the fused q/k/v path

    def gradients(classifier: GPT) -> dict[str, torch.Tensor]:
        logits = classifier(ids)
        torch.nn.functional.cross_entropy(logits.float(), torch.tensor([1, 0])).backward()  # both wrong: large gradients
        return {n: p.grad for n, p in classifier.named_parameters() if p.requires_grad}

    attention = model.transformer.h[1].attn
    assert attention.q_proj.base_layer.weight.dtype == attention.v_proj.base_layer.bias.dtype == model.products_dtype() == torch.bfloat16
    assert _qkv_share_one_storage(model)  # still one fused product, read without a copy
    assert model.transformer.wte.weight.dtype == model.transformer.h[0].ln_1.weight.dtype == model.score.base_layer.weight.dtype == torch.float32
    reference, mixed = gradients(reference_model), gradients(model)
    assert mixed.keys() == reference.keys()
    for name, gradient in mixed.items():
        assert gradient.dtype == dict(model.named_parameters())[name].dtype == torch.float32, name
        # bf16 keeps 8 bits of mantissa: compare directions, not elements
        assert torch.nn.functional.cosine_similarity(gradient.flatten(), reference[name].flatten(), dim=0) > 0.95, name


def test_loading_draws_no_random_weights(tmp_path):
    """The model is built on the meta device and takes the checkpoint's tensors: PyTorch's global
    generator (which a random initialisation draws from) is left as it was."""
    folder = write_hf_checkpoint(tmp_path)
    torch.manual_seed(5)
    before = torch.random.get_rng_state()
    model = load_model(str(folder), torch.device("cpu"))
    assert torch.equal(torch.random.get_rng_state(), before)
    assert not any(p.is_meta for p in model.parameters()) and _qkv_share_one_storage(model)
    torch.manual_seed(0)  # write_hf_checkpoint's seed: the random model it saved
    saved = dict(GPT(TINY).named_parameters())
    assert all(torch.equal(parameter, saved[name]) for name, parameter in model.named_parameters())


def test_a_bf16_load_keeps_only_the_blocks_products_in_bf16(tmp_path):
    model = load_model(str(write_hf_checkpoint(tmp_path)), torch.device("cpu"), products_dtype=torch.bfloat16)
    in_bf16 = {name for name, p in model.named_parameters() if p.dtype == torch.bfloat16}
    layers = ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    linear = {f"transformer.h.{i}.{layer}.{kind}" for i in range(TINY.n_layer) for layer in layers for kind in ("weight", "bias")}
    assert in_bf16 == linear and _qkv_share_one_storage(model)
