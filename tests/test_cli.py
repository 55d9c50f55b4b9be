import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.cli import build_parser, main
from engine.runs.local_workers import LocalWorkers, local_slots

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ["data", "params", "generate", "train", "sweep", "classify", "inspect", "export", "bench", "baseline"]


def strict_loads(text: str):
    """json.loads as a strict parser reads JSON: NaN and Infinity are not JSON, so they are refused."""

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def run_json(capsys, *argv: str) -> dict:
    assert main([*argv, "--json"]) == 0
    return strict_loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_and_json(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([command, "--help"])
    assert exit_.value.code == 0
    assert "--json" in capsys.readouterr().out


def test_params_reproduces_the_book(capsys):
    out = run_json(capsys, "params", "--model", "gpt2-small", "--rank", "16", "--alpha", "16")
    assert (out["total_before_freeze"], out["trainable_after_freeze"], out["trainable_lora"]) == (124_441_346, 0, 2_666_528)
    assert 10 < out["adapter_megabytes"] < 11


def test_data_from_local_zip(capsys, sms_zip, tmp_path):
    out = run_json(capsys, "data", "--source", str(sms_zip), "--cache", str(tmp_path))
    assert {k: out[k] for k in ("messages", "class_counts", "train", "validation", "test", "longest_train_tokens")} == {
        "messages": 5574, "class_counts": {"ham": 4827, "spam": 747}, "train": 1045, "validation": 149, "test": 300, "longest_train_tokens": 120,
    }
    assert out["class_fractions"]["test"] == {"ham": 0.4967, "spam": 0.5033}  # 149 and 151 of the 300 test messages
    assert sorted(p.name for p in tmp_path.glob("*.csv")) == ["test.csv", "train.csv", "validation.csv"]


def test_data_download_uses_backup(capsys, http_server, tmp_path, monkeypatch):
    from conftest import sms_zip_bytes

    import engine.data.prepared

    http_server.routes["/backup.zip"] = (200, sms_zip_bytes(), {})
    monkeypatch.setattr(engine.data.prepared, "SOURCES", (http_server.url("/down.zip"), http_server.url("/backup.zip")))
    out = run_json(capsys, "data", "--cache", str(tmp_path))
    assert out["source"].endswith("/backup.zip") and out["train"] == 1045


def test_generate_train_classify_on_a_tiny_model(capsys, tiny_model_dir, prepared_data, tmp_path):
    generated = run_json(capsys, "generate", "--model", str(tiny_model_dir), "--max-new-tokens", "4", "Every effort moves you")
    assert generated["text"].startswith("Every effort moves you") and len(generated["text"]) > len("Every effort moves you")
    assert main([
        "train", "--model", str(tiny_model_dir), "--data", str(prepared_data), "--max-steps", "5",
        "--rank", "2", "--alpha", "4", "--lr", "1e-3", "--out", str(tmp_path / "run"), "--device", "cpu", "--json",
    ]) == 0
    printed = capsys.readouterr()
    trained = strict_loads(printed.out.strip().splitlines()[-1])
    counted = run_json(capsys, "params", "--model", str(tiny_model_dir), "--rank", "2", "--alpha", "4")  # train and params count alike
    assert f"{counted['trainable']:,} trainable of {counted['total_before_freeze']:,} parameters before freezing ({counted['ratio']:.1f}x fewer)" in printed.err
    assert set(trained["accuracy"]) == {"train", "validation", "test"} and not trained["stopped"]
    assert (tmp_path / "run" / "run.json").is_file()
    classified = run_json(capsys, "classify", "--adapter", trained["adapter"], "Free prize!", "See you soon")
    assert classified["labels"] == ["ham", "spam"]
    assert [p["label"] in ("ham", "spam") for p in classified["predictions"]] == [True, True]
    assert all(set(p["probabilities"]) == {"ham", "spam"} and 0 <= p["probabilities"]["spam"] <= 1 for p in classified["predictions"])


def test_three_classes_never_write_nan(capsys, tiny_model_dir, tmp_path):
    from insight_fixtures import write_three_classes

    data = run_json(capsys, "data", "--source", str(write_three_classes(tmp_path)), "--cache", str(tmp_path / "data"))
    assert data["class_counts"] == {"bills": 12, "friends": 12, "work": 12}
    assert set(data["class_fractions"]["train"]) == {"bills", "friends", "work"}
    trained = run_json(
        capsys, "train", "--model", str(tiny_model_dir), "--data", str(tmp_path / "data"), "--max-steps", "2", "--batch-size", "4",
        "--rank", "2", "--out", str(tmp_path / "run"), "--device", "cpu",
    )
    for written in (tmp_path / "data" / "summary.json", Path(trained["record"]), Path(trained["adapter"]) / "adapter_config.json"):
        strict_loads(written.read_text())
    messages = ["pay the bills message", "friends message number 3"]
    classified = run_json(capsys, "classify", "--adapter", trained["adapter"], *messages)
    assert classified["labels"] == ["bills", "friends", "work"]
    for prediction in classified["predictions"]:
        assert set(prediction["probabilities"]) == {"bills", "friends", "work"}
        assert prediction["probabilities"][prediction["label"]] == max(prediction["probabilities"].values())
    assert main(["classify", "--adapter", trained["adapter"], *messages]) == 0
    printed = capsys.readouterr().out
    assert "nan" not in printed.lower() and printed.count("P(bills)=") == 2 and "P(spam)" not in printed


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (["params", "--rank", "0"], "rank must be a whole number from 1 to 2,048"),
        (["params", "--alpha", "-1"], "alpha must be a number above 0 and at most 10,000"),
        (["params", "--model", "gpt5"], "unknown model 'gpt5'"),
        (["data", "--source", "/nonexistent/sms.zip"], "does not exist"),
        (["train", "--preset", "fast"], "invalid choice: 'fast'"),
    ],
)
def test_bad_input_exits_non_zero_with_one_line(argv, problem, capsys):
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and problem in err


