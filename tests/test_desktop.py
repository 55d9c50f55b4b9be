"""LoRA Lab as a desktop app: `pip install .` gives a `lora-lab` command, which starts the app, says where
it is (and how to share it: --share), opens the browser on a desktop, and offers a web-app install with
our own icon. All offline: the wheel is built from a copy of the sources without fetching anything."""

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest
from app_fixtures import free_port

import app

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "app.py", "engine", "ui", "assets")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built from a copy of the sources (no build folder left in the repository)."""
    source = tmp_path_factory.mktemp("source")
    for name in SOURCES:
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        copy(ROOT / name, source / name, **({"ignore": shutil.ignore_patterns("__pycache__")} if (ROOT / name).is_dir() else {}))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(out)],
        check=True,
        timeout=300,
    )
    (built,) = out.glob("lora_lab-*.whl")
    return built


def test_the_wheel_holds_the_app_the_ui_and_their_files(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(archive.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    assert {"app.py", "ui/model_tab.py", "ui/lora_picture.py", "engine/cli.py", "engine/bench/report.py"} <= names
    assert {"assets/gpt2_tokenizer/encoder.json", "assets/gpt2_tokenizer/vocab.bpe", "assets/gpt2_tokenizer/LICENSE", "assets/lora-lab.png"} <= names
    assert "lora-lab = app:main" in entry_points and "lora-lab-engine = engine.cli:main" in entry_points


@pytest.mark.slow
def test_the_installed_command_runs_outside_the_repository(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "installed"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(target), str(wheel)], check=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(target)}
    shown = subprocess.run([str(target / "bin" / "lora-lab"), "--help"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert "--no-browser" in shown.stdout and "--share" in shown.stdout
    # the installed engine finds the tokenizer's files it ships with
    probe = "import app, engine.tokenizer as t; print(app.__file__); print(t.encode('Every effort moves you'))"
    ran = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines()[0].startswith(str(target)) and ran.stdout.splitlines()[1] == "[6109, 3626, 6100, 345]"


@pytest.mark.slow
def test_the_banner_speaks_of_share_and_no_browser_opens_without_a_desktop(tiny_model_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    env = {key: value for key, value in os.environ.items() if key not in ("DISPLAY", "WAYLAND_DISPLAY")}
    command = [sys.executable, str(ROOT / "app.py"), "--model", str(tiny_model_dir), "--device", "cpu", "--port", str(port)]
    command += ["--out", str(tmp_path / "runs"), "--cache", str(tmp_path / "cache")]
    started = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines: list[str] = []
        deadline = time.monotonic() + 120
        while not any("--share" in line for line in lines):
            assert time.monotonic() < deadline and started.poll() is None, lines
            lines.append(started.stdout.readline())
        printed = "".join(lines)
        assert f"LoRA Lab is running at http://127.0.0.1:{port}" in printed
        assert "share=True" not in printed and "launch()" not in printed
        # a web app the browser can install, with our icon
        manifest = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/manifest.json", timeout=30))
        assert manifest["name"] == "LoRA Lab" and manifest["display"] == "standalone"
        icon = urllib.request.urlopen(f"http://127.0.0.1:{port}/pwa_icon/192", timeout=30)
        assert icon.headers["content-type"] == "image/png" and icon.read()[:4] == b"\x89PNG"
    finally:
        started.terminate()
        started.wait(30)


def test_the_browser_opens_on_a_desktop_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert not app.has_desktop()
    monkeypatch.setenv("DISPLAY", ":0")
    assert app.has_desktop()
    assert app.parse_args(["--no-browser", "--model", "gpt2-small"]).no_browser
    assert "--share" in app.banner("http://127.0.0.1:7860/", None, False)
    assert "https://abc.gradio.live" in app.banner("http://127.0.0.1:7860/", "https://abc.gradio.live", True)
