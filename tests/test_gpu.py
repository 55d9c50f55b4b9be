"""On a GPU: a training step and whole runs in each precision against fp32 on the CPU, merged
classification, int8 refused; the GPU's own path (fused AdamW, pinned batches, TF32).

Collected everywhere and skipped without the device; on a machine with one, `pytest -m cuda` (or
`-m mps`) runs them, and `scripts/gpu_check.sh` runs them with the benchmark. They compare the GPU
with the CPU's fp32 arithmetic on the same model, so they need no weights and no data beyond the
shipped SMS zip. Every batch here has 64 rows or more, so q, k and v take the fused product
(engine.model.FUSE_MIN_ROWS) as real training does.
"""

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY, randomise_lora, write_hf_checkpoint

from engine.adapter import AdapterConfig, save_adapter
from engine.classifier import Classifier, build_classifier
from engine.config import LoRAConfig, RunConfig
from engine.device import dtype_of, precision_for
from engine.errors import InputError
from engine.loaders import collate
from engine.model import FUSE_MIN_ROWS, GPT, read_positions
from engine.runs.run import fine_tune
from engine.tokenizer import encode
from engine.train import LossEvaluated, StepDone, make_optimizer
from engine.weights import load_model

GPUS = [
    pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")]),
    pytest.param("mps", marks=[pytest.mark.mps, pytest.mark.skipif(not torch.backends.mps.is_available(), reason="no Apple MPS here")]),
]
CUDA = GPUS[:1]
LORA = LoRAConfig(rank=2, alpha=4)
# Four unequal messages padded to the longest: 4 x 40 = 160 rows, above FUSE_MIN_ROWS.
MESSAGES = [list(range(1000 + 37 * i, 1000 + 37 * i + n)) for i, n in enumerate((40, 31, 17, 9))]


def tiny_classifier() -> GPT:
    """A tiny LoRA classifier whose B matrices are random (a fresh B is zero and hides A's gradient)."""
    torch.manual_seed(0)
    model = build_classifier(GPT(TINY), LORA)
    torch.manual_seed(1)
    randomise_lora(model, 0.1)
    return model


