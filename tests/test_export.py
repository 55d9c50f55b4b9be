"""Export: a PEFT adapter and a whole transformers model that answer as the engine does, loaded by transformers
and peft themselves (dev dependencies: the engine writes the files by hand and never imports them)."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import changed_adapter, randomise_lora

from engine.adapter import AdapterConfig, save_adapter
from engine.classifier import Classifier, build_classifier
from engine.cli import main
from engine.config import LoRAConfig
from engine.errors import AdapterError, ConfigError
from engine.export import MARKER, export_adapter, folded_bias
from engine.reproduce import train_command
from engine.tokenizer import END_OF_TEXT_ID, encode
from engine.weights import load_model

MESSAGES = [
    "URGENT! You have won a 1 week FREE membership in our £100,000 prize Jackpot! Txt CLAIM to 81010",
    "Hey, are we still on for dinner tonight?",
    "ok",
    "Sorry I'm running late 😅, the bus broke down. Be there in 20 min.",
    "free " * 400,  # longer than any training message: cut at the adapter's length limit
]
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def trained_folder(trained_run: tuple, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The finished tiny run's folder (run.json beside adapter/), its LoRA B and head made large and random:
    a small or zero update would hide a wrong layout."""
    run = tmp_path_factory.mktemp("exported-run")
    source = trained_run[1][-1].out_dir
    shutil.copyfile(source / "run.json", run / "run.json")
    generator = torch.Generator().manual_seed(3)

    def randomise(_: dict, tensors: dict[str, torch.Tensor]) -> None:
        for key in tensors:
            if key.endswith("lora_B") or key.startswith("score.base_layer."):
                tensors[key] = torch.randn(tensors[key].shape, generator=generator) * 0.5

    changed_adapter(source / "adapter", run / "adapter" / "adapter.safetensors", randomise)
    shutil.copyfile(source / "adapter" / "adapter_config.json", run / "adapter" / "adapter_config.json")
    return run


@pytest.fixture(scope="module")
def query_value_adapter(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three classes, LoRA on q and v (not k), the MLP's input and the head, the head's own weights trained, the book's alpha scaling."""
    lora = LoRAConfig(rank=3, alpha=4.0, scaling="alpha", targets=("attn.q_proj", "attn.v_proj", "mlp.c_fc", "score"), train_head=True)
    model = build_classifier(load_model(str(tiny_model_dir), torch.device("cpu")), lora, n_classes=3)
    randomise_lora(model, 0.3)
    folder = tmp_path_factory.mktemp("qv-adapter")
    save_adapter(model, folder, AdapterConfig(str(tiny_model_dir), model.cfg, lora, "last_token", "batch", 60, ("work", "friends", "bills")))
    return folder


def engine_probabilities(adapter: Path) -> tuple[tuple[str, ...], torch.Tensor]:
    classifier = Classifier.load(adapter, torch.device("cpu"))
    predictions = classifier.classify(MESSAGES)
    labels = classifier.config.labels
    return labels, torch.tensor([[p.probabilities[label] for label in labels] for p in predictions])


def padded(ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, ids))
    tokens = torch.tensor([row + [END_OF_TEXT_ID] * (width - len(row)) for row in ids])
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in ids])
    return tokens, mask


def peft_probabilities(export: Path, base: Path, n_classes: int) -> torch.Tensor:
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    model = transformers.GPT2ForSequenceClassification.from_pretrained(str(base), num_labels=n_classes, pad_token_id=END_OF_TEXT_ID)
    model = peft.PeftModel.from_pretrained(model, str(export)).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(export))
    encoded = tokenizer(MESSAGES, truncation=True)["input_ids"]
    limit = json.loads((export / "tokenizer_config.json").read_text())["model_max_length"]
    assert encoded == [encode(m)[:limit] for m in MESSAGES]  # the export's tokenizer reads messages as the engine does
    tokens, mask = padded(encoded)
    with torch.no_grad():
        return model(input_ids=tokens, attention_mask=mask).logits.softmax(-1)


