"""Save and load a trained adapter: the LoRA tensors and the class head, plus the settings to rebuild it.

`adapter.safetensors` is self-contained (its metadata holds the config, so one atomic rename
publishes tensors and settings together); `adapter_config.json` is a readable copy of the config.
A gpt2-small adapter at rank 16 is about 10 MB, the base model 500 MB.

Reading checks the config and every tensor's declared name, type and shape from the file's header
before a byte of tensor data is read or a model is built, then that every value is finite.
"""

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes

from engine import strict_json
from engine.atomic import write_bytes_atomic, write_text_atomic
from engine.config import LABELS, MAX_CLASSES, MAX_LABEL_CHARS, METHODS, PADDINGS, POOLINGS, GPTConfig, LoRAConfig
from engine.errors import AdapterError, ConfigError
from engine.methods import trains
from engine.model import GPT
from engine.weights import PICKLE_SUFFIXES

FORMAT_VERSION = 1
TENSORS_FILE = "adapter.safetensors"
CONFIG_FILE = "adapter_config.json"
METADATA_KEY = "lora_lab_config"
FLOAT_TYPES = ("F16", "BF16", "F32", "F64")  # safetensors' names for the dtypes an adapter may hold
# What a loaded adapter computes in: its tensors are copied into float32 parameters (bf16 autocast,
# in training only, keeps float32's range).
COMPUTE_DTYPE = torch.float32
COMPUTE_DTYPE_NAME = "float32"


@dataclass(frozen=True)
class AdapterConfig:
    """What an adapter needs besides its tensors: its base model and how it reads messages."""

    base_model: str  # size name or folder it was trained on
    model: GPTConfig
    lora: LoRAConfig
    pooling: str
    padding: str
    max_length: int  # longest token count it pads or truncates to
    labels: tuple[str, ...] = LABELS
    format_version: int = FORMAT_VERSION
    # lora: the file holds LoRA's A and B and the head; last-block, full: the trained weights themselves (engine/methods.py)
    method: str = "lora"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> "AdapterConfig":
        """Validate a loaded config strictly: unknown fields, newer formats and bad values are errors."""
        if not isinstance(data, dict):
            raise AdapterError("adapter config must be a JSON object: re-save the adapter")
        version = data.get("format_version")
        if not isinstance(version, int) or version < 1:
            raise AdapterError(f"adapter config has no valid format_version ({version!r}): re-save the adapter")
        if version > FORMAT_VERSION:
            raise AdapterError(f"adapter format {version} is newer than this LoRA Lab understands ({FORMAT_VERSION}): update LoRA Lab")
        data = {"method": "lora", **data}  # adapters saved before methods existed are all LoRA
        _check_fields(cls, data, "adapter config")
        labels = data["labels"]
        if isinstance(labels, list) and len(labels) > MAX_CLASSES:  # refused before anything the size of the head exists
            raise AdapterError(
                f"the adapter declares {len(labels):,} classes; LoRA Lab handles at most {MAX_CLASSES}: it was not saved by LoRA Lab, or is damaged"
            )
        _check_fields(GPTConfig, data["model"], "adapter config 'model'")
        _check_fields(LoRAConfig, data["lora"], "adapter config 'lora'")
        try:
            config = cls(
                base_model=str(data["base_model"]),
                model=GPTConfig(**data["model"]),
                lora=LoRAConfig(**{**data["lora"], "targets": tuple(data["lora"]["targets"])}),
                pooling=data["pooling"],
                padding=data["padding"],
                max_length=data["max_length"],
                labels=tuple(data["labels"]),
                format_version=version,
                method=data["method"],
            )
        except (ConfigError, TypeError) as error:
            raise AdapterError(f"adapter config is invalid: {error}") from None
        problems = []
        if config.method not in METHODS:
            problems.append(f"method {config.method!r}")
        if config.pooling not in POOLINGS:
            problems.append(f"pooling {config.pooling!r}")
        if config.padding not in PADDINGS:
            problems.append(f"padding {config.padding!r}")
        if not isinstance(config.max_length, int) or not 1 <= config.max_length <= config.model.context_length:
            problems.append(f"max_length {config.max_length!r}")
        if not all(isinstance(label, str) and label for label in config.labels):
            problems.append("labels (each must be a non-empty name)")
        elif any(len(label) > MAX_LABEL_CHARS for label in config.labels):
            problems.append(f"labels (a class name of {max(len(label) for label in config.labels):,} characters, over {MAX_LABEL_CHARS})")
        elif len(config.labels) < 2 or len(set(config.labels)) < len(config.labels):
            problems.append(f"labels {config.labels!r}")
        if problems:
            raise AdapterError("adapter config has invalid " + ", ".join(problems) + ": re-save the adapter")
        return config


