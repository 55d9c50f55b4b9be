"""Issue 5 in the app: bad input gets a message and the next action works; Stop in every phase; out of
memory; many visitors at once; what a visitor can reach (models, uploads, URLs, served files, login)."""

import json
import pickle
import re
import shutil
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import gradio as gr
import httpx
import pytest
import torch
from app_fixtures import SPAM, RunningApp, as_upload, running_app, train_controls, upload_bytes
from conftest import sms_zip_bytes, zip_of
from gradio_client import handle_file
from gradio_client.exceptions import AuthenticationError
from safetensors import safe_open
from safetensors.torch import save_file

import app
from engine.classifier import Classifier
from engine.config import LORA_TARGETS
from engine.memory import ADVICE
from engine.runs.lock import LOCK_FILE
from engine.runs.recorder import RunProgress
from scripts.load_test import hammer, local_client, sample_messages, wrong_answers
from ui.classify_tab import EXAMPLE_MESSAGES, MAX_BATCH_MESSAGES, ClassifyTab
from ui.controls import run_config
from ui.data_tab import DataTab
from ui.guards import exposure_warnings
from ui.lab import Lab
from ui.model_tab import ModelTab
from ui.parameters_tab import ParametersTab
from ui.settings import AppSettings
from ui.train_tab import TrainTab

# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture
def prepared_lab(tiny_model_dir: Path, tmp_path: Path, prepared_data: Path) -> Iterator[Lab]:
    """A lab whose data cache already holds the SMS splits and their summary (1045 training messages)."""
    cache = tmp_path / "cache"
    shutil.copytree(prepared_data, cache)
    lab = Lab(AppSettings(model=str(tiny_model_dir), device="cpu", out=tmp_path / "runs", cache=cache))
    yield lab
    lab.close()


def engine_answer(adapter: Path, message: str) -> dict[str, float]:
    return Classifier.load(adapter, torch.device("cpu")).classify([message])[0].probabilities


def assert_close(got: dict[str, float], want: dict[str, float]) -> None:
    assert set(got) == set(want) and all(abs(got[k] - want[k]) < 1e-5 for k in want), (got, want)


# --- messages ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        "Free entry 🎉🎉 in 2 a wkly comp 免费 مجاني бесплатно",
        "<|endoftext|> WIN cash now <|endoftext|>",
        "hello\x00\x07 world \x1b[31mred\x1b[0m \ufeff",
        bytes(range(256)).decode("latin-1"),
        "win a prize " * 90_000,  # ~1 MB
    ],
    ids=["emoji-and-scripts", "endoftext", "control-characters", "binary", "1MB"],
)
def test_any_text_is_classified_like_the_engine_does(trained_lab: Lab, adapter_dir: Path, message: str) -> None:
    fine_tuned, untrained, details = ClassifyTab(trained_lab).classify(message, None)
    want = Classifier.load(adapter_dir, torch.device("cpu")).classify([message])[0]
    assert_close(fine_tuned, want.probabilities)
    assert abs(sum(untrained.values()) - 1) < 1e-5 and details.startswith(f"{want.tokens} tokens read")
    assert ("cut to the model's length limit" in details) == want.truncated


@pytest.mark.parametrize(
    ("message", "problem"),
    [
        ("", "the message is empty: type a message"),
        ("  \n\t\u3000 ", "the message is empty: type a message"),
        ("\x00\x01\x02\u200b", "the message holds only control characters: type a message"),
        (None, "the message is not text"),
        (42, "the message is not text"),
    ],
    ids=["empty", "whitespace", "control-only", "none", "number"],
)
def test_unusable_messages_are_refused_and_the_next_one_works(trained_lab: Lab, message: Any, problem: str) -> None:
    with pytest.raises(gr.Error, match=problem):
        ClassifyTab(trained_lab).classify(message, None)
    answer = ClassifyTab(trained_lab).classify(SPAM, None)[0]
    with trained_lab.classify_lock:
        engine_answer = trained_lab.classifier_for(None)[1].classify([SPAM])[0].probabilities
    assert answer == pytest.approx(engine_answer, abs=1e-6)  # the next message gets the engine's own answer