def test_a_fault_in_lora_lab_exits_1_with_its_traceback_logged(capsys, caplog, monkeypatch):
    import engine.params

    def broken(*args, **kwargs):
        raise ValueError("zip() argument 2 is shorter than argument 1")  # a bug, not the user's input

    monkeypatch.setattr(engine.params, "param_summary", broken)
    assert main(["params"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: internal error while counting parameters: ValueError: zip() argument 2 is shorter")
    assert "a fault in LoRA Lab" in err and len(err.splitlines()) == 1
    (logged,) = [record for record in caplog.records if record.exc_info]
    assert logged.exc_info[0] is ValueError and "in broken" in caplog.text  # the traceback, down to the faulty function


def test_empty_message_to_classify(capsys, trained_run):
    adapter = str(trained_run[1][-1].adapter_dir)
    assert main(["classify", "--adapter", adapter, "ok", " "]) == 2
    assert capsys.readouterr().err.strip() == "error: message 2 is empty: type some text to classify"


@pytest.mark.slow
def test_module_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "engine", "params", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["trainable_lora"] == 2_666_528


def test_classify_a_file_and_refuse_both_or_neither(capsys, trained_run, tmp_path):
    adapter = str(trained_run[1][-1].adapter_dir)
    messages = tmp_path / "inbox.txt"
    messages.write_text("WIN a car\nlunch?\n")
    out = run_json(capsys, "classify", "--adapter", adapter, "--file", str(messages))
    assert out["messages"] == 2 and (tmp_path / "inbox.predictions.csv").is_file()
    assert main(["classify", "--adapter", adapter]) == 2
    assert "give messages to classify, or --file" in capsys.readouterr().err


def test_train_logs_live_validation_scores_unless_switched_off(capsys, tiny_model_dir, prepared_data, tmp_path):
    import re

    common = ["train", "--model", str(tiny_model_dir), "--data", str(prepared_data), "--max-steps", "2", "--rank", "2", "--alpha", "4", "--device", "cpu"]
    live = re.compile(r"step \d{4}: validation accuracy \d+\.\d\d%, precision \d+\.\d\d%, recall \d+\.\d\d%, F1 \d+\.\d\d% \(\d+ messages\)")
    assert main([*common, "--out", str(tmp_path / "live")]) == 0
    assert live.search(capsys.readouterr().err)
    assert main([*common, "--out", str(tmp_path / "quiet"), "--no-live-metrics"]) == 0
    err = capsys.readouterr().err
    assert "validation loss" in err and not live.search(err)


@pytest.mark.slow
def test_sweep_runs_a_grid_on_two_workers_with_a_line_per_run_and_a_table(capsys, tiny_model_dir, small_data, tmp_path):
    argv = ["sweep", "--model", str(tiny_model_dir), "--data", str(small_data), "--rank", "1", "4", "--seed", "1", "2", "--alpha", "8"]
    argv += ["--max-steps", "3", "--device", "cpu", "--workers", "2", "--owner", "Eve", "--out", str(tmp_path / "runs")]
    assert main(argv) == 0
    printed = capsys.readouterr()
    lines = printed.err.splitlines()
    workers = LocalWorkers(local_slots(2, "cpu")).describe()  # "2 local workers (cpu 0, cpu 1)" on 2 cores, "(cpu 0-1, cpu 2-3)" on 4
    assert lines[0].startswith(f"4 runs (2 rank x 2 seed) on {workers}, into ")
    ended = sorted(line for line in lines if line.startswith("["))
    assert len(ended) == 4 and all(": done, test accuracy " in line for line in ended)
    trained_s = {line.split("]")[1].split(":")[0].strip(): line.split("training ")[1].split(" s")[0] for line in ended}
    table = printed.out.splitlines()
    assert "training (s)" in table[0] and all(row.split()[-3] == trained_s[row.split()[0]] for row in table[1:])  # one kind of time, both places
    assert table[0].split()[:3] == ["run", "state", "test"] and sorted(row.split()[0] for row in table[1:]) == [
        "rank1-seed1",
        "rank1-seed2",
        "rank4-seed1",
        "rank4-seed2",
    ]
    grid = next((tmp_path / "runs").glob("grid-*"))
    record = json.loads((grid / "rank4-seed2" / "run.json").read_text())
    assert (record["config"]["lora"]["rank"], record["config"]["lora"]["alpha"], record["config"]["train"]["seed"]) == (4, 8.0, 2)
    assert record["config"]["owner"] == "Eve" and not (tmp_path / "runs" / "queue.json").exists()  # the app's queue file is left alone

    assert main([*argv, "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1], parse_constant=lambda name: pytest.fail(f"{name} in JSON"))
    assert len(result["runs"]) == 4 and {run["state"] for run in result["runs"]} == {"done"}
    assert all(0 <= run["test_accuracy"] <= 1 and run["trainable"] > 0 for run in result["runs"])


def test_sweep_refuses_a_grid_too_large_before_training(capsys, tiny_model_dir, prepared_data, tmp_path):
    argv = ["sweep", "--model", str(tiny_model_dir), "--data", str(prepared_data), "--rank", *map(str, range(1, 11)), "--seed", *map(str, range(11))]
    assert main([*argv, "--out", str(tmp_path)]) == 2
    assert "makes 110 runs (10 rank x 11 seed), more than the 100 one grid may hold" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
