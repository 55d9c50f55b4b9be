"""What a hostile or unlucky visitor meets in the app: uploads that pile up, the login page, Gradio's
URL-fetching file route, broken adapters (NaN) and runs that diverge."""

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import gradio as gr
import httpx
import pytest
import safehttpx
import torch
from app_fixtures import SPAM, as_upload, running_app, train_controls, upload_bytes
from conftest import broken_adapter
from gradio_client import handle_file

import app
import engine.train
from engine.errors import TrainingDiverged
from engine.runs.history import read_run
from engine.runs.run import fine_tune
from scripts.load_test import local_client
from ui.classify_tab import ClassifyTab
from ui.controls import run_config
from ui.data_tab import DataTab
from ui.lab import Lab
from ui.settings import UPLOAD_LIFETIME_S, UPLOAD_SWEEP_S, AppSettings

# --- uploads -------------------------------------------------------------------------------------------


def test_uploads_are_deleted_an_hour_after_they_arrive(settings: AppSettings, lab: Lab) -> None:
    assert app.build_ui(settings, lab).delete_cache == (UPLOAD_SWEEP_S, UPLOAD_LIFETIME_S) == (300, 3600)


def test_refused_uploads_are_deleted_at_once(trained_lab: Lab, tmp_path: Path) -> None:
    data = Path(upload_bytes(b"ham\thi\neggs\tbacon\n", "SMSSpamCollection"))
    with pytest.raises(gr.Error, match="unknown label 'eggs'"):
        DataTab(trained_lab).upload_data(str(data))
    adapter = Path(upload_bytes(b"\x00garbage" * 100, "adapter.safetensors"))
    with pytest.raises(gr.Error, match="is not a readable safetensors file"):
        ClassifyTab(trained_lab).classify(SPAM, str(adapter))
    assert not data.exists() and not adapter.exists()
    with pytest.raises(gr.Error, match="the uploaded file is no longer on the server .*upload an adapter.safetensors file again"):
        ClassifyTab(trained_lab).classify(SPAM, str(adapter))  # what a page still showing it gets


def test_a_data_upload_is_deleted_once_read(lab: Lab, sms_zip: Path) -> None:
    upload = Path(as_upload(sms_zip))
    assert DataTab(lab).upload_data(str(upload))[0].startswith("Data ready")
    assert not upload.exists()  # its messages are in the data cache now


def test_uploads_are_refused_when_their_space_is_full(trained_lab: Lab, tmp_path: Path) -> None:
    settings = replace(trained_lab.settings, max_upload_mb=1, upload_space_mb=2)  # its data cache too, not one in the working folder
    with running_app(settings, lab=trained_lab) as running, httpx.Client(base_url=running.url) as http:
        for number in range(2):
            answer = http.post("gradio_api/upload", files={"files": (f"part{number}.bin", bytes([number]) * 900_000)})
            assert answer.status_code == 200, answer.text
        refused = http.post("gradio_api/upload", files={"files": ("part2.bin", b"\2" * 900_000)})
        assert refused.status_code == 413
        assert refused.text.startswith("The server's space for uploads is full: this upload (0.9 MB) and the 1.7 MB uploaded recently would pass")
        client = local_client(running.url)
        big = tmp_path / "sms.zip"
        big.write_bytes(b"\3" * 900_000)
        with pytest.raises(Exception, match="413"):  # gradio_client shows the status, the page shows the text above
            client.predict(handle_file(str(big)), api_name="/upload_data")
        assert client.predict(SPAM, None, api_name="/classify")[0]["label"] in ("ham", "spam")  # the app goes on


def test_the_upload_space_holds_at_least_one_upload() -> None:
    assert app.parse_args(["--upload-space-mb", "2000"]).upload_space_mb == 2000
    with pytest.raises(SystemExit):
        app.parse_args(["--max-upload-mb", "500", "--upload-space-mb", "400"])


def test_the_learning_rate_box_says_its_range(settings: AppSettings, lab: Lab) -> None:
    (box,) = [block for block in app.build_ui(settings, lab).blocks.values() if getattr(block, "elem_id", None) == "lr"]
    assert box.label == "Learning rate (lr; 1e-7 to 0.1)"  # the range the engine enforces, with the same words


# --- the login page and Gradio's file route -------------------------------------------------------------------


def test_the_login_page_shows_nothing_of_the_app(trained_lab: Lab) -> None:
    model_folder = trained_lab.settings.model
    with running_app(trained_lab.settings, auth=("demo", "pw"), lab=trained_lab) as running, httpx.Client(base_url=running.url) as http:
        login_page = http.get("/").text
        assert "/classify" not in login_page and "/start" not in login_page and model_folder not in login_page
        assert "window.gradio_api_info" in login_page  # the page itself is intact, with an empty description
        assert http.post("login", data={"username": "demo", "password": "pw"}).status_code == 200
        app_page = http.get("/").text
        assert "/classify" in app_page and model_folder in app_page  # logged in: as before


