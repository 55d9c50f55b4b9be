"""Nothing one visitor sends may hurt the others: the login on every route and throttled, refused input as
one log line, files written for a visitor deleted with the uploads, and the command line's --host/--port."""

import logging
import math
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from app_fixtures import SPAM, free_port, running_app
from conftest import sms_zip_bytes
from gradio_client import handle_file

import app
from scripts.load_test import local_client
from ui.guards import upload_folder
from ui.http_guard import OPEN_PATHS, OPEN_PREFIXES
from ui.lab import Lab
from ui.login_throttle import FREE_TRIES
from ui.settings import AppSettings

REPO = Path(__file__).resolve().parents[1]

# --- the login ---------------------------------------------------------------------------------------------------


def every_route(fastapi_app: Any) -> list[tuple[str, str]]:
    """(method, path) of every route the server answers, its parameters filled in."""
    found: list[tuple[str, str]] = []

    def walk(routes: list[Any], prefix: str) -> None:
        for route in routes:
            if hasattr(route, "original_router"):  # FastAPI's included router
                walk(route.original_router.routes, prefix + route.include_context.prefix)
            elif hasattr(route, "methods") and route.methods:
                path = re.sub(r"\{[^}]*\}", "x", prefix + route.path)
                found.extend((method, path) for method in sorted(route.methods - {"HEAD", "OPTIONS"}))

    walk(fastapi_app.routes, "")
    return found


def is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


@pytest.mark.slow
def test_every_route_but_the_login_page_asks_for_the_login(trained_lab: Lab) -> None:
    with running_app(trained_lab.settings, auth=("demo", "pw"), lab=trained_lab) as running, httpx.Client(base_url=running.url, timeout=10) as http:
        routes = [(method, path) for method, path in every_route(running.demo.server_app) if not is_open(path)]
        assert ("POST", "/gradio_api/cancel") in routes and ("POST", "/gradio_api/reset") in routes
        answered = {f"{method} {path}": http.request(method, path).status_code for method, path in routes}
        assert {route: status for route, status in answered.items() if status != 401} == {}
        assert http.post("login", data={"username": "demo", "password": "pw"}).status_code == 200
        assert http.post("gradio_api/cancel", json={"session_hash": "x", "fn_index": 0, "event_id": "x"}).status_code != 401  # logged in: answered


@pytest.mark.slow
def test_wrong_passwords_are_throttled(trained_lab: Lab) -> None:
    with running_app(trained_lab.settings, auth=("demo", "pw"), lab=trained_lab) as running, httpx.Client(base_url=running.url, timeout=10) as http:
        started = time.monotonic()
        answers = [http.post("login", data={"username": "demo", "password": f"guess-{i}"}) for i in range(30)]
        elapsed = time.monotonic() - started
        assert [a.status_code for a in answers[:FREE_TRIES]] == [400] * FREE_TRIES  # checked, and wrong
        throttled = answers[FREE_TRIES:]
        assert throttled[0].status_code == 429 and "too many wrong logins: wait " in throttled[0].text
        assert {a.status_code for a in throttled} <= {400, 429}
        # A slow machine may pass a wait and have one more guess checked, but the waits double (1 s, 2 s, 4 s...):
        # in `elapsed` seconds at most log2(elapsed + 1) guesses get past them.
        assert sum(a.status_code == 400 for a in throttled) <= math.log2(elapsed + 1)
        waiting = http.post("login", data={"username": "demo", "password": "guess"})  # refused unchecked: the wait it names is current
        assert waiting.status_code == 429
        time.sleep(float(waiting.headers["Retry-After"]))  # the wait it names, then the right password works
        assert http.post("login", data={"username": "demo", "password": "pw"}).status_code == 200


# --- one line in the log for refused input ------------------------------------------------------------------------


