"""Fine-tuning methods besides LoRA: the last block (the book's chapter 6) and full fine-tuning.

What each trains and counts, what it saves and loads back, and what it refuses (LoRA-only export and anatomy)."""

import json
from dataclasses import replace

import pytest
import torch
from conftest import changed_adapter

from engine.adapter import AdapterConfig, read_adapter, save_adapter
from engine.anatomy import inspect_adapter
from engine.classifier import Classifier, build_classifier
from engine.cli import main
from engine.config import BASELINE_METHOD, LoRAConfig, RunConfig
from engine.errors import AdapterError, ConfigError
from engine.export import export_adapter
from engine.params import param_breakdown, param_summary
from engine.runs.run import fine_tune
from engine.weights import load_model

D = 768  # gpt2-small's width
BLOCK = 12 * D * D + 13 * D  # one GPT-2 block: attention 4d²+4d, MLP 8d²+5d, two layer norms 4d
HEAD = 2 * D + 2


@pytest.mark.parametrize(
    ("method", "trainable", "megabytes"),
    [("lora", 2_666_528, 10.67), ("last-block", BLOCK + 2 * D + HEAD, 28.36), ("full", 124_441_346, 497.77)],
)
def test_each_method_counts_what_it_trains_and_saves(method, trainable, megabytes):
    summary = param_summary("gpt2-small", LoRAConfig(), method)
    assert summary.total_before_freeze == 124_441_346  # the book's figure, whatever trains
    assert summary.trainable == trainable and summary.adapter_megabytes == megabytes
    assert summary.trainable_lora == (trainable if method == "lora" else 0)
    rows = param_breakdown("gpt2-small", LoRAConfig(), method=method)
    assert sum(row.lora + row.trained_as_is for row in rows) == trainable
    assert sum(row.frozen + row.trained_as_is for row in rows) == 124_441_346


def trained_names(method: str, n_layer: int, names: list[str]) -> set[str]:
    """What the method trains, said independently of the engine: the last block, final norm and head, or everything."""
    if method == "full":
        return set(names)
    return {n for n in names if n.startswith((f"transformer.h.{n_layer - 1}.", "transformer.ln_f.", "score."))}


@pytest.mark.parametrize("method", ["last-block", "full"])
def test_what_a_method_trains_is_saved_and_loads_back_for_classifying(method, tiny_model_dir, tmp_path):
    model = build_classifier(load_model(str(tiny_model_dir), torch.device("cpu")), LoRAConfig(), method=method)
    names = [name for name, _ in model.named_parameters()]
    assert {name for name, p in model.named_parameters() if p.requires_grad} == trained_names(method, model.cfg.n_layer, names)
    assert not any("lora_" in name for name in names)
    with torch.no_grad():  # stands in for training: every trained weight moves
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn_like(parameter) * 0.05)
    config = AdapterConfig(str(tiny_model_dir), model.cfg, LoRAConfig(), "last_token", "batch", 64, method=method)
    save_adapter(model, tmp_path / "adapter", config)
    saved, tensors = read_adapter(tmp_path / "adapter")
    assert saved.method == method and set(tensors) == trained_names(method, model.cfg.n_layer, names)

    classifier = Classifier.load(tmp_path / "adapter", torch.device("cpu"))
    expected = model.state_dict()
    assert all(torch.equal(classifier.model.state_dict()[name], expected[name]) for name in expected)  # trained and frozen weights alike
    ids = torch.tensor([[15496, 995, 318, 257]])
    assert torch.allclose(classifier.model(ids), model.eval()(ids), atol=1e-5)
    before, after = classifier.compare_with_base("Free prize, call now")
    assert before is None and set(after.probabilities) == {"ham", "spam"}  # no untouched model is left to ask

    with pytest.raises(AdapterError, match="no LoRA adapter"):
        inspect_adapter(tmp_path / "adapter")
    with pytest.raises(AdapterError, match="LoRA adapters only"):
        export_adapter(tmp_path / "adapter", tmp_path / "export", "transformers")
    assert not (tmp_path / "export").exists()


