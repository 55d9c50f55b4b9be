"""Find, fetch and load GPT-2 checkpoints (safetensors only) into our model layout.

A model is named by a size ("gpt2-small" ... "gpt2-xl", fetched from Hugging Face through
huggingface_hub's shared, resumable cache), a folder in Hugging Face layout (config.json +
model.safetensors) or a single .safetensors file of one of the four sizes.
"""

import json
import os
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from engine import strict_json
from engine.config import GPT2_SIZES, HF_REPOS, GPTConfig
from engine.errors import ConfigError, WeightsError
from engine.model import GPT

WEIGHTS_FILE = "model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# OpenAI's GPT-2 stores these as Conv1D, (in, out): nn.Linear wants (out, in).
CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
PROBE_TIMEOUT_S = 5.0  # one connection attempt to the download server before a download
IGNORED = re.compile(r"(^lm_head\.weight$|\.attn\.(masked_)?bias$)")  # tied head, causal-mask buffers


@dataclass(frozen=True)
class ModelSource:
    """A resolved model name: its shape and, where known locally, its weights file."""

    config: GPTConfig
    weights: Path | None  # None: fetch from Hugging Face (size names only)
    repo_id: str | None = None


def resolve(spec: str) -> ModelSource:
    """Turn a size name, folder or file into a ModelSource, without reading any weights.

    Raises:
        ConfigError / WeightsError: unknown size, missing files, or a pickle checkpoint.
    """
    if spec in GPT2_SIZES:
        return ModelSource(GPT2_SIZES[spec], None, HF_REPOS[spec])
    path = Path(spec)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise WeightsError(f"{path.name} is a pickle checkpoint, which can run arbitrary code and is never loaded: use a model.safetensors file")
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.is_file():
            raise WeightsError(f"{path} has no config.json: give a folder in Hugging Face layout (config.json + {WEIGHTS_FILE})")
        try:
            hf = json.loads(config_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise WeightsError(f"{config_file} is not valid JSON ({error}): restore the model's config.json") from None
        if not isinstance(hf, dict):
            raise WeightsError(f"{config_file} must hold a JSON object: restore the model's config.json")
        weights = path / WEIGHTS_FILE
        if not weights.is_file():
            pickles = [p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES]
            hint = f" ({', '.join(pickles)} are pickles and never loaded)" if pickles else ""
            raise WeightsError(f"{path} has no {WEIGHTS_FILE}{hint}: put the safetensors weights there")
        return ModelSource(GPTConfig.from_hf(hf, name=str(path)), weights)
    if path.is_file() and path.suffix == ".safetensors":
        return ModelSource(_config_from_shapes(path), path)
    raise ConfigError(f"unknown model {spec!r}: use {', '.join(GPT2_SIZES)}, a folder with config.json and {WEIGHTS_FILE}, or a .safetensors file")


def cached(source: ModelSource) -> Path | None:
    """`source`'s weights file when it is on this machine already (its own file, or the Hugging Face cache),
    without touching the network; None when a download is needed."""
    if source.weights is not None:
        return source.weights
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(source.repo_id, WEIGHTS_FILE)
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


def weight_count(config: GPTConfig) -> int:
    """GPT-2's parameters, from its shape alone: the token and position embeddings, per block two layer
    norms and four Linear layers (12 n² + 13 n), and the final layer norm (the output head is tied)."""
    n = config.n_embd
    return config.vocab_size * n + config.context_length * n + config.n_layer * (12 * n * n + 13 * n) + 2 * n


def download_bytes(config: GPTConfig) -> int:
    """About how large the Hub's model.safetensors of this size is: every weight in fp32, plus the
    causal-mask buffer (context × context) that OpenAI's checkpoint keeps in each block."""
    return 4 * (weight_count(config) + config.n_layer * config.context_length**2)


def hub_endpoint() -> str:
    """Where sizes are downloaded from: HF_ENDPOINT (a mirror, read at call time), else huggingface.co."""
    return os.environ.get("HF_ENDPOINT") or "https://huggingface.co"


def hub_reachable(timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a connection to the download server opens: one quick try, not the hub library's retries."""
    parsed = urlparse(hub_endpoint())
    port = parsed.port or (80 if parsed.scheme == "http" else 443)
    try:
        with socket.create_connection((parsed.hostname or "", port), timeout=timeout_s):
            return True
    except OSError:
        return False


def hub_offline() -> bool:
    """HF_HUB_OFFLINE=1: only what is on this machine may be used."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def fetch(source: ModelSource, progress: Callable[[int, int | None], None] | None = None) -> Path:
    """Local path of the weights, downloading them into the Hugging Face cache if needed.

    A size already in the cache is used as it is, without asking the server (so it works offline at
    once). Honours HF_ENDPOINT (a mirror, read at call time) and HF_HUB_OFFLINE=1 (cache only).

    Raises:
        WeightsError: not on this machine and the server cannot be reached, or the download failed;
            the message says what to do.
    """
    if (path := cached(source)) is not None:
        return path
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    name, size = f"{source.config.name} ({source.repo_id})", f"{download_bytes(source.config) / 1e6:,.0f} MB"
    elsewhere = f"or copy a model folder (config.json + {WEIGHTS_FILE}) to this machine and pass it with --model FOLDER"
    if hub_offline():
        raise WeightsError(f"{name} is not on this machine and HF_HUB_OFFLINE=1 forbids downloading it ({size}): unset HF_HUB_OFFLINE, {elsewhere}")
    host = urlparse(hub_endpoint()).hostname
    if not hub_reachable():
        raise WeightsError(
            f"{name} is not on this machine and {host} cannot be reached to download it ({size}): connect to the internet, {elsewhere}", unreachable=True
        )
    try:
        downloaded = hf_hub_download(
            source.repo_id,
            WEIGHTS_FILE,
            endpoint=os.environ.get("HF_ENDPOINT") or None,
            tqdm_class=_progress_tqdm(progress) if progress else None,
        )
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as error:
        raise WeightsError(
            f"could not download {source.repo_id}/{WEIGHTS_FILE} from {host} ({type(error).__name__}: {str(error).splitlines()[0][:200]}): "
            f"try again later, {elsewhere}, or set HF_ENDPOINT to a reachable mirror"
        ) from None
    return Path(downloaded)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file (never a pickle) and drop the optional `transformer.` prefix."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise WeightsError(f"{path.name} is a pickle checkpoint and is never loaded: use a .safetensors file")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise WeightsError(f"{path} is not a readable safetensors file ({error}): download it again") from None
    return {key.removeprefix("transformer."): value for key, value in tensors.items()}


def convert(hf: dict[str, torch.Tensor], cfg: GPTConfig) -> dict[str, torch.Tensor]:
    """Map Hugging Face GPT-2 tensors onto our names: split c_attn into q/k/v, transpose Conv1D weights.

    Raises:
        WeightsError: a tensor is missing or has the wrong shape (named in the message).
    """
    ours: dict[str, torch.Tensor] = {}
    for key, value in hf.items():
        if IGNORED.search(key):
            continue
        if key.endswith(CONV1D_SUFFIXES):
            value = value.t()
        if ".attn.c_attn." in key:
            prefix, kind = key.split(".attn.c_attn.")
            if value.size(0) != 3 * cfg.n_embd:
                raise WeightsError(f"tensor {key} has shape {tuple(hf[key].shape)}, expected 3 x {cfg.n_embd} = {3 * cfg.n_embd} along the split axis")
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0), strict=True):
                ours[f"transformer.{prefix}.attn.{name}.{kind}"] = part.contiguous()
        else:
            ours[f"transformer.{key}"] = value.contiguous()
    return ours


def checked_state(model: GPT, weights: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's base tensors under `model`'s names, each present and of `model`'s shape.

    Raises:
        WeightsError: a tensor is missing, extra or of another shape (named in the message).
    """
    converted = convert(read_state_dict(weights), model.cfg)
    expected = {k: v for k, v in model.state_dict().items() if k.startswith("transformer.")}
    missing = sorted(set(expected) - set(converted))
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise WeightsError(f"{weights.name} lacks tensor {_hf_name(missing[0])}{more}: the checkpoint is incomplete or not GPT-2")
    for key, tensor in expected.items():
        if converted[key].shape != tensor.shape:
            raise WeightsError(
                f"tensor {_hf_name(key)} has shape {tuple(converted[key].shape)}, the model expects {tuple(tensor.shape)}: "
                "the checkpoint is for another model size"
            )
    unexpected = sorted(set(converted) - set(expected))
    if unexpected:
        raise WeightsError(f"{weights.name} has unexpected tensor {_hf_name(unexpected[0])}: it is not a GPT-2 checkpoint of this size")
    return converted


def load_model(spec: str, device: torch.device, progress: Callable[[int, int | None], None] | None = None, products_dtype: torch.dtype = torch.float32) -> GPT:
    """A pretrained GPT-2 (LM head tied; no class head yet) on `device`, in eval mode, its blocks' Linear
    weights in `products_dtype` (see GPT.store_products_in) and everything else in float32.

    The model is built on PyTorch's meta device (shapes, no numbers) and takes the checkpoint's
    tensors as they are read: no weight is drawn at random first, and none is held twice.
    """
    source = resolve(spec)
    weights = fetch(source, progress)
    with torch.device("meta"):
        model = GPT(source.config)
    state = {key: tensor.float() for key, tensor in checked_state(model, weights).items()}
    model.load_state_dict(state, assign=True)
    del state
    model.store_products_in(products_dtype)  # also lays q, k and v end to end again
    return model.to(device).eval()


def hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """The model's base weights in Hugging Face GPT-2 layout: what `convert` reads (fused c_attn, Conv1D weights transposed)."""
    ours = {k.removeprefix("transformer."): v for k, v in model.state_dict().items() if k.startswith("transformer.")}
    hf: dict[str, torch.Tensor] = {}
    for key, value in ours.items():
        if ".attn.q_proj." in key:
            prefix, kind = key.split(".attn.q_proj.")
            fused = torch.cat([ours[f"{prefix}.attn.{name}.{kind}"] for name in ("q_proj", "k_proj", "v_proj")])
            hf[f"{prefix}.attn.c_attn.{kind}"] = fused.t().contiguous() if kind == "weight" else fused
        elif ".attn.k_proj." not in key and ".attn.v_proj." not in key:
            hf[key] = value.t().contiguous() if key.endswith(CONV1D_SUFFIXES) else value.contiguous()
    return hf


def save_hf_checkpoint(model: GPT, folder: Path, prefix: str = "transformer.") -> Path:
    """`model`'s base as a Hugging Face layout folder (config.json + model.safetensors), as `--model FOLDER` takes."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({prefix + key: value for key, value in hf_state_dict(model).items()}, str(folder / WEIGHTS_FILE))
    (folder / "config.json").write_text(strict_json.dumps(model.cfg.to_hf()))
    return folder


def _hf_name(key: str) -> str:
    # Error messages use the checkpoint's own tensor names, which the user can look up.
    key = key.removeprefix("transformer.")
    return re.sub(r"attn\.[qkv]_proj\.", "attn.c_attn.", key)


def _config_from_shapes(path: Path) -> GPTConfig:
    # A bare .safetensors file has no config: infer the size from the embedding and block count.
    try:
        with safe_open(str(path), "pt") as handle:
            names = {key.removeprefix("transformer."): handle.get_slice(key).get_shape() for key in handle.keys()}
    except (SafetensorError, OSError) as error:
        raise WeightsError(f"{path} is not a readable safetensors file ({error}): download it again") from None
    if "wte.weight" not in names or "wpe.weight" not in names:
        raise WeightsError(f"{path.name} lacks wte.weight / wpe.weight: it is not a GPT-2 checkpoint")
    n_embd = names["wte.weight"][1]
    n_layer = len({k.split(".")[1] for k in names if k.startswith("h.")})
    for size in GPT2_SIZES.values():
        if (size.n_embd, size.n_layer) == (n_embd, n_layer):
            vocab, context = names["wte.weight"][0], names["wpe.weight"][0]
            return GPTConfig(str(path), vocab_size=vocab, context_length=context, n_embd=n_embd, n_layer=n_layer, n_head=size.n_head)
    raise WeightsError(f"{path.name} ({n_layer} layers of width {n_embd}) is not one of the four GPT-2 sizes: put it in a folder with its config.json")


def _progress_tqdm(progress: Callable[[int, int | None], None]) -> type:
    from tqdm.auto import tqdm

    class ReportingTqdm(tqdm):  # huggingface_hub reports byte progress through a tqdm class
        def update(self, n: float | None = 1) -> bool | None:
            shown = super().update(n)
            progress(int(self.n), int(self.total) if self.total else None)
            return shown

    return ReportingTqdm
