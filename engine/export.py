"""Take a trained adapter out of LoRA Lab: a PEFT adapter, or a whole transformers model.

Both load into transformers' `GPT2ForSequenceClassification` and give the engine's probabilities
(tests/test_export.py checks them with transformers and peft, which the engine itself never imports:
the files are written here by hand). Our layout differs from transformers' in three ways, each
bridged exactly:

- q, k and v are separate layers here, one fused `c_attn` (a Conv1D, input × 3·width) there. Their
  LoRA pairs become one pair on `c_attn`: the A matrices stacked (rank 3r), the B matrices block
  diagonal, so each part still only writes its own third of the output.
- Our scale (alpha, or alpha / rank) is folded into B, and PEFT's own scale made 1 (lora_alpha = r).
- transformers' head has no bias; ours does. The final layer norm's output feeds only the head there,
  so the bias moves into that norm's bias: a shift δ with W·δ = b (the least-norm one,
  δ = Wᵀ(W·Wᵀ)⁻¹·b) makes W·(h + δ) = W·h + b for every h, exact while the classes are fewer than the
  width. The head itself (its LoRA merged in) and the shifted norm travel whole (`modules_to_save`).

transformers reads the last token that is not its padding token: our "last_token" reading, with
GPT-2's <|endoftext|> as padding (our tokenizer never makes it from a message's text). The book's
reading, the last of every message padded to the longest training message, has no counterpart in
transformers' classifier, so adapters trained that way are refused with that reason.
"""

import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as safetensors_bytes

from engine import strict_json
from engine.adapter import AdapterConfig, check_base, read_adapter
from engine.anatomy import kind_of
from engine.atomic import atomic_path, disk_full_named
from engine.config import EXPORT_FORMATS, HF_REPOS
from engine.errors import AdapterError, ConfigError
from engine.methods import METHOD_WORDS
from engine.model import GPT
from engine.model_card import model_card
from engine.tokenizer import ASSETS, END_OF_TEXT, END_OF_TEXT_ID
from engine.weights import hf_state_dict, load_model

QKV = ("attn.q_proj", "attn.k_proj", "attn.v_proj")
FUSED_TARGETS = {"attn.c_proj": "attn.c_proj", "mlp.c_fc": "mlp.c_fc", "mlp.c_proj": "mlp.c_proj"}  # the same names in transformers
MARKER = "lora_lab_export.json"  # says a folder holds an export of ours, so exporting again may replace it


@dataclass(frozen=True)
class Exported:
    folder: Path
    format: str
    files: tuple[str, ...]


def refusal(config: AdapterConfig) -> str | None:
    """Why this adapter cannot be exported exactly (None: it can)."""
    if config.method != "lora":
        return (
            f"this run trained with {METHOD_WORDS[config.method]}; export writes LoRA adapters only "
            "(a PEFT adapter, or one merged into a transformers model): use its weights inside LoRA Lab (Classify, Evaluate)"
        )
    if config.pooling != "last_token":
        return (
            "this adapter reads each message at the last of its padded positions (the book's reading), which transformers' "
            "GPT2ForSequenceClassification cannot do: it reads the last real token. Train with the recommended preset "
            "(or reading: last_token) to export"
        )
    return None


def export_adapter(adapter: Path, out: Path, fmt: str, model: str | None = None, record: dict[str, Any] | None = None) -> Exported:
    """Write `adapter` as `fmt` ("peft" or "transformers") into the folder `out`, with a model card from the run's `record`.

    The base model is the adapter's own, or `model` (same shape). `out` must be new, empty, or an earlier export.

    Raises:
        ConfigError: unknown format, or `out` holds other files.
        AdapterError: the adapter cannot be exported exactly (the reason is named), or is damaged.
    """
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}: choose {' or '.join(EXPORT_FORMATS)}")
    config, tensors = read_adapter(Path(adapter))
    reason = refusal(config)
    if reason:
        raise AdapterError(reason)
    if fmt == "peft" and all(target == "score" for target in config.lora.targets):
        raise AdapterError("this adapter adapts only the class head, which a PEFT LoRA adapter cannot hold: export it as transformers")
    base = load_model(model or config.base_model, torch.device("cpu"))
    check_base(config, base)
    head_weight, head_bias = merged_head(tensors, config)
    norm_bias = base.transformer.ln_f.bias.detach().double() + folded_bias(head_weight, head_bias)
    files: dict[str, bytes] = {}
    if fmt == "peft":
        files["adapter_model.safetensors"] = _safetensors(peft_tensors(tensors, config, head_weight, base, norm_bias))
        files["adapter_config.json"] = _json(peft_config(config, model))
    else:
        files["model.safetensors"] = _safetensors(merged_tensors(base, tensors, config, head_weight, norm_bias))
        files["config.json"] = _json(transformers_config(config))
    files.update(tokenizer_files(config))
    files["README.md"] = model_card(config, fmt, record, base_name(model or config.base_model)).encode("utf-8")
    files[MARKER] = _json({"format": fmt, "adapter": str(Path(adapter).resolve())})
    write_folder(Path(out), files)
    return Exported(Path(out), fmt, tuple(sorted(files)))


