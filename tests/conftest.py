"""Shared fixtures: the shipped SMS zip, a local HTTP server, tiny GPT-2 checkpoints, prepared splits.

Everything is offline: data comes from tests/fixtures, models are random and tiny, servers bind 127.0.0.1.
"""

import functools
import http.server
import io
import json
import os
import sys
import threading
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a test that forgets a fixture must not reach the internet
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import settings  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from engine.adapter import METADATA_KEY, TENSORS_FILE  # noqa: E402
from engine.config import GPTConfig  # noqa: E402
from engine.model import GPT  # noqa: E402
from engine.weights import save_hf_checkpoint  # noqa: E402

# Two shared cores make single examples slow now and then: judge properties, not speed.
settings.register_profile("lora-lab", deadline=None, max_examples=60)
settings.load_profile("lora-lab")

pytest_plugins = ["app_fixtures"]  # the app's `settings` and `lab` fixtures, shared by the app tests

FIXTURES = Path(__file__).parent / "fixtures"
SMS_ZIP = FIXTURES / "sms_spam_collection.zip"
TINY = GPTConfig("tiny", vocab_size=50257, context_length=256, n_embd=32, n_layer=2, n_head=4)


def randomise_lora(model: torch.nn.Module, std: float) -> None:
    """Random LoRA B matrices: a fresh B is zero, which hides A's gradient and any mix-up of adapters."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, std)


def changed_adapter(adapter_dir: Path, target: Path, change: Callable[[dict, dict[str, torch.Tensor]], None]) -> Path:
    """A copy of the adapter saved as `target`, its config and tensors edited by `change(config, tensors)`:
    how the tests make an adapter that lies, is broken or is bloated."""
    with safe_open(str(adapter_dir / TENSORS_FILE), "pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        config = json.loads(handle.metadata()[METADATA_KEY])
    change(config, tensors)
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(target), metadata={METADATA_KEY: json.dumps(config)})
    return target


def broken_adapter(adapter_dir: Path, target: Path, key: str, value: float = float("nan")) -> Path:
    """The adapter with the first value of tensor `key` made `value` (NaN unless told)."""

    def poison(_: dict, tensors: dict[str, torch.Tensor]) -> None:
        tensors[key] = tensors[key].clone()
        tensors[key].view(-1)[0] = value

    return changed_adapter(adapter_dir, target, poison)


def write_hf_checkpoint(folder: Path, cfg: GPTConfig = TINY, seed: int = 0, prefix: str = "transformer.", model: GPT | None = None) -> Path:
    """A GPT-2 (random from `seed`, or `model`) saved as config.json + model.safetensors, the layout `--model PATH` takes."""
    torch.manual_seed(seed)
    return save_hf_checkpoint(model or GPT(cfg), folder, prefix)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_hf_checkpoint(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="session")
def sms_zip() -> Path:
    return SMS_ZIP


@pytest.fixture(scope="session")
def prepared_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real SMS data, balanced and split into train/validation/test CSVs."""
    from engine.data.prepared import prepare

    folder = tmp_path_factory.mktemp("sms-prepared")
    prepare(str(SMS_ZIP), folder)
    return folder


def small_csv(folder: Path, per_class: int = 40) -> Path:
    """A headered CSV of the first `per_class` ham and spam messages: the custom-data path, and fast."""
    from engine.data.prepared import read_source_file

    messages = read_source_file(SMS_ZIP)
    rows = pd.concat([messages[messages["Label"] == name].head(per_class) for name in ("ham", "spam")])
    path = folder / "small.csv"
    rows.rename(columns={"Label": "label", "Text": "text"})[["label", "text"]].to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """small_csv prepared (56 / 8 / 16 messages): for runs that test the queue, the workers or the app, not the data."""
    from engine.data.prepared import prepare

    folder = tmp_path_factory.mktemp("small-data")
    prepare(str(small_csv(folder)), folder / "prepared")
    return folder / "prepared"


@dataclass
class LocalServer:
    """An HTTP server on 127.0.0.1 with canned responses per path, counting requests."""

    base: str
    routes: dict[str, tuple[int, bytes, dict[str, str]]] = field(default_factory=dict)
    hits: list[str] = field(default_factory=list)
    stall_after: dict[str, int] = field(default_factory=dict)  # path -> bytes sent before going silent
    trickle: dict[str, float] = field(default_factory=dict)  # path -> seconds between 4 KiB chunks (a slow link)

    def url(self, path: str) -> str:
        return self.base + path


class _Handler(http.server.BaseHTTPRequestHandler):
    server_state: LocalServer

    def do_HEAD(self) -> None:
        status, body, headers = self.server_state.routes.get(self.path, (404, b"", {}))
        self.server_state.hits.append("HEAD " + self.path)
        self.send_response(status)
        for key, value in {"Content-Length": str(len(body)), **headers}.items():
            self.send_header(key, value)
        self.end_headers()

    def do_GET(self) -> None:
        state = self.server_state
        state.hits.append(self.path)
        status, body, headers = state.routes.get(self.path, (404, b"not found", {}))
        self.send_response(status)
        for key, value in {"Content-Length": str(len(body)), **headers}.items():
            self.send_header(key, value)
        self.end_headers()
        stall = state.stall_after.get(self.path)
        if stall is not None:
            self.wfile.write(body[:stall])
            self.wfile.flush()
            threading.Event().wait(5)  # longer than the client's read timeout in the tests
            return
        pause = state.trickle.get(self.path)
        if pause is not None:
            try:
                for start in range(0, len(body), 4096):
                    self.wfile.write(body[start : start + 4096])
                    self.wfile.flush()
                    threading.Event().wait(pause)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client stopped the download
            return
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[LocalServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True  # a stalled response must not block shutdown
    state = LocalServer(f"http://127.0.0.1:{server.server_address[1]}")
    server.RequestHandlerClass = type("Handler", (_Handler,), {"server_state": state})
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


@functools.cache
def sms_zip_bytes() -> bytes:
    return SMS_ZIP.read_bytes()


def tiny_run_config(model_dir: Path, data_dir: Path, out_dir: Path, **train_changes: object):
    """A recommended-preset run on the tiny model and the real SMS splits, short enough for a test."""
    from engine.config import RunConfig

    cfg = RunConfig.from_preset("recommended", model=str(model_dir), data=str(data_dir), out_dir=str(out_dir), device="cpu")
    return cfg.with_train(**{"epochs": 1, "max_steps": 40, "eval_freq": 10, "lr": 3e-3, **train_changes})


@pytest.fixture(scope="session")
def trained_run(tiny_model_dir: Path, prepared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[object, list]:
    """(RunConfig, events) of one finished tiny run; its adapter is in OUT/adapter."""
    from engine.runs.run import fine_tune

    cfg = tiny_run_config(tiny_model_dir, prepared_data, tmp_path_factory.mktemp("run"))
    return cfg, list(fine_tune(cfg))


@pytest.fixture(scope="session")
def adapter_dir(trained_run: tuple[object, list]) -> Path:
    """The adapter folder of the finished tiny run."""
    return trained_run[1][-1].adapter_dir


def zip_of(members: dict[str, bytes]) -> bytes:
    """A zip holding `members` (name -> bytes), for zips with and without the SMS file."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()
