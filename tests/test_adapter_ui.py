"""Inside the adapter and from an error to its reason, without a browser: the handlers over a finished tiny run."""

import json
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path

import gradio as gr
import insight_fixtures
import pytest
from insight_fixtures import three_class_scores

from engine.anatomy import KIND_WORDS
from engine.evaluate import Scores, cell_messages
from ui.anatomy_tab import AnatomyTab, shell_lines
from ui.anatomy_view import BEST, SAVED, growth_frame, heat_map_html
from ui.errors_view import CLASSES_TABLE, THRESHOLD_TABLE, Cell, CellSource, cell_listing, explain_message, parse_cell
from ui.evaluate_tab import EvaluateTab
from ui.lab import Lab
from ui.settings import AppSettings

finished_runs = insight_fixtures.finished_runs


@pytest.fixture
def lab(tiny_model_dir: Path, finished_runs: Path, small_data: Path, tmp_path: Path) -> Iterator[Lab]:
    shutil.copytree(finished_runs, tmp_path / "runs")
    shutil.copytree(small_data, tmp_path / "cache")
    lab = Lab(AppSettings(model=str(tiny_model_dir), device="cpu", out=tmp_path / "runs", cache=tmp_path / "cache"))
    yield lab
    lab.close()


# --- a confusion matrix's cells ----------------------------------------------------------------

SCORES = Scores([0, 1, 2, 1, 0, 2], [[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.2, 0.5, 0.3], [0.3, 0.3, 0.4], [0.5, 0.4, 0.1], [0.1, 0.1, 0.8]])


def test_a_cell_holds_the_messages_of_its_true_class_and_answer_most_confident_first() -> None:
    assert cell_messages(SCORES, 2, 1) == [2]  # true bills, answered friends (0.5 is its largest)
    assert cell_messages(SCORES, 0, 0) == [0, 4]  # 0.7 before 0.5
    assert cell_messages(SCORES, 1, 2) == [3]
    # friends (class 1) against the rest at 0.45: answered friends when P(friends) >= 0.45
    assert cell_messages(SCORES, 1, 1, threshold=0.45, positive=1) == [1]
    assert cell_messages(SCORES, 0, 1, threshold=0.45, positive=1) == [2]
    assert cell_messages(SCORES, 1, 0, threshold=0.45, positive=1) == [3]
    assert cell_messages(SCORES, 0, 0, threshold=0.45, positive=1) == [5, 0, 4]  # furthest from the threshold first
    every = [i for t in (0, 1) for p in (0, 1) for i in cell_messages(SCORES, t, p, threshold=0.45, positive=1)]
    assert sorted(every) == list(range(6))


def test_a_listed_cell_says_what_it_holds_and_lists_answer_first() -> None:
    source = CellSource(SCORES, list("abcdef"), ("bills", "friends", "work"), Path("nowhere"), threshold=0.45, positive=1)
    said, frame = cell_listing(source, Cell(THRESHOLD_TABLE, 0, 1))
    assert said.startswith("**1 message** of class not friends answered friends at threshold 0.45 (wrong).")
    assert frame.to_dict("records") == [{"true": "work", "answer": "friends", "P(friends)": 0.5, "message": "c"}]
    said, frame = cell_listing(source, Cell(CLASSES_TABLE, 0, 0))
    assert "**2 messages** of class bills answered bills (right)" in said
    assert list(frame.columns) == ["true", "answer", "P(answer)", "message"] and frame["message"].tolist() == ["a", "e"]
    said, frame = cell_listing(CellSource(SCORES, None, ("bills", "friends", "work"), Path("x")), Cell(CLASSES_TABLE, 1, 1))
    assert frame is None and "texts are not shown" in said


@pytest.mark.parametrize("value", [None, "", "threshold:2:0", "classes:0:3", "rows:0:0", "threshold:0", "threshold:-1:0", 7])
def test_a_cell_name_from_anywhere_but_a_table_is_refused(value: object) -> None:
    with pytest.raises(gr.Error, match="click a number"):
        parse_cell(value, 3)


def test_evaluate_lists_the_cells_of_a_three_class_run(lab: Lab, tmp_path: Path) -> None:
    three_class_scores(lab.settings.out / "first-run", tmp_path)
    evaluate = EvaluateTab(lab)
    source = evaluate.cell_source("first-run", "validation", 0.55, "friends")
    assert source.class_names == ("bills", "friends", "work") and source.positive == 1 and source.texts == list("abcdef")
    said, frame = cell_listing(source, parse_cell("threshold:1:0", 3))  # friends answered otherwise at 0.55: d only
    assert frame["message"].tolist() == ["d"] and "**1 message** of class friends answered not friends" in said
    _, table, *_ = evaluate.evaluate("first-run", "validation", 0.55, "friends")
    assert "data-cell='classes:2:1'" in table and "data-cell='threshold:1:0'" in table
    with pytest.raises(gr.Error, match="no finished run"):
        evaluate.cell_source("nope", "validation", 0.5)


def test_a_message_is_explained_by_its_runs_adapter_and_says_which(lab: Lab) -> None:
    folder = lab.settings.out / "first-run"
    note, heat, bars = explain_message(lab, folder / "adapter", "WIN a free prize now")
    steps = json.loads((folder / "run.json").read_text())["steps"]
    assert f"the adapter saved at step {steps}" in note and "token" in heat and "bar" in bars
    with pytest.raises(gr.Error, match="no adapter yet"):
        explain_message(lab, folder / "missing", "hello")


