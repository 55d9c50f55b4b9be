import pytest
import torch
from torch import nn

from engine.gelu_linear import _GeluLoRALinear, gelu, gelu_then_project
from engine.lora import LoRALinear


def _projection(adapted: bool) -> nn.Module:
    torch.manual_seed(0)
    base = nn.Linear(12, 5).double().requires_grad_(False)
    if not adapted:
        return base
    layer = LoRALinear(base, rank=3, scale=1.7)
    with torch.no_grad():
        layer.lora_B.normal_(0, 0.5)  # a fresh B is zero, which would hide mistakes in A's gradient
    return layer


@pytest.mark.parametrize("adapted", [True, False])
def test_outputs_and_gradients_equal_autograds_plain_path(adapted):
    projection = _projection(adapted)
    hidden = torch.randn(2, 7, 12, dtype=torch.float64, requires_grad=True)
    trainable = [hidden, *(p for p in projection.parameters() if p.requires_grad)]
    weights = torch.randn(2, 7, 5, dtype=torch.float64)

    fast = gelu_then_project(hidden, projection)
    fast_grads = torch.autograd.grad((fast * weights).sum(), trainable)
    plain = projection(gelu(hidden))
    plain_grads = torch.autograd.grad((plain * weights).sum(), trainable)

    assert fast.grad_fn.name().endswith("_GeluLoRALinearBackward")  # the saving path really ran
    assert torch.allclose(fast, plain, atol=1e-12)
    assert len(fast_grads) == (3 if adapted else 1)  # hidden, then A and B when adapted
    for mine, reference in zip(fast_grads, plain_grads, strict=True):
        assert torch.allclose(mine, reference, atol=1e-10)


def test_gradcheck_with_every_input_trainable_but_the_frozen_weight():
    torch.manual_seed(1)
    hidden = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    weight, bias = torch.randn(3, 6, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    lora_a = torch.randn(6, 2, dtype=torch.float64, requires_grad=True)
    lora_b = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda h, a, b: _GeluLoRALinear.apply(h, weight, bias, a, b, 0.8), (hidden, lora_a, lora_b))


def test_only_the_gelu_input_is_kept_for_backward():
    projection = _projection(adapted=True)
    hidden = torch.randn(3, 12, dtype=torch.float64, requires_grad=True)
    out = gelu_then_project(hidden, projection)
    kept = {t.data_ptr() for t in out.grad_fn.saved_tensors if t is not None}
    big = [t for t in out.grad_fn.saved_tensors if t is not None and t.shape == hidden.shape]
    assert len(big) == 1 and big[0].data_ptr() == hidden.data_ptr()
    assert projection.base_layer.weight.data_ptr() in kept  # a reference, not a copy


def test_trainable_or_inference_projections_take_the_plain_path():
    trainable = nn.Linear(12, 5).double()
    hidden = torch.randn(3, 12, dtype=torch.float64, requires_grad=True)
    out = gelu_then_project(hidden, trainable)
    assert "GeluLoRALinear" not in out.grad_fn.name()
    out.sum().backward()
    assert trainable.weight.grad is not None
    with torch.no_grad():
        assert torch.allclose(gelu_then_project(hidden, trainable), trainable(gelu(hidden)))


def test_bf16_autocast_gives_autograds_gradients():
    # Training on CUDA runs under bf16 autocast, which reaches forward but not a custom backward.
    torch.manual_seed(0)
    projection = LoRALinear(nn.Linear(12, 5).requires_grad_(False), rank=3, scale=1.7)
    with torch.no_grad():
        projection.lora_B.normal_(0, 0.5)
    before = nn.Linear(8, 12)
    x = torch.randn(4, 8)
    trainable = [projection.lora_A, projection.lora_B, before.weight]

    def gradients(fast: bool) -> list[torch.Tensor]:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            hidden = before(x)
            out = gelu_then_project(hidden, projection) if fast else projection(gelu(hidden))
        assert out.dtype == torch.bfloat16
        return list(torch.autograd.grad(out.float().square().sum(), trainable))

    for mine, reference in zip(gradients(True), gradients(False), strict=True):
        assert mine.dtype == torch.float32
        assert torch.allclose(mine, reference, rtol=0.02, atol=0.02 * reference.abs().max().item())