@pytest.mark.slow
def test_refused_input_is_one_line_in_the_log_wherever_it_is_refused(
    settings: AppSettings, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    with running_app(settings) as served, httpx.Client(base_url=served.url, timeout=30) as http:
        client = local_client(served.url)
        typed_path = {"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}
        url = {"path": "https://example.com/sms.zip", "url": "https://example.com/sms.zip", "meta": {"_type": "gradio.FileData"}}
        with caplog.at_level(logging.WARNING, logger="lora_lab.app"):
            for refused in (
                lambda: client.predict("not-a-preset", api_name="/apply_preset"),  # a value outside a dropdown's choices
                lambda: client.predict(SPAM, typed_path, api_name="/classify"),  # a path never uploaded
                lambda: client.predict(SPAM, url, api_name="/classify"),  # a URL given as a file
                lambda: client.predict("", None, api_name="/classify"),  # a handler's own refusal
            ):
                with pytest.raises(Exception):  # noqa: B017 - gradio_client reports every refusal alike
                    refused()
            assert http.get("gradio_api/file=https://example.com/x").status_code == 403  # the HTTP guard's
            assert http.post("gradio_api/queue/join", json={"data": [], "fn_index": 99999, "session_hash": "x"}).status_code == 400  # no such event
        printed = capfd.readouterr()
        assert "Traceback" not in printed.err + printed.out
        lines = [record.getMessage() for record in caplog.records if record.name == "lora_lab.app"]
        assert len(lines) == 6 and all(line.startswith("refused (") and "\n" not in line for line in lines), lines
        assert lines[0].startswith("refused (apply_preset): ") and "not-a-preset" in lines[0]


# --- files written for a visitor -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_predictions_live_in_the_upload_space_and_go_with_the_app(trained_lab: Lab, tmp_path: Path) -> None:
    messages = tmp_path / "messages.txt"
    messages.write_text(f"{SPAM}\nsee you at dinner\n")
    before = set(Path(tempfile.gettempdir()).glob("lora-lab-predictions-*"))
    with running_app(trained_lab.settings, lab=trained_lab) as running:
        client = local_client(running.url)
        client.predict(handle_file(str(messages)), None, api_name="/classify_file")
        written = list(upload_folder().glob("lora-lab-*/messages-predictions.csv"))
        assert len(written) == 1 and "see you at dinner" in written[0].read_text()  # beside the uploads, not in $TMPDIR
        swept = set().union(*running.demo.temp_file_sets)
        assert str(written[0]) in swept  # among the files the hourly sweep deletes
    assert not written[0].exists()  # and deleted when the app stops
    assert set(Path(tempfile.gettempdir()).glob("lora-lab-predictions-*")) == before


# --- downloads ---------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_downloads_of_different_visitors_run_side_by_side(settings: AppSettings, http_server) -> None:
    http_server.routes["/slow.zip"] = (200, sms_zip_bytes(), {})
    http_server.trickle["/slow.zip"] = 2.0  # 4 KiB every 2 s: the zip would take minutes
    with running_app(replace(settings, data_urls=(http_server.url("/slow.zip"),))) as running:
        visitors = [local_client(running.url) for _ in range(2)]
        jobs = [visitor.submit(False, api_name="/download_data") for visitor in visitors]
        deadline = time.monotonic() + 120
        while http_server.hits.count("/slow.zip") < 2:  # the second reaches the source...
            assert time.monotonic() < deadline, [job.status().code for job in jobs]
            time.sleep(0.1)
        assert not jobs[0].done()  # ...while the first still downloads: not queued behind it
        visitors[0].predict(api_name="/stop_download")  # any visitor's Stop ends every Download
        assert all(job.result(timeout=60)[0].startswith("Download stopped; nothing was kept") for job in jobs)


# --- the command line --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (["--port", "70000"], "--port 70000 is not a port number: choose one from 1 to 65535"),
        (["--port", "0"], "--port 0 is not a port number"),
        (["--host", "999.1.1.1"], "--host 999.1.1.1 is not an IP address: use 127.0.0.1"),
        (["--host", "no-such-host.invalid"], "--host no-such-host.invalid is neither an IP address nor a name this machine knows"),
    ],
)
def test_a_bad_host_or_port_is_refused_in_one_line(argv: list[str], problem: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        app.parse_args(argv)
    said = capsys.readouterr().err
    assert exit_.value.code == 2 and said.count("\n") == 1 and problem in said, said


def test_a_port_in_use_is_refused_before_anything_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setattr(app, "Lab", lambda *args: pytest.fail("the app went on loading"))
        with pytest.raises(SystemExit, match=rf"^lora-lab: error: port {port} is in use on 127.0.0.1 \(another LoRA Lab\?\)"):
            app.main(["--port", str(port), "--no-browser"])
    with pytest.raises(SystemExit, match="cannot listen on 192.0.2.1"):  # an address of no interface here (TEST-NET-1)
        app.main(["--host", "192.0.2.1", "--port", str(free_port()), "--no-browser"])


@pytest.mark.slow
def test_sigterm_deletes_the_uploads_as_ctrl_c_does(tiny_model_dir: Path, tmp_path: Path) -> None:
    own_upload_folder = tmp_path / "gradio"
    port = free_port()
    command = [sys.executable, str(REPO / "app.py"), "--model", str(tiny_model_dir), "--device", "cpu", "--port", str(port), "--no-browser"]
    command += ["--out", str(tmp_path / "runs"), "--cache", str(tmp_path / "cache")]
    environment = {**os.environ, "GRADIO_TEMP_DIR": str(own_upload_folder), "PYTHONPATH": str(REPO)}
    server = subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert "LoRA Lab is running at" in _wait_for_line(server, "LoRA Lab is running at", 300)
        body = {"files": ("sms.txt", b"ham\thello\n" * 100)}
        answer = httpx.post(f"http://127.0.0.1:{port}/gradio_api/upload", files=body, timeout=60)
        assert answer.status_code == 200 and Path(answer.json()[0]).is_file()
        server.send_signal(signal.SIGTERM)
        assert server.wait(60) == 0
    finally:
        server.kill()
    assert not Path(answer.json()[0]).exists()
    assert [p for p in own_upload_folder.rglob("*") if p.is_file()] == []


def _wait_for_line(process: subprocess.Popen, text: str, timeout_s: float) -> str:
    """Lines of the process's output until one holds `text` (or it exits, or `timeout_s` passes)."""
    deadline, seen = time.monotonic() + timeout_s, []
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line and process.poll() is not None:
            break
        seen.append(line)
        if text in line:
            return line
    pytest.fail("the app did not start:\n" + "".join(seen[-30:]))