def merged_head(tensors: dict[str, torch.Tensor], config: AdapterConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The class head's weight with its LoRA update merged in (classes × width), and its bias; float64."""
    prefix = "score.base_layer." if "score.base_layer.weight" in tensors else "score."
    weight, bias = tensors[prefix + "weight"].double(), tensors[prefix + "bias"].double()
    if "score.lora_A" in tensors:
        weight = weight + update(tensors, "score", config.lora.scale)
    return weight, bias


def update(tensors: dict[str, torch.Tensor], name: str, scale: float) -> torch.Tensor:
    """scale · (A·B)ᵀ of layer `name`: its update in nn.Linear's (out, in) layout, float64."""
    return scale * (tensors[f"{name}.lora_A"].double() @ tensors[f"{name}.lora_B"].double()).t()


def folded_bias(weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The least-norm δ with weight·δ = bias: added to the final norm's output, it gives the head its bias.

    Raises:
        AdapterError: no such δ (more classes than the width, or a degenerate head), so no exact export.
    """
    delta = weight.t() @ torch.linalg.lstsq(weight @ weight.t(), bias.unsqueeze(1)).solution.squeeze(1)
    error = float((weight @ delta - bias).abs().max())
    if error > 1e-9 * max(1.0, float(bias.abs().max())):
        raise AdapterError(f"the class head's bias cannot be moved into the final layer norm (off by {error:.2g}): this head has no exact export")
    return delta


def peft_tensors(
    tensors: dict[str, torch.Tensor], config: AdapterConfig, head_weight: torch.Tensor, base: GPT, norm_bias: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The adapter in PEFT's names and layout (A: rank × in, B: out × rank, Conv1D targets, scale in B)."""
    scale, width = config.lora.scale, config.model.n_embd
    out: dict[str, torch.Tensor] = {}
    for block in range(config.model.n_layer):
        prefix = f"transformer.h.{block}"
        parts = [(index, target) for index, target in enumerate(QKV) if f"{prefix}.{target}.lora_A" in tensors]
        if parts:
            rank = config.lora.rank
            lora_b = torch.zeros(3 * width, rank * len(parts), dtype=torch.float64)
            for column, (index, target) in enumerate(parts):
                lora_b[index * width : (index + 1) * width, column * rank : (column + 1) * rank] = scale * tensors[f"{prefix}.{target}.lora_B"].double().t()
            out[f"base_model.model.{prefix}.attn.c_attn.lora_A.weight"] = torch.cat([tensors[f"{prefix}.{t}.lora_A"].t() for _, t in parts])
            out[f"base_model.model.{prefix}.attn.c_attn.lora_B.weight"] = lora_b
        for target, theirs in FUSED_TARGETS.items():
            name = f"{prefix}.{target}"
            if f"{name}.lora_A" in tensors:
                out[f"base_model.model.{prefix}.{theirs}.lora_A.weight"] = tensors[f"{name}.lora_A"].t()
                out[f"base_model.model.{prefix}.{theirs}.lora_B.weight"] = scale * tensors[f"{name}.lora_B"].double().t()
    out["base_model.model.score.weight"] = head_weight
    out["base_model.model.transformer.ln_f.weight"] = base.transformer.ln_f.weight.detach()
    out["base_model.model.transformer.ln_f.bias"] = norm_bias
    return {key: value.to(torch.float32).contiguous() for key, value in out.items()}


def peft_config(config: AdapterConfig, model: str | None) -> dict[str, Any]:
    """PEFT's adapter_config.json: rank r everywhere but c_attn (r per adapted part of q, k, v), scale 1."""
    rank = config.lora.rank
    parts = sum(target in config.lora.targets for target in QKV)
    modules = dict.fromkeys("attn.c_attn" if target in QKV else target for target in config.lora.targets if target != "score")
    names = [f"transformer.h.{block}.{module}" for block in range(config.model.n_layer) for module in modules]
    pattern = {"c_attn": rank * parts} if parts > 1 else {}
    return {
        "peft_type": "LORA",
        "task_type": "SEQ_CLS",
        "base_model_name_or_path": base_name(model or config.base_model),
        "r": rank,
        "lora_alpha": rank,
        "rank_pattern": pattern,
        "alpha_pattern": pattern,
        "target_modules": names,
        "fan_in_fan_out": True,  # GPT-2's layers are Conv1D, (in, out)
        "modules_to_save": ["score", "ln_f"],
        "lora_dropout": 0.0,
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
    }


def merged_tensors(
    base: GPT, tensors: dict[str, torch.Tensor], config: AdapterConfig, head_weight: torch.Tensor, norm_bias: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The whole model in transformers' names, every LoRA update merged into its weight."""
    with torch.no_grad():
        for key in tensors:
            if key.endswith(".lora_A") and kind_of(key.removesuffix(".lora_A")) != "score":
                name = key.removesuffix(".lora_A")
                weight = base.get_submodule(name).weight
                weight.copy_((weight.double() + update(tensors, name, config.lora.scale)).to(weight.dtype))
        base.transformer.ln_f.bias.copy_(norm_bias.to(base.transformer.ln_f.bias.dtype))
    merged = {f"transformer.{key}": value for key, value in hf_state_dict(base).items()}
    merged["score.weight"] = head_weight.to(torch.float32)
    return {key: value.contiguous() for key, value in merged.items()}


def transformers_config(config: AdapterConfig) -> dict[str, Any]:
    labels = config.labels
    return {
        **config.model.to_hf(),
        "architectures": ["GPT2ForSequenceClassification"],
        "n_ctx": config.model.context_length,
        "bos_token_id": END_OF_TEXT_ID,
        "eos_token_id": END_OF_TEXT_ID,
        "pad_token_id": END_OF_TEXT_ID,  # the last token that is not this one is read: our last_token
        "id2label": {str(i): label for i, label in enumerate(labels)},
        "label2id": {label: i for i, label in enumerate(labels)},
        "problem_type": "single_label_classification",
        "torch_dtype": "float32",
    }


def tokenizer_files(config: AdapterConfig) -> dict[str, bytes]:
    """GPT-2's tokenizer as transformers reads it (from the files we ship: no download), cut at our length limit."""
    settings = {
        "tokenizer_class": "GPT2Tokenizer",
        "model_max_length": config.max_length,  # pipeline(..., truncation=True) cuts messages where LoRA Lab does
        "bos_token": END_OF_TEXT,
        "eos_token": END_OF_TEXT,
        "unk_token": END_OF_TEXT,
        "pad_token": END_OF_TEXT,
        "add_prefix_space": False,
        "padding_side": "right",
    }
    return {
        "vocab.json": (ASSETS / "encoder.json").read_bytes(),
        "merges.txt": (ASSETS / "vocab.bpe").read_bytes(),
        "tokenizer_config.json": _json(settings),
    }


def base_name(spec: str) -> str:
    """The base model as transformers names it: a Hub repository for a size, else the folder's full path."""
    return HF_REPOS.get(spec) or str(Path(spec).resolve())


def write_folder(out: Path, files: dict[str, bytes]) -> None:
    """Write `files` into `out` as a whole: into a temporary folder beside it, then renamed into place.

    Raises:
        ConfigError: `out` is a file, or a folder holding anything but an earlier export.
    """
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file: give a folder to export into")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise ConfigError(f"{out} already holds other files: export into a new or empty folder")
    with disk_full_named(out.parent):
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
        try:
            for name, data in files.items():
                (staging / name).write_bytes(data)
            if out.exists():
                old = staging.with_name(staging.name + ".old")
                out.rename(old)
                staging.rename(out)
                shutil.rmtree(old, ignore_errors=True)
            else:
                staging.rename(out)
            staging = None  # type: ignore[assignment]
        finally:
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)


def _safetensors(tensors: dict[str, torch.Tensor]) -> bytes:
    return safetensors_bytes(tensors, metadata={"format": "pt"})


def _json(value: Any) -> bytes:
    return (strict_json.dumps(value, indent=2) + "\n").encode("utf-8")


def zipped(folder: Path, target: Path) -> Path:
    """An export folder as one zip at `target` (its files at the top), written whole: weights stored as they are, the rest compressed."""
    with atomic_path(Path(target)) as temporary, zipfile.ZipFile(temporary, "w") as archive:
        for path in sorted(Path(folder).iterdir()):
            if path.is_file():
                archive.write(path, path.name, compress_type=zipfile.ZIP_STORED if path.suffix == ".safetensors" else zipfile.ZIP_DEFLATED)
    return Path(target)
