"""The anatomy of an adapter: `inspect` against a full SVD of each update read from the adapter file."""

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import TINY, randomise_lora

from engine.adapter import AdapterConfig, read_adapter, save_adapter
from engine.anatomy import ENERGY_SHARE, KIND_WORDS, block_of, effective_rank, inspect_adapter, kind_of, singular_values, summary
from engine.classifier import build_classifier
from engine.cli import main
from engine.config import LoRAConfig
from engine.weights import load_model


@pytest.fixture(scope="module")
def random_adapter(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An adapter on the tiny model with random B matrices (a fresh B is zero, which would hide any mix-up), three classes,
    rank 4 above the head's 3 outputs, and the book's alpha scaling (scale 2, not 1)."""
    lora = LoRAConfig(rank=4, alpha=2.0, scaling="alpha")
    model = build_classifier(load_model(str(tiny_model_dir), torch.device("cpu")), lora, n_classes=3)
    randomise_lora(model, 0.5)
    folder = tmp_path_factory.mktemp("adapter")
    save_adapter(model, folder, AdapterConfig(str(tiny_model_dir), model.cfg, lora, "last_token", "batch", 40, ("a", "b", "c")))
    return folder


def full_update(tensors: dict[str, torch.Tensor], name: str, scale: float) -> torch.Tensor:
    """ΔW in nn.Linear's (out, in) layout, formed in full."""
    return scale * (tensors[f"{name}.lora_A"].double() @ tensors[f"{name}.lora_B"].double()).t()


def test_inspect_agrees_with_an_svd_of_every_update_in_the_adapter_file(random_adapter: Path) -> None:
    config, tensors = read_adapter(random_adapter)
    anatomy = inspect_adapter(random_adapter)
    names = sorted(key.removesuffix(".lora_A") for key in tensors if key.endswith(".lora_A"))
    assert sorted(layer.name for layer in anatomy.layers) == names and len(names) == 6 * TINY.n_layer + 1
    for layer in anatomy.layers:
        delta = full_update(tensors, layer.name, config.lora.scale)
        full = torch.linalg.svdvals(delta).tolist()  # min(out, in) values: beyond the rank they are rounding noise
        rank = config.lora.rank
        expected = (full + [0.0] * rank)[:rank]
        assert layer.singular_values == pytest.approx(expected, rel=1e-9, abs=1e-12 * full[0])
        assert max(full[rank:], default=0.0) < 1e-12 * full[0]
        assert layer.norm == pytest.approx(float(torch.linalg.matrix_norm(delta)), rel=1e-9)
    head = next(layer for layer in anatomy.layers if layer.name == "score")
    assert len(head.singular_values) == 4 and head.singular_values[3] == 0.0  # 3 classes: at most 3 directions


def test_the_size_against_the_frozen_weight_reads_the_base_model(random_adapter: Path, tiny_model_dir: Path) -> None:
    config, tensors = read_adapter(random_adapter)
    base = load_model(str(tiny_model_dir), torch.device("cpu"))
    by_name = {layer.name: layer for layer in inspect_adapter(random_adapter).layers}
    for name in ("transformer.h.1.attn.k_proj", "transformer.h.0.mlp.c_fc", "transformer.h.1.mlp.c_proj"):
        weight = base.get_submodule(name).weight.detach().double()
        assert by_name[name].base_norm == pytest.approx(float(torch.linalg.matrix_norm(weight)), rel=1e-9)
        assert by_name[name].relative == pytest.approx(by_name[name].norm / by_name[name].base_norm)
    head = tensors["score.base_layer.weight"].double()  # the head's frozen weight travels in the adapter
    assert by_name["score"].base_norm == pytest.approx(float(torch.linalg.matrix_norm(head)))
    assert all(layer.relative is None for layer in inspect_adapter(random_adapter, with_base=False).layers if layer.kind != "score")


def test_without_the_base_model_on_this_machine_the_relative_size_is_null(random_adapter: Path) -> None:
    anatomy = inspect_adapter(random_adapter, model="gpt2-xl")  # not in the offline test cache: never downloaded
    assert [layer.base_norm for layer in anatomy.layers if layer.kind != "score"] == [None] * (len(anatomy.layers) - 1)


def test_effective_rank_counts_the_directions_holding_ninety_percent() -> None:
    assert ENERGY_SHARE == 0.9
    assert effective_rank([3.0, 1.0, 0.1, 0.0]) == 2  # 9 / 10.01 is just under 90 %: the second direction is needed
    assert effective_rank([3.0, 0.9, 0.1]) == 1  # 9 / 9.82 is over 90 %
    assert effective_rank([1.0, 1.0, 1.0, 1.0]) == 4
    assert effective_rank([0.0, 0.0]) == 0


def test_singular_values_of_a_known_update() -> None:
    """A = U·diag(s), B = Vᵀ with orthonormal U, V: scale·A·B has singular values scale·s."""
    generator = torch.Generator().manual_seed(1)
    u, _ = torch.linalg.qr(torch.randn(20, 3, generator=generator, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(30, 3, generator=generator, dtype=torch.float64))
    values = singular_values(u * torch.tensor([4.0, 2.0, 0.5], dtype=torch.float64), v.t(), scale=-0.5)
    assert values == pytest.approx([2.0, 1.0, 0.25])


def test_layers_are_named_by_kind_and_block() -> None:
    assert [KIND_WORDS[kind_of(n)] for n in ("transformer.h.3.attn.q_proj", "transformer.h.0.mlp.c_proj", "transformer.h.11.attn.c_proj", "score")] == [
        "q",
        "MLP out",
        "attention out",
        "head",
    ]
    assert [block_of(n) for n in ("transformer.h.11.mlp.c_fc", "score")] == [11, None]


def test_the_sentence_says_the_rank_the_directions_used_and_the_largest_update(random_adapter: Path) -> None:
    anatomy = inspect_adapter(random_adapter)
    used = sorted(layer.effective_rank for layer in anatomy.layers)
    sentence = summary(anatomy)
    assert sentence.startswith("rank 4, but most layers use ")
    assert f"use {used[len(used) // 4]}" in sentence
    biggest = max(anatomy.layers, key=lambda layer: layer.relative)
    assert f"the largest update is in block {biggest.block} ({biggest.kind_words}), {100 * biggest.relative:.1f}% of its frozen weight." in sentence


def test_inspect_command_prints_the_layers_as_json(random_adapter: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "--adapter", str(random_adapter), "--json"]) == 0
    data = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    _, tensors = read_adapter(random_adapter)
    layer = next(item for item in data["layers"] if item["name"] == "transformer.h.1.attn.v_proj")
    assert {"name", "norm", "singular_values", "effective_rank", "relative", "kind", "block"} <= set(layer)
    assert layer["singular_values"] == pytest.approx(torch.linalg.svdvals(full_update(tensors, layer["name"], 2.0))[:4].tolist())
    assert data["rank"] == 4 and data["summary"].startswith("rank 4")
    assert main(["inspect", "--adapter", str(random_adapter)]) == 0
    text = capsys.readouterr().out
    assert "rank 4, but" in text and "transformer.h.1.attn.v_proj" in text


def test_inspect_refuses_a_folder_without_an_adapter(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "--adapter", str(tmp_path)]) == 2
    assert "no adapter at" in capsys.readouterr().err