@pytest.mark.slow
@pytest.mark.parametrize("which", ["trained", "query-value"])
def test_the_peft_export_gives_the_engines_probabilities(
    which: str, trained_folder: Path, query_value_adapter: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    adapter = trained_folder / "adapter" if which == "trained" else query_value_adapter
    labels, expected = engine_probabilities(adapter)
    export_adapter(adapter, tmp_path / "peft", "peft")
    got = peft_probabilities(tmp_path / "peft", tiny_model_dir, len(labels))
    assert (got - expected).abs().max() < TOLERANCE
    assert expected.max(dim=1).values.min() < 0.99  # not a saturated head, where any mistake would vanish


@pytest.mark.slow
@pytest.mark.parametrize("which", ["trained", "query-value"])
def test_the_transformers_export_answers_as_the_engine_in_a_pipeline(which: str, trained_folder: Path, query_value_adapter: Path, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    adapter = trained_folder / "adapter" if which == "trained" else query_value_adapter
    labels, expected = engine_probabilities(adapter)
    export_adapter(adapter, tmp_path / "model", "transformers")
    classifier = transformers.pipeline("text-classification", model=str(tmp_path / "model"), device="cpu")
    for message, row in zip(MESSAGES, expected, strict=True):
        answers = {answer["label"]: answer["score"] for answer in classifier(message, truncation=True, top_k=None)}
        assert set(answers) == set(labels)
        assert max(abs(answers[label] - float(p)) for label, p in zip(labels, row, strict=True)) < TOLERANCE
        assert classifier(message, truncation=True)[0]["label"] == labels[int(row.argmax())]


def test_the_model_card_says_data_settings_results_and_the_command(trained_folder: Path, trained_run: tuple, tmp_path: Path) -> None:
    assert main(["export", "--adapter", str(trained_folder / "adapter"), "--format", "transformers", "--out", str(tmp_path / "m"), "--json"]) == 0
    card = (tmp_path / "m" / "README.md").read_text()
    record = json.loads((trained_folder / "run.json").read_text())
    assert train_command(trained_run[0]) in card
    assert f"{100 * record['final']['test']['accuracy']:.2f}%" in card
    assert record["data"]["source"] in card and "| preset | recommended |" in card
    assert "pipeline_tag: text-classification" in card and 'pipeline("text-classification"' in card
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["id2label"] == {"0": "ham", "1": "spam"} and config["pad_token_id"] == END_OF_TEXT_ID


def test_an_adapter_exported_alone_has_a_card_that_says_so(query_value_adapter: Path, tmp_path: Path) -> None:
    export_adapter(query_value_adapter, tmp_path / "p", "peft")
    card = (tmp_path / "p" / "README.md").read_text()
    assert "exported without its run's record" in card and "PeftModel.from_pretrained" in card and "num_labels=3" in card
    config = json.loads((tmp_path / "p" / "adapter_config.json").read_text())
    assert config["rank_pattern"] == {"c_attn": 6} and config["r"] == config["lora_alpha"] == 3  # q and v: rank 2 x 3 on c_attn, scale 1
    assert "transformer.h.1.mlp.c_fc" in config["target_modules"] and not any("c_proj" in name for name in config["target_modules"])


def test_the_books_reading_is_refused_with_the_reason(tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lora = LoRAConfig(rank=2, alpha=2.0, scaling="alpha")
    model = build_classifier(load_model(str(tiny_model_dir), torch.device("cpu")), lora)
    save_adapter(model, tmp_path / "book", AdapterConfig(str(tiny_model_dir), model.cfg, lora, "last", "longest", 40))
    with pytest.raises(AdapterError, match="last real token"):
        export_adapter(tmp_path / "book", tmp_path / "out", "transformers")
    assert main(["export", "--adapter", str(tmp_path / "book"), "--format", "peft", "--out", str(tmp_path / "out")]) == 2
    assert "recommended preset" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_an_export_never_overwrites_other_files_but_replaces_an_earlier_export(query_value_adapter: Path, tmp_path: Path) -> None:
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="already holds other files"):
        export_adapter(query_value_adapter, target, "peft")
    assert [p.name for p in target.iterdir()] == ["notes.txt"]
    export_adapter(query_value_adapter, tmp_path / "again", "peft")
    export_adapter(query_value_adapter, tmp_path / "again", "transformers")
    assert (tmp_path / "again" / "model.safetensors").is_file() and not (tmp_path / "again" / "adapter_config.json").exists()
    assert (tmp_path / "again" / MARKER).is_file() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_the_head_bias_moves_into_the_norm_exactly() -> None:
    generator = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(3, 16, generator=generator, dtype=torch.float64), torch.randn(3, generator=generator, dtype=torch.float64)
    hidden = torch.randn(5, 16, generator=generator, dtype=torch.float64)
    delta = folded_bias(weight, bias)
    assert torch.allclose((hidden + delta) @ weight.t(), hidden @ weight.t() + bias, atol=1e-12)
    with pytest.raises(AdapterError, match="cannot be moved"):
        folded_bias(torch.ones(3, 16, dtype=torch.float64), bias)  # rank 1: no shift gives three different biases