def test_the_live_estimate_keeps_one_set_of_message_scores(trained_run: tuple) -> None:
    from engine.runs.recorder import RunRecorder
    from engine.train import ValidationEvaluated

    _, events = trained_run
    recorder = RunRecorder()
    for event in events:
        recorder.record(event)
    live = [event for event in events if isinstance(event, ValidationEvaluated)]
    progress = recorder.progress()
    assert len(live) > 1 and progress.live_scores == live[-1].scores
    assert len(progress.live_scores.labels) == progress.live[-1].metrics.count
    assert all(point.scores is None for point in progress.live)  # the record keeps the metrics of each estimate, not its messages
    record = json.loads(events[-1].record.read_text())
    assert all(point["scores"] is None for point in record["validation_history"])


# --- inside the adapter ------------------------------------------------------------------------


def test_the_tab_shows_a_runs_anatomy_growth_and_command(lab: Lab) -> None:
    tab = AnatomyTab(lab)
    assert tab.runs_with_adapters() == ["first-run"]
    moments, growth, command, client = tab.run_views("first-run")
    record = json.loads((lab.settings.out / "first-run" / "run.json").read_text())
    best = [BEST] if record["best"]["adapter"] == "adapter-best" else []  # its best adapter first where it is not its last
    assert [value for _, value in moments.constructor_args["choices"]] == [*best, SAVED, *(str(p["steps"]) for p in record["anatomy"])]
    assert set(growth["layers"]) == set(KIND_WORDS.values())
    assert command.startswith("python -m engine train \\\n  --preset recommended") and "api_name='/start'" in client
    sentence, heat, figure = tab.show("first-run", "relative", SAVED)
    assert sentence.startswith("**As saved: Rank 16, but most layers use") and heat.count("data-layer=") == 6 * 2 + 1
    assert len([axis for axis in figure.axes if axis.get_visible()]) == 7
    sentence, heat, _ = tab.show("first-run", "effective_rank", "1")
    assert sentence.startswith("**After step 1:") and "Directions it uses" in heat
    with pytest.raises(gr.Error, match="no run called"):
        tab.show("../elsewhere", "norm", SAVED)
    with pytest.raises(gr.Error, match="no such moment"):
        tab.show("first-run", "norm", "999")


def test_download_exports_once_per_adapter_version(lab: Lab) -> None:
    tab = AnatomyTab(lab)
    path = Path(tab.download_peft("first-run"))
    assert path.parent == lab.settings.out / "first-run" / "exports" and path.name == "first-run-peft.zip"
    with zipfile.ZipFile(path) as archive:
        assert {"adapter_model.safetensors", "adapter_config.json", "README.md", "tokenizer_config.json"} <= set(archive.namelist())
    made = path.stat().st_mtime_ns
    assert Path(tab.download_peft("first-run")).stat().st_mtime_ns == made  # the same adapter: the same zip
    adapter = lab.settings.out / "first-run" / "adapter" / "adapter.safetensors"
    adapter.touch()
    assert Path(tab.download_peft("first-run")).stat().st_mtime_ns > made
    with pytest.raises(gr.Error, match="unknown format"):
        tab.download("first-run", "onnx")


def test_the_heat_map_leaves_layers_lora_did_not_adapt_blank_and_the_growth_names_every_kind() -> None:
    from engine.anatomy import LayerAnatomy

    layers = [LayerAnatomy("transformer.h.0.attn.q_proj", "attn.q_proj", 0, 2.0, [2.0, 0.0], 1, 10.0, 0.2)]
    heat = heat_map_html(layers, "relative", 2)
    assert "20.00%" in heat and "block 1" in heat and ">·</td>" in heat and "head" not in heat
    frame = growth_frame([{"steps": 3, "layers": {"transformer.h.0.attn.q_proj": {"norm": 2.0, "effective_rank": 1, "relative": 0.2, "top": [2.0]}}}])
    assert set(frame["layers"]) == set(KIND_WORDS.values()) and frame.dropna()["layers"].tolist() == ["q"]


def test_a_long_command_is_shown_one_option_a_line_and_stays_the_same_command() -> None:
    import shlex

    command = "python -m engine train --preset book --model '/a b/c' --targets attn.q_proj score --out runs/x"
    shown = shell_lines(command)
    assert shown.count("\\\n") == 4 and shlex.split(shown.replace("\\\n", " ")) == shlex.split(command)


def test_a_runs_entry_gives_its_command_and_client_call(lab: Lab) -> None:
    which, command, client = AnatomyTab(lab).reproduce("first-run")
    record = json.loads((lab.settings.out / "first-run" / "run.json").read_text())
    assert "first-run" in which and command == shell_lines(record["reproduce"]["command"]) and client == record["reproduce"]["client"]
    del record["reproduce"]  # a run of an older version: worked out from its settings
    (lab.settings.out / "first-run" / "run.json").write_text(json.dumps(record))
    assert AnatomyTab(lab).reproduce("first-run")[1].startswith("python -m engine train \\\n  --preset recommended")
    with pytest.raises(gr.Error, match="choose a run in the table"):
        AnatomyTab(lab).reproduce(None)