def test_a_batch_with_bad_lines_answers_the_good_ones(trained_lab: Lab, adapter_dir: Path) -> None:
    lines = [SPAM, "   ", "see you at lunch 🍕", "\x00\x01", "<|endoftext|>"]
    summary, table = ClassifyTab(trained_lab).classify_many("\r\n".join(lines) + "\n\n", None)
    assert summary == ("3 messages classified; 1 skipped: line 4 holds only control characters: type a message to classify; 2 blank lines ignored.")
    assert table["line"].tolist() == [1, 3, 4, 5]  # numbered as typed; the blank lines are not rows
    assert table["note"].tolist()[2] == "skipped: line 4 holds only control characters: type a message to classify"
    classifier = Classifier.load(adapter_dir, torch.device("cpu"))
    for row in table.itertuples():
        if row.line == 4:
            assert row.label == ""
            continue
        want = classifier.classify(lines[row.line - 1])[0]
        assert row.label == want.label and abs(row.probability - want.probabilities[want.label]) < 1e-4
    with pytest.raises(gr.Error, match="no messages"):
        ClassifyTab(trained_lab).classify_many("\n\r\n", None)
    with pytest.raises(gr.Error, match=f"at most {MAX_BATCH_MESSAGES}"):
        ClassifyTab(trained_lab).classify_many("hi\n" * (MAX_BATCH_MESSAGES + 1), None)
    assert ClassifyTab(trained_lab).classify_many("hello", None)[1]["label"].tolist()[0] in ("ham", "spam")


# --- settings ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"rank": 0.0}, "rank must be a whole number from 1 to 2,048, got 0"),
        ({"rank": -4.0}, "rank must be a whole number from 1 to 2,048, got -4"),
        ({"rank": 2.5}, "rank must be a whole number from 1 to 2,048, got 2.5"),
        ({"rank": 64.0}, "rank 64 is larger than the input width of .*: choose a rank up to 32"),
        ({"alpha": 0.0}, "alpha must be a number above 0 and at most 10,000"),
        ({"alpha": -16.0}, "alpha must be a number above 0 and at most 10,000"),
        ({"alpha": float("nan")}, "alpha must be a number above 0 and at most 10,000, got nan"),
        ({"alpha": float("inf")}, "alpha must be a number above 0 and at most 10,000, got inf"),
        ({"lr": 0.0}, "learning rate must be from 1e-7 to 0.1, got 0"),
        ({"lr": -1e-3}, "learning rate must be from 1e-7 to 0.1, got -0.001"),
        ({"lr": 1e30}, "learning rate must be from 1e-7 to 0.1, got 1e\\+30"),
        ({"epochs": 0.0}, "epochs must be a whole number from 1 to 1,000"),
        ({"epochs": 1.5}, "epochs must be a whole number from 1 to 1,000"),
        ({"batch_size": 2000.0}, "batch size 2000 is larger than the 1045 training messages: choose at most 1045"),
        ({"batch_size": 0.0}, "batch_size must be a whole number from 1 to 4,096"),
        ({"max_steps": -1.0}, "max_steps must be a whole number from 1 to 10,000,000"),
        ({"eval_freq": 0.0}, "eval_freq must be a whole number from 1 to 10,000,000"),
        # numbers far outside 64 bits are refused by name, never an internal fault
        ({"rank": 1e30}, "rank must be a whole number from 1 to 2,048, got 1000000000000000019884624838656"),
        ({"alpha": 1e300}, "alpha must be a number above 0 and at most 10,000, got 1e\\+300"),
        ({"epochs": 1e30}, "epochs must be a whole number from 1 to 1,000"),
        ({"batch_size": 1e19}, "batch_size must be a whole number from 1 to 4,096"),
        ({"max_steps": 99999999999999999999999.0}, "max_steps must be a whole number from 1 to 10,000,000"),
        ({"eval_freq": 2.0**64}, "eval_freq must be a whole number from 1 to 10,000,000"),
        ({"targets": []}, "targets is empty"),
        ({"scaling": "sqrt"}, "scaling must be one of alpha, alpha_over_rank"),
        ({"preset_name": "fastest"}, "unknown preset 'fastest'"),
        ({"model": "/etc"}, "unknown model '/etc': choose one of gpt2-small, .*--model FOLDER"),
        ({"model": "https://example.com/model"}, "unknown model"),
    ],
    ids=lambda value: "-".join(f"{k}={v}" for k, v in value.items()) if isinstance(value, dict) else None,
)
def test_bad_settings_are_refused_before_a_run_starts(prepared_lab: Lab, changes: dict[str, Any], problem: str) -> None:
    with pytest.raises(gr.Error, match=problem):
        TrainTab(prepared_lab).start_training(replace(train_controls(prepared_lab.settings.model), **changes))
    assert prepared_lab.scheduler.views() == []  # nothing queued, nothing half-done
    assert [path.name for path in prepared_lab.settings.out.iterdir()] == [LOCK_FILE]  # no run folder, only the app's lock
    # the next action works: the Parameters tab answers for the same model
    assert ParametersTab(prepared_lab).parameters(prepared_lab.settings.model, 4, list(LORA_TARGETS), False)[1] is not None