def test_a_zero_update_says_nothing_was_learned(tiny_model_dir: Path, tmp_path: Path) -> None:
    lora = LoRAConfig(rank=2, alpha=2.0)
    model = build_classifier(load_model(str(tiny_model_dir), torch.device("cpu")), lora)
    save_adapter(model, tmp_path, AdapterConfig(str(tiny_model_dir), model.cfg, lora, "last_token", "batch", 40))
    anatomy = inspect_adapter(tmp_path)
    assert all(layer.norm == 0 and layer.effective_rank == 0 and not math.isnan(layer.relative) for layer in anatomy.layers)
    assert "nothing has been learned yet" in summary(anatomy)


def test_a_run_records_its_adapters_growth_at_each_estimate_and_as_saved(trained_run: tuple) -> None:
    cfg, events = trained_run
    saved = events[-1]
    record = json.loads(saved.record.read_text())
    estimates = [point["step"] + 1 for point in record["losses"]]  # steps taken at each estimate
    steps = [point["steps"] for point in record["anatomy"]]
    assert steps == [*estimates, record["steps"]] and estimates[-1] < record["steps"]  # the last point is the saved adapter
    final = record["anatomy"][-1]["layers"]
    for layer in inspect_adapter(saved.adapter_dir).layers:
        assert final[layer.name]["norm"] == pytest.approx(layer.norm, rel=1e-4)
        assert final[layer.name]["top"] == pytest.approx(layer.singular_values[:4], rel=1e-4, abs=1e-9)
        assert final[layer.name]["effective_rank"] == layer.effective_rank
        assert final[layer.name]["relative"] == pytest.approx(layer.relative, rel=1e-4)
    first = record["anatomy"][0]["layers"]
    assert sum(v["norm"] for v in first.values()) < sum(v["norm"] for v in final.values())  # 1 step against 40