def test_a_last_block_file_holding_other_weights_is_refused(tiny_model_dir, tmp_path):
    model = build_classifier(load_model(str(tiny_model_dir), torch.device("cpu")), LoRAConfig(), method="last-block")
    save_adapter(model, tmp_path / "adapter", AdapterConfig(str(tiny_model_dir), model.cfg, LoRAConfig(), "last_token", "batch", 64, method="last-block"))
    first_block = "transformer.h.0.mlp.c_fc.weight"
    copy = lambda name, change: changed_adapter(tmp_path / "adapter", tmp_path / name / "adapter.safetensors", change)
    extra = copy("extra", lambda _, t: t.update({first_block: model.state_dict()[first_block]}))
    with pytest.raises(AdapterError, match=f"{first_block} is not a weight that last-block training changes"):
        read_adapter(extra)
    resized = copy("resized", lambda _, t: t.update({"transformer.ln_f.weight": torch.ones(7)}))
    with pytest.raises(AdapterError, match="ln_f.weight is declared"):
        read_adapter(resized)
    unknown = copy("unknown", lambda config, _: config.update(method="half"))
    with pytest.raises(AdapterError, match="method 'half'"):
        read_adapter(unknown)


def test_adapters_saved_before_methods_read_as_lora(tiny_model_dir, tmp_path):
    model = build_classifier(load_model(str(tiny_model_dir), torch.device("cpu")), LoRAConfig(rank=2))
    save_adapter(model, tmp_path, AdapterConfig(str(tiny_model_dir), model.cfg, LoRAConfig(rank=2), "last_token", "batch", 64))
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["method"] == "lora"
    del config["method"]
    assert AdapterConfig.from_dict(config).method == "lora"


def test_method_is_validated_and_the_baseline_is_not_trained(tiny_model_dir, prepared_data, tmp_path):
    with pytest.raises(ConfigError, match="method must be one of lora, last-block, full, got 'half'"):
        RunConfig(method="half")
    assert RunConfig.from_preset("book").method == "lora"  # the book's appendix E stays LoRA
    cfg = RunConfig(model=str(tiny_model_dir), data=str(prepared_data), out_dir=str(tmp_path / "run"), device="cpu", method=BASELINE_METHOD)
    with pytest.raises(ConfigError, match="python -m engine baseline"):
        list(fine_tune(cfg))
    assert not (tmp_path / "run").exists()  # refused before anything was written
    with pytest.raises(SystemExit):
        main(["train", "--method", "half"])


@pytest.mark.slow
def test_train_last_block_trains_only_the_last_block_and_classifies(capsys, tiny_model_dir, prepared_data, tmp_path):
    argv = ["--model", str(tiny_model_dir), "--data", str(prepared_data), "--max-steps", "4", "--eval-freq", "2", "--lr", "1e-3"]
    assert main(["train", *argv, "--method", "last-block", "--out", str(tmp_path / "run"), "--device", "cpu", "--no-live-metrics", "--json"]) == 0
    trained = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["config"]["method"] == "last-block" and record["state"] == "done"
    assert record["trainable"] == trained["trainable"] == param_summary(str(tiny_model_dir), LoRAConfig(), "last-block").trainable
    assert record["anatomy"] == []  # no LoRA, no adapter anatomy
    assert "--method last-block" in record["reproduce"]["command"]
    _, tensors = read_adapter(tmp_path / "run" / "adapter")
    base = load_model(str(tiny_model_dir), torch.device("cpu")).state_dict()
    last = f"transformer.h.{len([k for k in base if k.endswith('ln_1.weight')]) - 1}.mlp.c_fc.weight"
    assert not torch.equal(tensors[last], base[last])  # trained
    assert "transformer.h.0.mlp.c_fc.weight" not in tensors
    classifier = Classifier.load(tmp_path / "run" / "adapter", torch.device("cpu"))
    assert torch.equal(classifier.model.state_dict()["transformer.h.0.mlp.c_fc.weight"], base["transformer.h.0.mlp.c_fc.weight"])  # frozen
    assert classifier.classify("WINNER! Claim your prize")[0].label in ("ham", "spam")


def test_run_config_round_trips_its_method():
    cfg = replace(RunConfig(), method="full")
    assert RunConfig.from_dict(cfg.to_dict()).method == "full"