def _check_fields(cls: type, data: Any, what: str) -> None:
    if not isinstance(data, dict):
        raise AdapterError(f"{what} must be a JSON object: re-save the adapter")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise AdapterError(f"{what} has unknown fields {unknown}: it was written by another program or version")
    missing = sorted(known - set(data))  # we always write every field, so any gap means damage
    if missing:
        raise AdapterError(f"{what} lacks fields {missing}: re-save the adapter")


def adapter_tensors(model: GPT, method: str = "lora") -> dict[str, torch.Tensor]:
    """The tensors an adapter must carry: for LoRA every A/B and the whole class head (random at start, never in the base);
    for the other methods every weight they train. Copies: q, k and v share one storage, which safetensors refuses."""
    state = model.state_dict()
    return {name: state[name].detach().cpu().clone() for name in adapter_names(model, method)}


def adapter_names(model: GPT, method: str = "lora") -> list[str]:
    """The names of the tensors `adapter_tensors` takes, in the model's order."""
    if method == "lora":
        return [name for name in model.state_dict() if "lora_" in name or name.startswith("score.")]
    return [name for name in model.state_dict() if trains(name, method, model.cfg.n_layer)]


def save_adapter(model: GPT, folder: Path, config: AdapterConfig) -> Path:
    """Write the adapter into `folder` atomically; returns the tensors file's path."""
    folder = Path(folder)
    if any(layer.merged for layer in model.modules() if hasattr(layer, "merged")):
        raise RuntimeError("save_adapter on merged weights: unmerge first so the base stays pristine")
    text = strict_json.dumps(config.to_dict(), indent=2)
    tensors = adapter_tensors(model, config.method)
    check_finite(tensors, "the adapter to save")  # a broken adapter is never written, so never picked up later
    tensors_path = folder / TENSORS_FILE
    # Serialised in memory and written by us: safetensors' own writer renames a private (0600)
    # temporary of its own into place, and a process killed meanwhile would leave that behind.
    write_bytes_atomic(tensors_path, safetensors_bytes(tensors, metadata={METADATA_KEY: text}))
    write_text_atomic(folder / CONFIG_FILE, text + "\n")
    return tensors_path


def read_adapter(folder: Path) -> tuple[AdapterConfig, dict[str, torch.Tensor]]:
    """Read and validate an adapter folder (or its .safetensors file)."""
    path = Path(folder)
    if path.is_dir():
        path = path / TENSORS_FILE
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise AdapterError(f"{path.name} is a pickle file and is never loaded: use an adapter.safetensors saved by LoRA Lab")
    if not path.is_file():
        raise AdapterError(f"no adapter at {path}: train one first, or give the folder holding {TENSORS_FILE}")
    try:
        with safe_open(str(path), "pt") as handle:
            config = _config_of(handle.metadata() or {}, path)
            slices = {key: handle.get_slice(key) for key in handle.keys()}  # the header's word on each tensor, nothing read yet
            declared = {key: (part.get_dtype(), tuple(part.get_shape())) for key, part in slices.items()}
            check_declared(config, declared, path)
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError) as error:
        raise AdapterError(f"{path} is not a readable safetensors file ({error}): the adapter is damaged, retrain or re-download it") from None
    check_finite(tensors, str(path))
    return config, tensors


def _config_of(metadata: dict[str, str], path: Path) -> AdapterConfig:
    if METADATA_KEY not in metadata:
        raise AdapterError(f"{path} carries no LoRA Lab config: it was not saved by LoRA Lab")
    try:
        data = json.loads(metadata[METADATA_KEY])
    except json.JSONDecodeError as error:
        raise AdapterError(f"{path} has a damaged config ({error}): retrain the adapter") from None
    return AdapterConfig.from_dict(data)


