import pytest
import torch
import torch.nn.functional as F
from torch import nn

from engine.adapted_linear import ONEDNN_SWITCH, Update, _gelu_untracked, adapted_linear, frozen_product, gelu, product_path
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


@pytest.mark.parametrize("rows", [1, 5, 85, 300])  # whole chunks, a partial last chunk, fewer rows than a chunk
def test_the_untracked_cpu_gelu_matches_pytorchs(rows):
    torch.manual_seed(0)
    x = torch.randn(rows, 3072) * 4
    assert torch.allclose(_gelu_untracked(x), gelu(x), rtol=1e-6, atol=1e-6)
    as_3d = x.view(1, rows, 3072)
    assert torch.equal(_gelu_untracked(as_3d), _gelu_untracked(x).view(1, rows, 3072))
    strided = x.t()  # not contiguous: read through a copy, answered in the input's shape
    assert torch.allclose(_gelu_untracked(strided), gelu(strided), rtol=1e-6, atol=1e-6)
    half = x.bfloat16()
    assert torch.equal(_gelu_untracked(half), gelu(half))  # bf16 takes PyTorch's one-pass kernel


def test_bf16_autocast_gives_autograds_gradients():
    # Training on CUDA runs under bf16 autocast, which reaches forward but not a custom backward.
    torch.manual_seed(0)
    projection = LoRALinear(_frozen(12, 5, torch.float32), rank=3, scale=1.7)
    randomise_lora(projection, 0.5)
    before = nn.Linear(8, 12)
    x = torch.randn(4, 8)
    trainable = [projection.lora_A, projection.lora_B, before.weight]

    def gradients(fast: bool) -> list[torch.Tensor]:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            hidden = before(x)
            if fast:
                out = adapted_linear(hidden, projection.base_layer.weight, projection.base_layer.bias, [projection.update()], gelu_first=True)
            else:
                inputs = gelu(hidden)
                out = projection.base_layer(inputs) + projection.scale * (inputs @ projection.lora_A) @ projection.lora_B
        assert out.dtype == torch.bfloat16
        return list(torch.autograd.grad(out.float().square().sum(), trainable))

    for mine, reference in zip(gradients(True), gradients(False), strict=True):
        assert mine.dtype == torch.float32
        assert torch.allclose(mine, reference, rtol=0.02, atol=0.02 * reference.abs().max().item())


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
def test_onednn_serves_fp32_but_not_autocast():
    x, weight = torch.randn(5, 8), torch.randn(6, 8)
    assert "mkldnn::_linear_pointwise" in _ops(lambda: frozen_product(x, weight, None))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert frozen_product(x, weight, None).dtype == torch.bfloat16  # autocast's F.linear, not oneDNN's fp32


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