def test_max_steps_zero_means_every_epoch(prepared_lab: Lab) -> None:
    cfg = run_config(prepared_lab.settings, train_controls(prepared_lab.settings.model, max_steps=0.0), Path("unused"))
    assert cfg.train.max_steps is None  # the label says so: "Stop after steps (0: all)"


@pytest.mark.parametrize("rank", [0, 100], ids=["zero", "wider-than-the-layer"])
def test_the_parameters_tab_names_a_bad_rank(lab: Lab, rank: int) -> None:
    with pytest.raises(gr.Error, match="rank"):
        ParametersTab(lab).parameters(lab.settings.model, rank, list(LORA_TARGETS), False)


# --- data uploads --------------------------------------------------------------------------------


BAD_DATA = {
    "zip-without-member": ("sms.zip", lambda: zip_of({"readme.txt": b"hello"}), "has no SMSSpamCollection file inside"),
    "html-saved-as-zip": ("sms.zip", lambda: b"<!DOCTYPE html><html><body>502 Bad Gateway</body></html>", "it is an HTML page"),
    "html-saved-as-tsv": ("SMSSpamCollection", lambda: b"<html><body>Not found</body></html>", "is an HTML page, not the dataset"),
    "truncated-zip": ("sms.zip", lambda: sms_zip_bytes()[: len(sms_zip_bytes()) // 2], "is not a valid zip .*download it again"),
    "missing-tabs": ("SMSSpamCollection", lambda: b"ham Are we still on for lunch?\nspam WIN now\n", "line 1: no tab between label and message"),
    "unknown-labels": ("SMSSpamCollection", lambda: b"ham\thi there\neggs\tbacon\n", "line 2: unknown label 'eggs'"),
    "not-utf8": ("SMSSpamCollection", lambda: b"ham\tcaf\xe9 au lait\n", r"not UTF-8 text \(bad byte on line 1\): save it as UTF-8"),
    "one-class": ("SMSSpamCollection", lambda: b"".join(b"ham\tmessage %d\n" % i for i in range(50)), "at least two classes are needed"),
    "empty": ("SMSSpamCollection", lambda: b"\n\n", "holds no messages"),
}


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_bad_data_uploads_name_the_problem_and_keep_the_data(lab: Lab, case: str) -> None:
    name, data, problem = BAD_DATA[case]
    with pytest.raises(gr.Error, match=problem):
        DataTab(lab).upload_data(upload_bytes(data(), name))
    assert DataTab(lab).show_data()[0].startswith("No data yet")  # nothing half-prepared was kept
    assert not (lab.settings.cache / "train.csv").exists()


def test_blank_lines_crlf_and_a_header_are_tolerated_and_the_next_upload_works(lab: Lab, sms_zip: Path) -> None:
    with zipfile.ZipFile(sms_zip) as archive:
        lines = archive.read("SMSSpamCollection").decode("utf-8").splitlines()
    messy = "label\ttext\r\n" + "\r\n\r\n".join(lines) + "\r\n\r\n"
    with pytest.raises(gr.Error):
        DataTab(lab).upload_data(upload_bytes(b"ham\thi\n", "SMSSpamCollection"))  # one class: refused first...
    status, counts, _, _ = DataTab(lab).upload_data(upload_bytes(messy.encode("utf-8"), "messy.tsv"))  # ...then a good file works
    assert status == "Data ready from the uploaded file messy.tsv" and counts.data["messages"][0] == 5574


def test_an_upload_over_the_size_limit_is_refused(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    import engine.data.prepared

    monkeypatch.setattr(engine.data.prepared, "MAX_SOURCE_BYTES", 10_000)
    with pytest.raises(gr.Error, match="over the 10,000-byte limit"):
        DataTab(lab).upload_data(as_upload(Path(__file__).parent / "fixtures" / "sms_spam_collection.zip"))


@pytest.mark.parametrize(
    "path",
    ["/etc/passwd", str(Path(__file__)), "http://127.0.0.1:9/sms.zip", "https://example.com/sms.zip", "../../etc/hosts"],
    ids=["system-file", "repository-file", "local-url", "url", "relative"],
)
def test_only_gradio_s_upload_copies_are_read(lab: Lab, path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import engine.data.prepared

    read: list[Any] = []
    monkeypatch.setattr(engine.data.prepared, "read_source_file", lambda source: read.append(source))
    monkeypatch.setattr(engine.data.prepared, "fetch_zip", lambda *args, **kwargs: read.append(args))
    with pytest.raises(gr.Error, match="only files uploaded through this page are read"):
        DataTab(lab).upload_data(path)
    with pytest.raises(gr.Error, match="only files uploaded through this page are read"):
        ClassifyTab(lab).classify(SPAM, path)
    assert read == []


def test_a_folder_inside_the_upload_area_is_not_read_either(lab: Lab, prepared_data: Path) -> None:
    with pytest.raises(gr.Error, match="only files uploaded through this page are read"):
        DataTab(lab).upload_data(as_upload(prepared_data))  # a prepared folder would otherwise be taken as the splits


# --- adapter uploads -----------------------------------------------------------------------------


def rewritten_adapter(adapter_dir: Path, change) -> bytes:
    """The adapter's tensors file with its embedded config (and tensors) changed by `change(config, tensors)`."""
    with safe_open(str(adapter_dir / "adapter.safetensors"), "pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        config = json.loads(handle.metadata()["lora_lab_config"])
    change(config, tensors)
    buffer = adapter_dir.parent / f"rewritten-{time.monotonic_ns()}.safetensors"
    save_file(tensors, str(buffer), metadata={"lora_lab_config": json.dumps(config)})
    data = buffer.read_bytes()
    buffer.unlink()
    return data


class Trap:
    """Unpickling this creates a file: the test fails if anything ever unpickles an upload."""

    path = ""

    def __reduce__(self):
        return (Path(self.path).touch, ())


def pickled_trap(tmp_path: Path) -> bytes:
    trap = Trap()
    trap.path = str(tmp_path / "UNPICKLED")
    return pickle.dumps(trap)


def wider_base(config: dict, tensors: dict) -> None:
    config["model"]["n_embd"] = 64


def other_rank(config: dict, tensors: dict) -> None:
    config["lora"]["rank"] = 8


BAD_ADAPTERS = {
    "corrupt": ("adapter.safetensors", lambda a, t: b"\x00garbage" * 100, "is not a readable safetensors file .*retrain or re-download"),
    "truncated": ("adapter.safetensors", lambda a, t: (a / "adapter.safetensors").read_bytes()[:5000], "is not a readable safetensors file"),
    "pickle-pth": ("adapter.pth", lambda a, t: pickled_trap(t), "is a pickle file and is never loaded"),
    "pickle-bin": ("adapter.bin", lambda a, t: pickled_trap(t), "is a pickle file and is never loaded"),
    # A config that does not match its own tensors is refused from the file's header, before any model is built.
    "config-says-another-base-size": ("adapter.safetensors", lambda a, t: rewritten_adapter(a, wider_base), r"does not fit rank 16, width 64 and 2 classes"),
    "config-says-another-rank": ("adapter.safetensors", lambda a, t: rewritten_adapter(a, other_rank), r"does not fit rank 8, width 32 .*other settings"),
    "unknown-fields": ("adapter.safetensors", lambda a, t: rewritten_adapter(a, lambda c, _: c.update(surprise=1)), r"unknown fields \['surprise'\]"),
    "newer-format": ("adapter.safetensors", lambda a, t: rewritten_adapter(a, lambda c, _: c.update(format_version=99)), "newer than this LoRA Lab"),
    "base-not-offered": (
        "adapter.safetensors",
        lambda a, t: rewritten_adapter(a, lambda c, _: c.update(base_model="/srv/secret-model")),
        "trained on '/srv/secret-model', which this app does not offer .*--model",
    ),
    "no-config": ("adapter.safetensors", lambda a, t: _plain_safetensors(t), "carries no LoRA Lab config"),
}


def _plain_safetensors(tmp_path: Path) -> bytes:
    save_file({"x": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    return (tmp_path / "plain.safetensors").read_bytes()


@pytest.mark.parametrize("case", list(BAD_ADAPTERS))
def test_bad_adapter_uploads_are_refused_and_classify_still_works(trained_lab: Lab, adapter_dir: Path, tmp_path: Path, case: str) -> None:
    name, data, problem = BAD_ADAPTERS[case]
    with pytest.raises(gr.Error, match=problem):
        ClassifyTab(trained_lab).classify(SPAM, upload_bytes(data(adapter_dir, tmp_path), name))
    assert not (tmp_path / "UNPICKLED").exists()
    assert_close(ClassifyTab(trained_lab).classify(SPAM, None)[0], engine_answer(adapter_dir, SPAM))  # the trained adapter still answers


def test_an_adapter_for_the_model_given_at_start_is_loaded_from_an_upload(trained_lab: Lab, adapter_dir: Path) -> None:
    fine_tuned, _, details = ClassifyTab(trained_lab).classify(SPAM, as_upload(adapter_dir / "adapter.safetensors"))
    assert_close(fine_tuned, engine_answer(adapter_dir, SPAM))
    assert "adapter.safetensors" in details


# --- models: the four sizes and --model, nothing typed ---------------------------------------------


def test_the_model_dropdown_offers_the_sizes_and_the_command_line_folder_only(settings: AppSettings, lab: Lab) -> None:
    demo = app.build_ui(settings, lab)
    (dropdown,) = [block for block in demo.blocks.values() if isinstance(block, gr.Dropdown) and block.elem_id == "model"]
    assert dropdown.allow_custom_value is False
    assert [value for _, value in dropdown.choices] == ["gpt2-small", "gpt2-medium", "gpt2-large", "gpt2-xl", settings.model]
    for typed in ("/etc", "../tiny", "https://huggingface.co/gpt2", "gpt2-huge"):
        with pytest.raises(gr.Error, match="unknown model"):
            ModelTab(lab).load_weights(typed)
        with pytest.raises(gr.Error, match="unknown model"):
            ParametersTab(lab).parameters(typed, 4, list(LORA_TARGETS), False)


# --- Stop during the download, training and evaluation ---------------------------------------------


def stop_when(condition, stop, timeout: float = 30.0) -> threading.Thread:
    def watch() -> None:
        deadline = time.monotonic() + timeout
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.01)
        stop()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_stop_during_the_data_download(settings: AppSettings, http_server) -> None:
    http_server.routes["/sms.zip"] = (200, sms_zip_bytes(), {})
    http_server.trickle["/sms.zip"] = 0.02
    lab = Lab(replace(settings, device="auto", data_urls=(http_server.url("/sms.zip"),)))

    def partial() -> bool:  # the temporary file beside the zip has received bytes
        try:
            return any(p.stat().st_size > 0 for p in settings.cache.iterdir())
        except OSError:
            return False

    watcher = stop_when(partial, DataTab(lab).stop_download)
    with pytest.warns(UserWarning, match="Download stopped; nothing was kept"):
        status, counts, _, _ = DataTab(lab).download_data()
    watcher.join()
    assert status.startswith("Download stopped; nothing was kept. Press Download to start again.") and counts is None
    assert not [p for p in settings.cache.iterdir() if p.is_file()]  # the partial zip is gone
    http_server.trickle.clear()
    status, counts, _, _ = DataTab(lab).download_data()  # the next Download works
    assert status.startswith("Data ready") and counts.data["messages"][0] == 5574


@pytest.mark.slow
def test_stop_while_a_run_downloads_its_data(settings: AppSettings, http_server) -> None:
    http_server.routes["/sms.zip"] = (200, sms_zip_bytes(), {})
    http_server.trickle["/sms.zip"] = 0.05
    lab = Lab(AppSettings(model=settings.model, device="cpu", out=settings.out, cache=settings.cache, data_urls=(http_server.url("/sms.zip"),)))
    try:
        run_id = TrainTab(lab).start_training(train_controls(settings.model))[12].value
        deadline = time.monotonic() + 300
        while "downloading the data from" not in TrainTab(lab).poll(run_id, None)[1]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert TrainTab(lab).stop_training(run_id) == "Stopping after the current step..."
        assert lab.scheduler.wait(timeout=60)
        status = TrainTab(lab).poll(run_id, None)[1]
        assert status.startswith("Stopped in ")  # before training: no step to name
        assert DataTab(lab).show_data()[0].startswith("No data yet")  # no partial download kept
    finally:
        lab.close()


@pytest.mark.slow
def test_a_run_stopped_before_training_keeps_an_adapter_classify_can_use(lab: Lab, sms_zip: Path) -> None:
    DataTab(lab).upload_data(as_upload(sms_zip))
    run_id = TrainTab(lab).start_training(train_controls(lab.settings.model))[12].value
    deadline = time.monotonic() + 60
    while lab.scheduler.view(run_id).run.state == "queued":  # taken by a worker, which is still starting
        assert time.monotonic() < deadline
        time.sleep(0.01)
    TrainTab(lab).stop_training(run_id)  # the worker stops at its first check, before any step
    assert lab.scheduler.wait(timeout=300)
    polled = TrainTab(lab).poll(run_id, None)
    status, files = polled[1], polled[11]
    assert status.startswith("Stopped") and lab.scheduler.view(run_id).progress.step == 0
    assert [Path(f).name for f in files] == ["adapter.safetensors", "run.json"]
    with pytest.raises(gr.Error, match="No finished run yet"):  # a stopped run never answers unasked (ui/answering.py)
        ClassifyTab(lab).classify(SPAM, None)
    downloaded = as_upload(Path(files[0]))  # its adapter, downloaded and uploaded on Classify, is usable
    assert set(ClassifyTab(lab).classify(SPAM, downloaded)[0]) == {"ham", "spam"}


# --- out of memory -------------------------------------------------------------------------------

OOM_ERRORS = [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB"), RuntimeError("MPS backend out of memory"), MemoryError()]


@pytest.mark.parametrize("error", OOM_ERRORS, ids=["cuda", "mps", "host"])
def test_out_of_memory_while_classifying_gives_advice_and_the_app_recovers(trained_lab: Lab, monkeypatch: pytest.MonkeyPatch, error: BaseException) -> None:
    def exhausted(*args: Any, **kwargs: Any) -> Any:
        raise error

    with monkeypatch.context() as patch:
        patch.setattr(Classifier, "compare_with_base", exhausted)
        patch.setattr(Classifier, "classify", exhausted)
        with pytest.raises(gr.Error, match=re.escape(f"out of memory on cpu while classifying: {ADVICE}")):
            ClassifyTab(trained_lab).classify(SPAM, None)
        with pytest.raises(gr.Error, match="out of memory on cpu while classifying: choose a smaller model size or a smaller batch size"):
            ClassifyTab(trained_lab).classify_many(SPAM, None)
        with pytest.raises(gr.Error, match=re.escape(f"out of memory on cpu while explaining: {ADVICE}")):
            ClassifyTab(trained_lab).explain(SPAM, None)
    assert set(ClassifyTab(trained_lab).classify(SPAM, None)[0]) == {"ham", "spam"}


def test_out_of_memory_while_loading_weights_gives_advice_and_the_app_recovers(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    import ui.model_tab

    with monkeypatch.context() as patch:
        patch.setattr(ui.model_tab, "load_model", lambda *a, **k: (_ for _ in ()).throw(torch.OutOfMemoryError("CUDA out of memory")))
        with pytest.raises(gr.Error, match=re.escape(f"out of memory on cpu while loading {lab.settings.model}: {ADVICE}")):
            ModelTab(lab).load_weights(lab.settings.model)
    assert "2 layers" in ModelTab(lab).load_weights(lab.settings.model)[0]


# --- the launched app: gradio_client, many visitors, what is served, login -----------------------------


@pytest.fixture
def served(trained_lab: Lab) -> Iterator[RunningApp]:
    with running_app(trained_lab.settings, lab=trained_lab) as running:
        yield running


def test_bad_input_through_gradio_client(served: RunningApp, settings: AppSettings, sms_zip: Path) -> None:
    client = local_client(served.url)
    for message, problem in [("", "empty"), (" \t ", "empty"), ("\x00\x01", "control characters")]:
        with pytest.raises(Exception, match=problem):
            client.predict(message, None, api_name="/classify")
    fine_tuned, _, details = client.predict("win a prize 🎉 " * 80_000, None, api_name="/classify")  # ~1 MB
    assert fine_tuned["label"] in ("ham", "spam") and "cut to the model's length limit" in details
    with pytest.raises(Exception, match="Value 0 is less than minimum value 1"):  # the slider's own check
        client.predict(model=settings.model, rank=0, api_name="/start")
    with pytest.raises(Exception, match="learning rate must be from 1e-7 to 0.1"):
        client.predict(model=settings.model, lr=0, api_name="/start")
    with pytest.raises(Exception, match="rank 40 is larger than the input width"):
        client.predict(model=settings.model, rank=40, api_name="/start")
    with pytest.raises(Exception, match="not in the list of choices"):  # the dropdown itself refuses a typed folder
        client.predict("/etc", api_name="/load_weights")
    with pytest.raises(Exception, match="no tab between label and message"):
        client.predict(handle_file(str(Path(__file__))), api_name="/upload_data")
    with pytest.raises(Exception, match=r"Invalid file type.*\.safetensors"):  # Gradio checks file_types first
        client.predict(SPAM, handle_file(str(write_bytes(settings.out.parent / "adapter.pth", b"\x80\x04N."))), api_name="/classify")
    # a URL in place of an upload is not fetched
    for endpoint, arguments in [("/upload_data", ()), ("/classify", (SPAM,))]:
        remote = {"path": "https://example.com/sms.zip", "meta": {"_type": "gradio.FileData"}, "orig_name": "sms.zip"}
        with pytest.raises(Exception, match="does not fetch URLs"):
            client.predict(*arguments, remote, api_name=endpoint)
    # a path typed in place of an upload (gradio_client would upload it, so plain HTTP) is not read
    for endpoint, arguments in [("upload_data", []), ("classify", [SPAM])]:
        answer = raw_call(served.url, endpoint, [*arguments, {"path": str(sms_zip), "meta": {"_type": "gradio.FileData"}}])
        assert answer.startswith("event: error"), answer  # Gradio refuses it before any handler runs
    assert DataTab(served.lab).show_data()[0].startswith("No data yet")
    summary, table = client.predict(f"{SPAM}\n\x00\x01\nsee you at lunch", None, api_name="/classify_many")  # one bad line among good ones
    labels = [row[1] for row in table["data"]]
    assert labels[0] in ("ham", "spam") and labels[1] == "" and labels[2] in ("ham", "spam")
    assert table["data"][1][3].startswith("skipped: line 2 holds only control characters") and summary.startswith("2 messages classified")
    # and after all that, the app still works
    assert client.predict(handle_file(str(sms_zip)), api_name="/upload_data")[0].startswith("Data ready")
    assert client.predict(SPAM, None, api_name="/classify")[0]["label"] in ("ham", "spam")


def raw_call(url: str, api_name: str, data: list[Any]) -> str:
    """An API call over plain HTTP, as any script could send it; returns the event stream's text."""
    with httpx.Client(base_url=url, timeout=30) as http:
        event = http.post(f"gradio_api/call/{api_name}", json={"data": data}).json()["event_id"]
        return http.get(f"gradio_api/call/{api_name}/{event}").text


def write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_uploads_over_the_launch_limit_are_refused(trained_lab: Lab, tmp_path: Path) -> None:
    small = AppSettings(model=trained_lab.settings.model, device="cpu", out=trained_lab.settings.out, cache=trained_lab.settings.cache, max_upload_mb=1)
    big = write_bytes(tmp_path / "big.zip", b"\0" * (2 * 1024 * 1024))
    with running_app(small, lab=trained_lab) as running:
        client = local_client(running.url)
        with pytest.raises(Exception, match="(?i)size|large|413"):
            client.predict(handle_file(str(big)), api_name="/upload_data")
        assert client.predict(SPAM, None, api_name="/classify")[0]["label"] in ("ham", "spam")


@pytest.mark.slow
def test_twenty_visitors_classifying_at_once_all_get_the_engine_s_answer(served: RunningApp, adapter_dir: Path, prepared_data: Path) -> None:
    report = hammer(served.url, sample_messages(prepared_data), callers=20, requests=200)
    print(report.summary())
    assert report.errors == []
    assert len(report.answers) == 200
    assert wrong_answers(report, adapter_dir) == []


@pytest.mark.slow
def test_classify_stays_fast_while_training_runs(served: RunningApp, settings: AppSettings, sms_zip: Path) -> None:
    demo_fns = {fn.api_name: fn for fn in app.build_ui(settings, served.lab).fns.values()}
    assert demo_fns["classify"].concurrency_id == demo_fns["classify_many"].concurrency_id == "classify"
    assert demo_fns["classify"].concurrency_id != demo_fns["start"].concurrency_id

    client = local_client(served.url)
    client.predict(handle_file(str(sms_zip)), api_name="/upload_data")
    client.predict(SPAM, None, api_name="/classify")  # the classifier is loaded once
    run_id = client.predict(model=settings.model, epochs=50, max_steps=0, api_name="/start")[12]["value"]
    step = lambda: (served.lab.scheduler.view(run_id).progress or RunProgress()).step
    deadline = time.monotonic() + 300
    while not step():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    before = step()
    for message in EXAMPLE_MESSAGES:  # answered while the run trains, not queued behind it
        assert client.predict(message, None, api_name="/classify")[0]["label"] in ("ham", "spam")
    while step() == before:  # and the run went on training meanwhile
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert served.lab.scheduler.view(run_id).run.state == "running"
    client.predict(run_id, api_name="/stop")


def test_only_run_outputs_are_served(served: RunningApp) -> None:
    record = served.lab.settings.out / "20250101-000000" / "run.json"
    record.write_text("{}")
    repository_file = Path(app.__file__).resolve()
    with httpx.Client(base_url=served.url) as http:
        assert http.get(f"gradio_api/file={record.resolve()}").status_code == 200
        for forbidden in (repository_file, Path("/etc/passwd"), served.lab.settings.cache / "train.csv"):
            assert http.get(f"gradio_api/file={forbidden}").status_code in (403, 404), forbidden


def test_login_is_asked_when_auth_is_given(trained_lab: Lab) -> None:
    with running_app(trained_lab.settings, auth=("demo", "s3cret:pw"), lab=trained_lab) as running:
        with pytest.raises(AuthenticationError, match="credentials were not provided"):
            local_client(running.url).predict(SPAM, None, api_name="/classify")
        with pytest.raises(ValueError, match="Could not login"):
            local_client(running.url, ("demo", "wrong")).predict(SPAM, None, api_name="/classify")
        client = local_client(running.url, ("demo", "s3cret:pw"))
        assert client.predict(SPAM, None, api_name="/classify")[0]["label"] in ("ham", "spam")


# --- the command line -------------------------------------------------------------------------------


def test_command_line_binds_locally_and_warns_when_exposed(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # each app below owns its runs folder for good (a test's app is never stopped): one each, here
    launched: list[dict[str, Any]] = []
    monkeypatch.setattr(
        app, "launch", lambda demo, settings, host, port, share, auth=None, **options: launched.append(dict(host=host, share=share, auth=auth)) or ""
    )
    monkeypatch.setattr(app, "has_desktop", lambda: False)  # no browser opens from a test
    monkeypatch.delenv("LORA_LAB_AUTH", raising=False)
    app.main([])
    assert launched[-1] == {"host": "127.0.0.1", "share": False, "auth": None} and not caplog.records
    app.main(["--share", "--out", "shared"])
    assert "--share: a public gradio.live link" in caplog.text and "add --auth USER:PASSWORD" in caplog.text
    caplog.clear()
    app.main(["--host", "0.0.0.0", "--auth", "demo:pw", "--out", "exposed"])
    assert "listening on 0.0.0.0: anyone who can reach this machine" in caplog.text and "--auth" not in caplog.text
    assert launched[-1] == {"host": "0.0.0.0", "share": False, "auth": ("demo", "pw")}
    assert all(record.levelname == "WARNING" for record in caplog.records)


def test_auth_and_upload_limit_options(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("LORA_LAB_AUTH", raising=False)
    assert app.parse_args(["--auth", "ann:pa:ss"]).auth == ("ann", "pa:ss")
    assert app.parse_args([]).max_upload_mb == app.MAX_UPLOAD_MB
    monkeypatch.setenv("LORA_LAB_AUTH", "bob:secret")
    assert app.parse_args([]).auth == ("bob", "secret")
    for bad in (["--auth", "nocolon"], ["--auth", ":pw"], ["--auth", "user:"], ["--max-upload-mb", "0"]):
        with pytest.raises(SystemExit):
            app.parse_args(bad)
    assert "USER:PASSWORD" in capsys.readouterr().err
    assert exposure_warnings("localhost", False, None) == []
