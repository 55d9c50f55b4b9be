import json

import pytest
import torch
from conftest import TINY, changed_adapter, write_hf_checkpoint
from safetensors.torch import save_file

from engine.adapter import CONFIG_FILE, TENSORS_FILE, AdapterConfig, read_adapter
from engine.classifier import Classifier
from engine.errors import AdapterError


def test_round_trip_gives_identical_predictions(trained_run, adapter_dir):
    cfg, _ = trained_run
    first = Classifier.load(adapter_dir, torch.device("cpu"))
    second = Classifier.load(adapter_dir, torch.device("cpu"), model=cfg.model)
    messages = ["WINNER!! Claim your free prize now, call 09061701461", "Are we still on for lunch?"]
    assert [p.probabilities for p in first.classify(messages)] == [p.probabilities for p in second.classify(messages)]


def test_adapter_holds_only_lora_and_head(adapter_dir):
    config, tensors = read_adapter(adapter_dir)
    assert all("lora_" in k or k.startswith("score.") for k in tensors)
    assert {"score.base_layer.weight", "score.base_layer.bias", "score.lora_A", "score.lora_B"} <= set(tensors)
    assert config.lora.rank == 16 and config.pooling == "last_token" and config.labels == ("ham", "spam")
    assert AdapterConfig.from_dict(json.loads((adapter_dir / CONFIG_FILE).read_text())) == config


def test_adapter_for_another_base_is_refused(adapter_dir, tmp_path):
    other = write_hf_checkpoint(tmp_path / "wider", TINY.__class__("wider", context_length=256, n_embd=64, n_layer=2, n_head=4))
    with pytest.raises(AdapterError, match="trained on .* \\(2 layers, width 32\\).*width 64"):
        Classifier.load(adapter_dir, torch.device("cpu"), model=str(other))


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda d, t: d.update(format_version=99), "newer than this LoRA Lab"),
        (lambda d, t: d.update(surprise=True), r"unknown fields \['surprise'\]"),
        (lambda d, t: d["lora"].update(rank=0), "rank must be"),
        (lambda d, t: d.update(pooling="middle"), "invalid pooling"),
        (lambda d, t: d.pop("labels"), r"lacks fields \['labels'\]"),
    ],
    ids=["newer-format", "unknown-field", "bad-rank", "bad-pooling", "missing-field"],
)
def test_invalid_configs_are_named(adapter_dir, tmp_path, change, problem):
    changed_adapter(adapter_dir, tmp_path / TENSORS_FILE, change)
    with pytest.raises(AdapterError, match=problem):
        read_adapter(tmp_path)


def test_adapter_of_another_rank_is_refused(adapter_dir, tmp_path):
    def lie_about_rank(data, tensors):
        data["lora"]["rank"] = 8

    changed_adapter(adapter_dir, tmp_path / TENSORS_FILE, lie_about_rank)
    with pytest.raises(AdapterError, match=r"declared \[32, 16\], which does not fit rank 8"):  # from the header, before any model is built
        Classifier.load(tmp_path, torch.device("cpu"))


def test_damaged_or_foreign_files_are_refused(tmp_path):
    (tmp_path / TENSORS_FILE).write_bytes(b"\x00" * 100)
    with pytest.raises(AdapterError, match="not a readable safetensors"):
        read_adapter(tmp_path)
    save_file({"x": torch.zeros(2)}, str(tmp_path / TENSORS_FILE))
    with pytest.raises(AdapterError, match="not saved by LoRA Lab"):
        read_adapter(tmp_path)
    with pytest.raises(AdapterError, match="pickle"):
        read_adapter(tmp_path / "adapter.pth")
    with pytest.raises(AdapterError, match="no adapter"):
        read_adapter(tmp_path / "nowhere")


def test_config_round_trips():
    from engine.config import LoRAConfig

    config = AdapterConfig("gpt2-small", TINY, LoRAConfig(rank=2, alpha=4, targets=("score",)), "last", "longest", 120)
    assert AdapterConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