def step_gradients(model: GPT, device: torch.device) -> tuple[float, dict[str, torch.Tensor]]:
    """The loss and LoRA gradients of one training step on MESSAGES, as the training loop computes them."""
    batch = collate([(ids, i % 2) for i, ids in enumerate(MESSAGES)]).to(device)
    assert batch.input_ids.numel() >= FUSE_MIN_ROWS
    model.zero_grad()
    logits = model(batch.input_ids, read_positions(batch.lengths, batch.input_ids.size(1), "last_token"))
    loss = F.cross_entropy(logits.float(), batch.labels)
    loss.backward()
    return loss.item(), {name: p.grad.float().cpu() for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("precision", ["auto", "fp32"])
@pytest.mark.parametrize("device", GPUS)
def test_one_training_step_matches_fp32_on_the_cpu(device: str, precision: str) -> None:
    """The GPU's step (its frozen base in bf16 where it has it, TF32 products in fp32) gives the CPU's
    fp32 loss and gradients, up to bf16's 8-bit mantissa; LoRA's gradients come back in float32."""
    reference_loss, reference = step_gradients(tiny_classifier(), torch.device("cpu"))
    gpu = torch.device(device)
    chosen = precision_for(precision, gpu)
    model = tiny_classifier()
    model.store_products_in(dtype_of(chosen))
    loss, gradients = step_gradients(model.to(gpu), gpu)
    assert model.products_dtype() == (torch.bfloat16 if chosen == "bf16" else torch.float32)
    assert loss == pytest.approx(reference_loss, rel=2e-2, abs=2e-2)
    assert set(gradients) == set(reference)
    for name, gradient in gradients.items():
        assert torch.isfinite(gradient).all(), name
        assert F.cosine_similarity(gradient.flatten(), reference[name].flatten(), dim=0) > 0.95, name
    assert all(p.grad.dtype == torch.float32 for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("device", CUDA)
def test_cuda_training_takes_fused_adamw_and_pinned_batches(device: str, tiny_model_dir, prepared_data, tmp_path) -> None:
    from engine.data.prepared import prepare
    from engine.loaders import make_loaders

    model = build_classifier(load_model(str(tiny_model_dir), torch.device(device)), LORA)
    _, fused = make_optimizer([p for p in model.parameters() if p.requires_grad], RunConfig().train)
    assert fused
    loaders = make_loaders(prepare(str(prepared_data)).splits, RunConfig().train, TINY.context_length, pin_memory=True)
    assert next(iter(loaders.train)).input_ids.is_pinned()


def run_events(model_dir, data_dir, out, preset: str, device: str, precision: str | None) -> list:
    cfg = RunConfig.from_preset(preset, model=str(model_dir), data=str(data_dir), out_dir=str(out), device=device)
    changes = {"epochs": 1, "max_steps": 12, "eval_freq": 6, "lr": 3e-3}
    return list(fine_tune(cfg.with_train(**changes, **({"precision": precision} if precision else {}))))


@pytest.mark.parametrize("preset", ["book", "recommended"])
@pytest.mark.parametrize("device", CUDA)
def test_fine_tune_end_to_end_on_cuda_against_the_cpu(device: str, preset: str, tiny_model_dir, prepared_data, tmp_path) -> None:
    """Whole runs, each preset in its own precision (book: fp32 with TF32; recommended: bf16 where the
    GPU has it) and recommended in fp32 too, against the same runs on the CPU in fp32."""
    on_cpu = run_events(tiny_model_dir, prepared_data, tmp_path / "cpu", preset, "cpu", "fp32")
    estimates = lambda events: [e.validation_loss for e in events if isinstance(e, LossEvaluated)]
    losses = lambda events: [e.loss for e in events if isinstance(e, StepDone)]
    for precision in (None, "fp32") if preset == "recommended" else (None,):
        events = run_events(tiny_model_dir, prepared_data, tmp_path / f"{device}-{precision}", preset, device, precision)
        record = json.loads(events[-1].record.read_text())
        expected = "fp32" if preset == "book" or precision == "fp32" else precision_for("auto", torch.device(device))
        assert record["precision"] == expected and record["device"].startswith("cuda") and not record["stopped"]
        assert [e.step for e in events if isinstance(e, StepDone)] == list(range(1, 13))
        tolerance = 5e-2 if expected == "bf16" else 1e-2  # TF32 keeps 10 bits of mantissa, bf16 8
        assert losses(events)[0] == pytest.approx(losses(on_cpu)[0], rel=tolerance)
        assert estimates(events) == pytest.approx(estimates(on_cpu), rel=2 * tolerance)
        assert record["final"]["test"]["accuracy"] == pytest.approx(json.loads(on_cpu[-1].record.read_text())["final"]["test"]["accuracy"], abs=0.1)


def saved_adapter(folder) -> tuple[GPT, str]:
    """A tiny base checkpoint and an adapter on it with random B matrices: (the unmerged model, the adapter folder)."""
    base = write_hf_checkpoint(folder / "base")
    model = build_classifier(load_model(str(base), torch.device("cpu")), LORA)
    torch.manual_seed(1)
    randomise_lora(model, 0.1)
    adapter = folder / "adapter"
    save_adapter(model, adapter, AdapterConfig(str(base), model.cfg, LORA, "last_token", "batch", TINY.context_length))
    return model, str(adapter)


@pytest.mark.parametrize("precision", ["fp32", "auto"])
@pytest.mark.parametrize("device", GPUS)
def test_merged_classification_agrees_with_the_unmerged_model(device: str, precision: str, tmp_path) -> None:
    gpu = torch.device(device)
    unmerged, adapter = saved_adapter(tmp_path)
    texts = ["WIN a brand new car, text CLAIM to 80086 " * 4, "see you at the station at 6, bring the tickets and the umbrella " * 3]
    batch = collate([(encode(text), 0) for text in texts])
    assert batch.input_ids.numel() >= FUSE_MIN_ROWS
    with torch.inference_mode():
        logits = unmerged.eval()(batch.input_ids, read_positions(batch.lengths, batch.input_ids.size(1), "last_token"))
    expected = torch.softmax(logits.float(), dim=-1)
    classifier = Classifier.load(adapter, gpu, precision=precision)  # LoRA merged into the base weights
    tolerance = 3e-2 if classifier.precision == "bf16" else 3e-3  # bf16's 8 bits, TF32's 10
    for row, answer in zip(expected, classifier.classify(texts), strict=True):
        assert answer.probabilities == pytest.approx(dict(zip(classifier.config.labels, row.tolist(), strict=True)), abs=tolerance)


@pytest.mark.parametrize("device", GPUS)
def test_int8_is_refused_on_a_gpu_with_what_to_do(device: str, tmp_path) -> None:
    _, adapter = saved_adapter(tmp_path)
    with pytest.raises(InputError, match="int8 classification runs on the CPU only: use --device cpu or drop int8"):
        Classifier.load(adapter, torch.device(device), int8=True)


def test_the_gpu_runs_take_the_fused_product(prepared_data) -> None:
    """What the CUDA runs above read, checked on any machine: the book's batches all reach FUSE_MIN_ROWS rows
    (padded to the longest message), and most of recommended's (each padded to its own longest)."""
    from engine.config import preset
    from engine.data.prepared import prepare
    from engine.loaders import make_loaders

    splits = prepare(str(prepared_data)).splits
    batches = {name: list(make_loaders(splits, preset(name).train, TINY.context_length).train)[:12] for name in ("book", "recommended")}
    rows = {name: [b.input_ids.numel() for b in chosen] for name, chosen in batches.items()}
    assert min(rows["book"]) >= FUSE_MIN_ROWS
    assert sum(n >= FUSE_MIN_ROWS for n in rows["recommended"]) > len(rows["recommended"]) / 2
