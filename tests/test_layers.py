"""The layers of docs/architecture.md, enforced: who may import whom, read from the source (every import,
at the top of a file or inside a function)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The network itself: GPT-2 and its kernels know nothing of adapters, runs or the UI.
MODEL = ("engine/model.py", "engine/adapted_linear.py", "engine/weights.py", "engine/tokenizer.py")
# May use the run machinery: the package itself, the command line and the benchmark (which times sweeps).
RUNS_USERS = ("engine/runs/", "engine/cli.py", "engine/bench/")


def imported(path: Path) -> set[str]:
    """Every module `path` imports, as written (`engine.runs.queue`, `torch`, ...)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}  # `from engine import lora`
    return names


def sources(*folders: str) -> list[Path]:
    return sorted(path for folder in folders for path in (ROOT / folder).rglob("*.py")) if folders else []


def relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def offenders(paths: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    """"file: module" for each import of `paths` that is, or lies under, a forbidden module."""
    found = []
    for path in paths:
        for name in sorted(imported(path)):
            if any(name == banned or name.startswith(banned + ".") for banned in forbidden):
                found.append(f"{relative(path)}: {name}")
    return found


def test_the_engine_never_imports_the_ui_or_gradio():
    assert offenders(sources("engine"), ("ui", "gradio", "app")) == []


def test_the_model_knows_nothing_of_lora_runs_or_the_ui():
    assert offenders([ROOT / name for name in MODEL], ("engine.lora", "engine.adapter", "engine.runs", "engine.data", "ui", "gradio")) == []


def test_only_the_run_machinery_the_cli_and_the_bench_use_runs():
    others = [path for path in sources("engine") if not relative(path).startswith(RUNS_USERS)]
    assert offenders(others, ("engine.runs",)) == []


def test_the_data_side_needs_no_model_lora_or_runs():
    assert offenders(sources("engine/data"), ("engine.model", "engine.lora", "engine.adapter", "engine.runs", "engine.train", "torch")) == []


def test_the_ui_and_the_app_never_import_torch():
    """The web process does its tensor math only through engine functions (see app.py's docstring for where)."""
    assert offenders([*sources("ui"), ROOT / "app.py"], ("torch",)) == []


def test_the_checker_sees_every_import_even_inside_functions(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import os\ndef late():\n    from engine.runs import queue\n    import torch.nn\n", encoding="utf-8")
    assert imported(probe) == {"os", "engine.runs", "engine.runs.queue", "torch.nn"}
