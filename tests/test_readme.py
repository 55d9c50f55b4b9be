"""The README's command lines, run as written, offline: the shipped zip for the data, a tiny model folder
in place of gpt2-small (whose weights are not here), and a few steps in place of five epochs.

Also what those commands do without internet: `data` names each failed source once, and `generate`
with a size that is not on this machine says so at once, in one line."""

import re
import shlex
import shutil
from pathlib import Path

import pytest
from conftest import SMS_ZIP

import engine.data.prepared
from engine.cli import main

ROOT = Path(__file__).resolve().parents[1]
TRAINING_LIMIT = ["--max-steps", "3", "--device", "cpu"]  # the README's runs train five epochs


def readme_commands() -> list[list[str]]:
    """The `python -m engine ...` lines of the README's command-line block, without their comments."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text[text.index("## Command line") :].split("```bash\n", 1)[1].split("```", 1)[0]
    return [shlex.split(line, comments=True)[3:] for line in block.splitlines() if line.startswith("python -m engine ")]


def comment_of(command: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    line = next(line for line in text.splitlines() if line.startswith(f"python -m engine {command}"))
    return line.split("#", 1)[1]


@pytest.mark.slow
def test_the_readme_command_lines_work_offline_as_written(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "tests" / "fixtures").mkdir(parents=True)
    shutil.copy(SMS_ZIP, tmp_path / "tests" / "fixtures" / SMS_ZIP.name)  # a fresh clone has it there
    (tmp_path / "messages.txt").write_text("WINNER! Claim your prize now\nSee you at 6?\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    commands = readme_commands()
    assert [argv[0] for argv in commands] == ["data", "data", "params", "generate", "train", "train", "classify", "classify", "sweep", "bench"]
    ran = []
    for argv in commands:
        if argv == ["data"] or argv[0] == "bench":
            continue  # the download needs the internet; the benchmark takes minutes (tests/test_bench.py covers it)
        if argv[0] != "params":  # params needs no weights: it runs on gpt2-small itself
            argv = [str(tiny_model_dir) if arg == "gpt2-small" else arg for arg in argv]
        if argv[0] in ("train", "sweep"):
            argv += TRAINING_LIMIT
        assert main(argv) == 0, (argv, capsys.readouterr().err)
        ran.append((argv[0], capsys.readouterr()))

    outputs = dict((name, printed.out) for name, printed in ran)  # the last of each command
    assert "splits: train 1,045, validation 149, test 300 (written to data_cache)" in outputs["data"]
    figures = re.findall(r"[\d,]{5,}", comment_of("params"))  # 124,441,346 / 0 / 2,666,528
    assert all(figure in outputs["params"] for figure in figures) and len(figures) == 2
    trained = [printed for name, printed in ran if name == "train"]
    assert all("Downloading" not in printed.err and "downloading" not in printed.err for printed in trained)  # read what `data` prepared
    assert (tmp_path / "runs" / "book" / "run.json").is_file() and (tmp_path / "runs" / "fast" / "adapter" / "adapter.safetensors").is_file()
    answers = outputs["classify"].splitlines()
    assert answers[0].split() == ["label", "P(label)", "message"]  # --file: a table, not a Python dict
    assert answers[1].split()[0] in ("ham", "spam") and answers[2].endswith("See you at 6?")
    assert "2 messages classified" in answers[-1] and (tmp_path / "messages.predictions.csv").is_file()
    swept = outputs["sweep"].splitlines()
    assert sorted(row.split()[:2] for row in swept[1:]) == [[f"rank{r}-seed{s}", "done"] for r in (2, 8) for s in (1, 2)]


def test_data_offline_names_each_failed_source_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    sources = ("http://127.0.0.1:9/sms.zip", "http://127.0.0.1:9/backup.zip")  # nothing listens on the discard port
    monkeypatch.setattr(engine.data.prepared, "SOURCES", sources)
    assert main(["data", "--cache", str(tmp_path)]) == 2
    printed = capsys.readouterr().err
    for url in sources:
        assert printed.count(url) == 1, printed
    assert printed.splitlines()[-1].startswith("error: no source could be downloaded")
    assert "--source" in printed.splitlines()[-1]


def test_train_without_prepared_data_downloads_it_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(engine.data.prepared, "SOURCES", ("http://127.0.0.1:9/sms.zip",))
    assert main(["train", "--model", "gpt2-small", "--cache", str(tmp_path / "empty")]) == 2
    printed = capsys.readouterr().err
    assert printed.count("http://127.0.0.1:9/sms.zip") == 1 and "error: no source could be downloaded" in printed


def test_generate_with_a_size_that_is_not_here_says_so_once_and_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # unreachable, as a machine without internet
    assert main(["generate", "--model", "gpt2-small"]) == 2
    printed = capsys.readouterr().err.strip().splitlines()
    assert len(printed) == 1 and printed[0].startswith("error: gpt2-small (openai-community/gpt2) is not on this machine")
    assert "Retrying" not in printed[0] and "connect to the internet" in printed[0]
