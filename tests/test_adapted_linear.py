import pytest
import torch
import torch.nn.functional as F
from torch import nn

from engine.adapted_linear import ONEDNN_SWITCH, Update, adapted_linear, frozen_product, gelu, gelu_of_frozen, product_path
from engine.lora import LoRALinear
from engine.model import MLP
from tests.conftest import TINY, randomise_lora


def _frozen(in_features: int, out_features: int, dtype: torch.dtype = torch.float64) -> nn.Linear:
    return nn.Linear(in_features, out_features).to(dtype).requires_grad_(False)


def _pair(in_features: int, rank: int, width: int, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    # B is random: a fresh B is zero, which would hide mistakes in A's gradient.
    return torch.randn(in_features, rank, dtype=dtype, requires_grad=True), torch.randn(rank, width, dtype=dtype, requires_grad=True)


def _adapted_node(out: torch.Tensor):
    """The autograd node of the hand-written function behind `out` (under the reshape back to out's shape), or None."""
    node = out.grad_fn
    while node is not None and not node.name().endswith("_AdaptedLinearBackward"):
        node = node.next_functions[0][0] if node.name().startswith(("View", "Reshape", "Unsafe")) else None
    return node


def _autograd_reference(x, base, updates, gelu_first):
    inputs = gelu(x) if gelu_first else x
    parts = list(base(inputs).unbind(-1))
    for u in updates:
        delta = u.scale * (inputs @ u.lora_a) @ u.lora_b
        for column in range(u.lora_b.size(1)):
            parts[u.start + column] = parts[u.start + column] + delta[..., column]
    return torch.stack(parts, dim=-1)


@pytest.mark.parametrize("gelu_first", [False, True])
@pytest.mark.parametrize("layout", ["one pair", "three pairs on column ranges", "two of three", "none"])
def test_outputs_and_gradients_equal_autograds(layout, gelu_first):
    torch.manual_seed(0)
    base = _frozen(12, 9)
    starts = {"one pair": [(0, 9)], "three pairs on column ranges": [(0, 3), (3, 3), (6, 3)], "two of three": [(0, 3), (6, 3)], "none": []}[layout]
    updates = [Update(*_pair(12, 2, width), scale=scale, start=start) for (start, width), scale in zip(starts, (1.7, -0.5, 2.0), strict=False)]
    x = torch.randn(2, 7, 12, dtype=torch.float64, requires_grad=True)
    trainable = [x, *(t for u in updates for t in (u.lora_a, u.lora_b))]
    weights = torch.randn(2, 7, 9, dtype=torch.float64)

    fast = adapted_linear(x, base.weight, base.bias, updates, gelu_first)
    reference = _autograd_reference(x, base, updates, gelu_first)

    assert _adapted_node(fast) is not None
    assert torch.allclose(fast, reference, atol=1e-12)
    for mine, theirs in zip(torch.autograd.grad((fast * weights).sum(), trainable), torch.autograd.grad((reference * weights).sum(), trainable), strict=True):
        assert torch.allclose(mine, theirs, atol=1e-10)


@pytest.mark.parametrize("gelu_first", [False, True])
def test_gradcheck(gelu_first):
    torch.manual_seed(1)
    base = _frozen(6, 5)
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    (a1, b1), (a2, b2) = _pair(6, 2, 2), _pair(6, 1, 3)

    def run(x, a1, b1, a2, b2):
        return adapted_linear(x, base.weight, base.bias, [Update(a1, b1, 0.8), Update(a2, b2, -1.3, start=2)], gelu_first)

    assert torch.autograd.gradcheck(run, (x, a1, b1, a2, b2))


def test_the_mlp_keeps_only_the_gelu_input_for_backward():
    torch.manual_seed(0)
    mlp = MLP(TINY).double().requires_grad_(False)
    mlp.c_proj = LoRALinear(mlp.c_proj, rank=3, scale=1.7)
    randomise_lora(mlp, 0.5)
    x = torch.randn(3, TINY.n_embd, dtype=torch.float64, requires_grad=True)
    saved = [t for t in _adapted_node(mlp(x)).saved_tensors if t is not None]
    big = [t for t in saved if t.shape == (3, 4 * TINY.n_embd)]
    assert len(big) == 1  # the GELU input; its output is recomputed in backward
    kept = {t.data_ptr() for t in saved}
    assert mlp.c_proj.base_layer.weight.data_ptr() in kept  # a reference, not a copy


def test_a_trainable_base_is_refused_and_the_mlp_takes_autograds_path():
    base = nn.Linear(4, 3)
    with pytest.raises(ValueError, match="trainable base"):
        adapted_linear(torch.randn(2, 4), base.weight, base.bias, [])
    mlp = MLP(TINY)
    out = mlp(torch.randn(3, TINY.n_embd))
    assert _adapted_node(out) is None
    out.sum().backward()
    assert mlp.c_proj.weight.grad is not None


def test_a_bf16_weight_computes_in_bf16_and_gives_autograds_float32_gradients():
    # The bf16 precision stores W in bf16; A and B train in float32 and are cast for the product.
    torch.manual_seed(0)
    projection = LoRALinear(_frozen(12, 5, torch.float32), rank=3, scale=1.7)
    randomise_lora(projection, 0.5)
    projection.base_layer.to(torch.bfloat16)
    before = nn.Linear(8, 12)
    x = torch.randn(4, 8)
    trainable = [projection.lora_A, projection.lora_B, before.weight]

    def gradients(fast: bool) -> list[torch.Tensor]:
        hidden = before(x)
        base = projection.base_layer
        if fast:
            out = adapted_linear(hidden, base.weight, base.bias, [projection.update()], gelu_first=True)
            assert out.dtype == torch.bfloat16
        else:  # autograd in float32 on the same (bf16-rounded) inputs and weights
            inputs = gelu(hidden.bfloat16().float())
            out = F.linear(inputs, base.weight.float(), base.bias.float()) + projection.scale * (inputs @ projection.lora_A) @ projection.lora_B
        return list(torch.autograd.grad(out.float().square().sum(), trainable))

    for mine, reference, parameter in zip(gradients(True), gradients(False), trainable, strict=True):
        assert mine.dtype == parameter.dtype == torch.float32
        assert torch.allclose(mine, reference, rtol=0.03, atol=0.03 * reference.abs().max().item())


@pytest.mark.parametrize("rows", [1, 20, 130])
def test_the_gelu_epilogue_equals_gelu_of_the_product(rows):
    torch.manual_seed(0)
    x, weight, bias = torch.randn(rows, 48) * 2, torch.randn(192, 48) * 0.3, torch.randn(192)
    assert torch.allclose(gelu_of_frozen(x.view(1, rows, 48), weight, bias), gelu(F.linear(x, weight, bias)).view(1, rows, 192), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not product_path().gelu_epilogue, reason="oneDNN's GELU epilogue serves fp32 products on x86 CPUs only")
def test_the_mlp_runs_its_gelu_inside_the_product_when_nothing_trains():
    torch.manual_seed(0)
    mlp = MLP(TINY).requires_grad_(False)
    mlp.c_proj = LoRALinear(mlp.c_proj, rank=3, scale=1.7)
    randomise_lora(mlp, 0.5)
    x = torch.randn(2, 70, TINY.n_embd)
    with torch.no_grad():
        ops = _ops(lambda: mlp(x))
        answer = mlp(x)
    assert "mkldnn::_linear_pointwise" in ops and "aten::gelu" not in ops
    tracked = mlp(x.clone().requires_grad_())  # the training path: its own GELU pass, kept for backward
    assert torch.allclose(answer, tracked.detach(), rtol=1e-5, atol=1e-5)
    mlp.c_fc = LoRALinear(mlp.c_fc, rank=2, scale=1.0)  # an update before the GELU: it cannot ride in the product
    randomise_lora(mlp, 0.5)
    with torch.no_grad():
        assert "aten::gelu" in _ops(lambda: mlp(x))


@pytest.mark.parametrize("rows", [1, 20, 130])
@pytest.mark.parametrize("with_bias", [True, False])
def test_the_frozen_product_equals_f_linear_in_fp32(rows, with_bias):
    torch.manual_seed(0)
    storage = torch.randn(3 * 48, 40)
    weight = storage[48:].view(96, 40)  # a view into a larger storage, as the fused q/k/v weight is
    bias = torch.randn(96) if with_bias else None
    x = torch.randn(rows, 40)
    assert torch.allclose(frozen_product(x, weight, bias), F.linear(x, weight, bias), rtol=1e-5, atol=1e-5)


def _ops(run) -> set[str]:
    """The operators `run` calls."""
    with torch.profiler.profile() as profile:
        run()
    return {event.key for event in profile.key_averages()}


@pytest.fixture
def fresh_product_path():
    """The frozen-product path decided anew for one test, and again after it."""
    product_path.cache_clear()
    yield
    product_path.cache_clear()


@pytest.mark.skipif(not product_path().onednn, reason="oneDNN serves fp32 products on x86 CPUs only (or LORA_LAB_ONEDNN=0)")
def test_onednn_serves_fp32_and_bf16_takes_f_linear():
    x, weight = torch.randn(5, 8), torch.randn(6, 8)
    assert "mkldnn::_linear_pointwise" in _ops(lambda: frozen_product(x, weight, None))
    in_bf16 = weight.bfloat16()
    assert "mkldnn::_linear_pointwise" not in _ops(lambda: frozen_product(x, in_bf16, None))
    assert frozen_product(x, in_bf16, None).dtype == torch.bfloat16  # the input is cast to W's dtype


def test_inference_takes_the_same_arithmetic_without_autograd():
    torch.manual_seed(0)
    base = _frozen(12, 9, torch.float32)
    updates = [Update(*_pair(12, 2, 3, torch.float32), scale=1.5, start=3)]
    x = torch.randn(4, 12)
    tracked = adapted_linear(x.requires_grad_(), base.weight, base.bias, updates, gelu_first=True)
    with torch.inference_mode():
        untracked = adapted_linear(x, base.weight, base.bias, updates, gelu_first=True)
    assert _adapted_node(tracked) is not None and untracked.grad_fn is None
    assert torch.equal(tracked.detach(), untracked)


def test_a_broken_onednn_product_leaves_every_product_on_f_linear(monkeypatch, fresh_product_path):
    def changed_signature(*args: object) -> torch.Tensor:
        raise RuntimeError("mkldnn::_linear_pointwise() expected at most 5 arguments")  # as a future PyTorch might

    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", changed_signature)
    x, weight, bias = torch.randn(5, 8), torch.randn(6, 8), torch.randn(6)
    assert torch.allclose(frozen_product(x, weight, bias), F.linear(x, weight, bias))
    path = product_path()
    assert not path.onednn and path.describe().startswith("F.linear (")


def test_the_switch_keeps_every_product_on_f_linear(monkeypatch, fresh_product_path):
    monkeypatch.setenv(ONEDNN_SWITCH, "0")
    x, weight = torch.randn(5, 8), torch.randn(6, 8)
    assert not any("mkldnn" in op for op in _ops(lambda: frozen_product(x, weight, None)))
    assert product_path().describe() == f"F.linear (oneDNN switched off by {ONEDNN_SWITCH})"