def check_declared(config: AdapterConfig, declared: dict[str, tuple[str, tuple[int, ...]]], path: Path) -> None:
    """Refuse tensors whose header-declared type or shape cannot belong to an adapter of `config`.

    Every LoRA A is (input width, rank) and every B (rank, output width), the widths being the
    model's or its MLP's (4x); the head is (classes, width) plus a bias (classes,). So nothing bigger
    than the config allows is read, whatever the header says.
    """
    width, rank, classes = config.model.n_embd, config.lora.rank, len(config.labels)
    widths = (width, 4 * width)
    trained = _trained_shapes(config) if config.method != "lora" else {}
    for key, (dtype, shape) in declared.items():
        if dtype not in FLOAT_TYPES:
            raise AdapterError(f"{path}: tensor {key} holds {dtype} values, not floating-point numbers: the adapter is damaged, retrain it")
        if config.method != "lora":
            if key not in trained:
                raise AdapterError(f"{path}: tensor {key} is not a weight that {config.method} training changes: it was not saved by LoRA Lab")
            fits = shape == trained[key]
        elif key.endswith("lora_A"):
            fits = len(shape) == 2 and shape[0] in widths and shape[1] == rank
        elif key.endswith("lora_B"):
            fits = len(shape) == 2 and shape[0] == rank and shape[1] in ((classes,) if key.startswith("score.") else widths)
        elif key.startswith("score.") and key.endswith("weight"):
            fits = shape == (classes, width)
        elif key.startswith("score.") and key.endswith("bias"):
            fits = shape == (classes,)
        else:
            raise AdapterError(f"{path}: tensor {key} is neither a LoRA matrix nor the class head: it was not saved by LoRA Lab")
        if not fits:
            raise AdapterError(
                f"{path}: tensor {key} is declared {list(shape)}, which does not fit rank {rank}, width {width} and {classes} classes: "
                "the adapter is damaged or was saved with other settings"
            )


def _trained_shapes(config: AdapterConfig) -> dict[str, tuple[int, ...]]:
    """The name and shape of every weight a last-block or full run of `config` trains, from a model with no weights (meta)."""
    with torch.device("meta"):
        model = GPT(config.model, n_classes=len(config.labels))
    return {name: tuple(t.shape) for name, t in model.state_dict().items() if trains(name, config.method, config.model.n_layer)}


def check_finite(tensors: dict[str, torch.Tensor], what: str) -> None:
    """Refuse NaN or infinity anywhere (LoRA, head, biases), in the tensor's own type and in the one the model
    computes in: a float64 value of 1e300 is finite, yet infinite once loaded. Either way the adapter answers nothing meaningful."""
    for key, tensor in tensors.items():
        if not torch.isfinite(tensor).all():
            raise AdapterError(
                f"{what}: tensor {key} holds NaN or infinite values, so the adapter is broken "
                "(trained with too high a learning rate?): train again with a lower one"
            )
        if not torch.isfinite(tensor.to(COMPUTE_DTYPE)).all():
            raise AdapterError(
                f"{what}: tensor {key} holds values up to {tensor.abs().max().item():.3g}, beyond the largest {COMPUTE_DTYPE_NAME} number "
                f"({torch.finfo(COMPUTE_DTYPE).max:.3g}), the numbers the model computes in: the adapter is broken; retrain it"
            )


def check_base(config: AdapterConfig, model: GPT) -> None:
    """Refuse an adapter trained on another base shape: it would load and silently mis-predict."""
    want, have = config.model, model.cfg
    shape = lambda c: (c.vocab_size, c.context_length, c.n_embd, c.n_layer, c.n_head)
    if shape(want) != shape(have):
        raise AdapterError(
            f"this adapter was trained on {config.base_model} ({want.n_layer} layers, width {want.n_embd}); "
            f"the loaded model is {have.name} ({have.n_layer} layers, width {have.n_embd}): load {config.base_model} instead"
        )


def load_tensors(model: GPT, tensors: dict[str, torch.Tensor], method: str = "lora") -> None:
    """Copy adapter tensors into a model built with the adapter's config (and `method`); names and shapes must match."""
    expected = set(adapter_names(model, method))
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        detail = f"lacks {missing[0]}" if missing else f"has unexpected {unexpected[0]}"
        raise AdapterError(f"adapter {detail}: it does not fit this model's LoRA layout (another rank or targets?)")
    state = model.state_dict()
    for key, tensor in tensors.items():
        if tensor.shape != state[key].shape:
            raise AdapterError(f"adapter tensor {key} has shape {tuple(tensor.shape)}, expected {tuple(state[key].shape)}: it was trained with other settings")
    with torch.no_grad():
        for key, tensor in tensors.items():
            state[key].copy_(tensor)