@pytest.mark.parametrize("auth", [None, ("demo", "pw")], ids=["open", "with-login"])
def test_the_file_route_fetches_no_url(trained_lab: Lab, monkeypatch: pytest.MonkeyPatch, auth: tuple[str, str] | None) -> None:
    looked_up: list[str] = []

    async def record_lookup(host: str, *args: Any, **kwargs: Any) -> str:  # the first step of Gradio's fetch
        looked_up.append(host)
        raise RuntimeError("no network in tests")

    monkeypatch.setattr(safehttpx, "async_validate_url", record_lookup)
    with running_app(trained_lab.settings, auth=auth, lab=trained_lab) as running, httpx.Client(base_url=running.url) as http:
        if auth:
            http.post("login", data={"username": auth[0], "password": auth[1]})
        for route in ("gradio_api/file=https://example.com/sms.zip", "gradio_api/file=http://93.184.215.14/", "gradio_api/file/https://example.com/x"):
            answer = http.get(route)
            assert answer.status_code == 403 and "LoRA Lab does not fetch URLs" in answer.text, route
        record = trained_lab.settings.out / "20250101-000000" / "run.json"
        assert http.get(f"gradio_api/file={record.resolve()}").status_code == 200  # the runs are still served
    assert looked_up == []


# --- broken adapters and diverging runs in Classify --------------------------------------------------------------


@pytest.mark.parametrize("key", ["transformer.h.0.attn.q_proj.lora_A", "score.base_layer.bias"], ids=["lora", "head-bias"])
def test_an_uploaded_adapter_with_nan_is_named_in_every_classify_action(trained_lab: Lab, adapter_dir: Path, tmp_path: Path, key: str) -> None:
    broken = broken_adapter(adapter_dir, tmp_path / "broken" / "adapter.safetensors", key)
    tab = ClassifyTab(trained_lab)
    problem = f"tensor {key} holds NaN or infinite values, so the adapter is broken .*train again with a lower one"
    for action in (lambda f: tab.classify(SPAM, f), lambda f: tab.classify_many(SPAM, f), lambda f: tab.explain(SPAM, f)):
        with pytest.raises(gr.Error, match=problem):
            action(as_upload(broken))
    assert set(tab.classify(SPAM, None)[0]) == {"ham", "spam"}  # the trained adapter still answers


def test_a_newer_broken_run_is_never_the_default_adapter(trained_lab: Lab, adapter_dir: Path) -> None:
    newer = trained_lab.settings.out / "20250102-000000"
    broken_adapter(adapter_dir, newer / "adapter" / "adapter.safetensors", "transformer.h.1.mlp.c_fc.lora_B")
    record = json.loads((adapter_dir.parent / "run.json").read_text())
    (newer / "run.json").write_text(json.dumps({**record, "state": "done"}))  # says done (as an older version wrote a NaN run)
    time.sleep(0.01)
    (newer / "adapter" / "adapter.safetensors").touch()  # the newest adapter on disk
    tab = ClassifyTab(trained_lab)
    assert [run.name for run in trained_lab.finished_runs()] == ["20250101-000000"]  # not even offered
    assert tab.adapter_info().startswith("**Answering: run 20250101-000000")
    assert "Answered by run 20250101-000000;" in tab.classify(SPAM, None)[2]


def test_a_diverging_run_fails_with_a_message_and_classify_keeps_the_earlier_adapter(trained_lab: Lab, sms_zip: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def nan_loss(model: Any, batch: Any, pooling: str) -> torch.Tensor:
        return torch.tensor(float("nan"), requires_grad=True)

    monkeypatch.setattr(engine.train, "batch_loss", nan_loss)  # in this process: the run below is this run's worker
    DataTab(trained_lab).upload_data(as_upload(sms_zip))
    cfg = run_config(trained_lab.settings, train_controls(trained_lab.settings.model, lr=0.1))
    diverging = replace(cfg, out_dir=str(trained_lab.settings.out / "20250102-000000"))
    diverged = r"^the training batch loss became nan at step 1: training diverged, most likely because the learning rate \(0.1\)"
    with pytest.raises(TrainingDiverged, match=diverged):
        list(fine_tune(diverging))
    assert read_run(Path(diverging.out_dir)).state == "failed"
    assert "Answered by run 20250101-000000;" in ClassifyTab(trained_lab).classify(SPAM, None)[2]
