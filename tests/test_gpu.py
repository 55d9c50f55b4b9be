"""On a GPU: a training step under the engine's autocast, merged classification, int8 refused.

Collected everywhere and skipped without the device; on a machine with one, `pytest -m cuda` (or
`-m mps`) runs them. They compare the GPU with fp32 arithmetic on the same model, so they need no
weights and no data.
"""

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY, randomise_lora, write_hf_checkpoint

from engine.adapter import AdapterConfig, save_adapter
from engine.classifier import Classifier, build_classifier
from engine.config import LoRAConfig
from engine.errors import InputError
from engine.loaders import collate
from engine.model import GPT, read_positions
from engine.tokenizer import encode
from engine.train import autocast
from engine.weights import load_model

GPUS = [
    pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")]),
    pytest.param("mps", marks=[pytest.mark.mps, pytest.mark.skipif(not torch.backends.mps.is_available(), reason="no Apple MPS here")]),
]
LORA = LoRAConfig(rank=2, alpha=4)
MESSAGES = [[15496, 995, 0, 1374], [40, 1101, 257, 1263, 3276, 13, 4222, 1492, 329, 514, 11, 1312, 1183]]  # two token lists, unequal


def tiny_classifier() -> GPT:
    """A tiny LoRA classifier whose B matrices are random (a fresh B is zero and hides A's gradient)."""
    torch.manual_seed(0)
    model = build_classifier(GPT(TINY), LORA)
    torch.manual_seed(1)
    randomise_lora(model, 0.1)
    return model


def step_gradients(model: GPT, device: torch.device, mixed: bool) -> tuple[float, dict[str, torch.Tensor], torch.dtype]:
    """The loss, LoRA gradients and logits' dtype of one training step on MESSAGES, as the engine's training loop computes them."""
    batch = collate([(ids, label) for ids, label in zip(MESSAGES, (1, 0), strict=True)]).to(device)
    model.zero_grad()
    with autocast(device, mixed):
        logits = model(batch.input_ids, read_positions(batch.lengths, batch.input_ids.size(1), "last_token"))
    loss = F.cross_entropy(logits.float(), batch.labels)
    loss.backward()
    return loss.item(), {name: p.grad.float().cpu() for name, p in model.named_parameters() if p.requires_grad}, logits.dtype


@pytest.mark.parametrize("device", GPUS)
def test_one_training_step_matches_fp32(device: str) -> None:
    """CUDA trains under bf16 autocast (where the GPU has bf16), MPS in fp32: either way, the step's
    loss and gradients are the CPU's fp32 ones, up to bf16's 8-bit mantissa."""
    reference_loss, reference, _ = step_gradients(tiny_classifier(), torch.device("cpu"), mixed=False)
    gpu = torch.device(device)
    loss, gradients, dtype = step_gradients(tiny_classifier().to(gpu), gpu, mixed=True)
    assert dtype == (torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32)
    assert loss == pytest.approx(reference_loss, rel=2e-2, abs=2e-2)
    assert set(gradients) == set(reference)
    for name, gradient in gradients.items():
        assert torch.isfinite(gradient).all(), name
        assert F.cosine_similarity(gradient.flatten(), reference[name].flatten(), dim=0) > 0.95, name


def saved_adapter(folder) -> tuple[GPT, str]:
    """A tiny base checkpoint and an adapter on it with random B matrices: (the unmerged model, the adapter folder)."""
    base = write_hf_checkpoint(folder / "base")
    model = build_classifier(load_model(str(base), torch.device("cpu")), LORA)
    torch.manual_seed(1)
    randomise_lora(model, 0.1)
    adapter = folder / "adapter"
    save_adapter(model, adapter, AdapterConfig(str(base), model.cfg, LORA, "last_token", "batch", TINY.context_length))
    return model, str(adapter)


@pytest.mark.parametrize("device", GPUS)
def test_merged_classification_agrees_with_the_unmerged_model(device: str, tmp_path) -> None:
    gpu = torch.device(device)
    unmerged, adapter = saved_adapter(tmp_path)
    unmerged = unmerged.to(gpu).eval()
    texts = ["WIN a brand new car, text CLAIM to 80086", "see you at the station at 6"]
    batch = collate([(encode(text), 0) for text in texts]).to(gpu)
    with torch.inference_mode():
        logits = unmerged(batch.input_ids, read_positions(batch.lengths, batch.input_ids.size(1), "last_token"))
    expected = torch.softmax(logits.float(), dim=-1).cpu()
    classifier = Classifier.load(adapter, gpu)  # LoRA merged into the base weights
    on_cpu = Classifier.load(adapter, torch.device("cpu"))
    for row, on_gpu, cpu in zip(expected, classifier.classify(texts), on_cpu.classify(texts), strict=True):
        assert on_gpu.probabilities == pytest.approx(dict(zip(classifier.config.labels, row.tolist(), strict=True)), abs=1e-4)
        assert on_gpu.label == cpu.label and on_gpu.probabilities == pytest.approx(cpu.probabilities, abs=1e-4)


@pytest.mark.parametrize("device", GPUS)
def test_int8_is_refused_on_a_gpu_with_what_to_do(device: str, tmp_path) -> None:
    _, adapter = saved_adapter(tmp_path)
    with pytest.raises(InputError, match="int8 classification runs on the CPU only: use --device cpu or drop int8"):
        Classifier.load(adapter, torch.device(device), int8=True)
