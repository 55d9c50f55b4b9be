"""The insight views: plain helpers, handlers over a tiny finished run, a grid of runs in the queue, gradio_client.

Runs here train the tiny model on a small slice of the SMS data (80 messages), so each takes seconds.
"""

import json
import shutil
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import gradio as gr
import insight_fixtures
import pandas as pd
import pytest
from app_fixtures import RunningApp, running_app, train_controls, upload_bytes
from conftest import SMS_ZIP
from gradio_client import handle_file
from insight_fixtures import three_class_scores, write_three_classes

from engine.data.prepared import prepare
from engine.explain import TokenScore, WordInfluence
from engine.runs.compare import grid_points, summarise
from engine.runs.grid import Grid
from engine.runs.history import all_runs, list_runs
from scripts.load_test import local_client
from ui.classify_tab import ClassifyTab, influence_html, token_heatmap_html
from ui.data_tab import DataTab, counts_frame, quality_markdown
from ui.evaluate_tab import EvaluateTab
from ui.grid_plots import accuracy_against_cost, heat_map
from ui.lab import Lab
from ui.runs_tab import RunsTab, grid_of, grid_preview, parse_values, pick_axes
from ui.settings import AppSettings
from ui.views import confusion_html

finished_runs = insight_fixtures.finished_runs  # fixtures shared with the browser test


@pytest.fixture
def lab(tiny_model_dir: Path, finished_runs: Path, small_data: Path, tmp_path: Path) -> Iterator[Lab]:
    runs = tmp_path / "runs"
    shutil.copytree(finished_runs, runs)
    cache = tmp_path / "cache"
    shutil.copytree(small_data, cache)
    lab = Lab(AppSettings(model=str(tiny_model_dir), device="cpu", out=runs, cache=cache))
    yield lab
    lab.close()


# --- plain helpers ---------------------------------------------------------------------------------


def test_confusion_table_names_true_and_predicted_classes() -> None:
    table = confusion_html([[5, 1], [2, 7]], ("ham", "spam"), "validation <set>")
    assert "true ham" in table and "predicted spam" in table and ">7</td>" in table
    assert "validation &lt;set&gt;" in table  # captions and labels are escaped


def test_token_heat_map_escapes_tokens_and_shades_by_probability() -> None:
    heat = token_heatmap_html([TokenScore("<b>", 0.1), TokenScore(" win", 0.9)], "spam")
    assert "&lt;b&gt;" in heat and "<b>" not in heat
    assert "rgba(31,119,180" in heat and "rgba(214,39,40" in heat and "After the last token, the answer: 0.900" in heat
    # its legend names its own quantity, a probability, by which side of 0.5 a token is on
    assert "P(spam) above 0.5" in heat and "P(spam) below 0.5" in heat and "raises" not in heat


def test_word_influence_bars_use_the_heat_maps_colours_whatever_the_signs() -> None:
    bars = influence_html([WordInfluence("<win>", 0.2, 0.5), WordInfluence("win", 0.6, 0.1)], "spam")  # both push towards spam
    assert "&lt;win&gt;" in bars and "<win>" not in bars
    assert bars.count("class='bar towards'") == 2 and "class='bar away'" not in bars
    # its legend names its own quantity, a change in the probability, both ways even when all push one way
    assert "the word raises P(spam)" in bars and "the word lowers P(spam)" in bars and "above 0.5" not in bars
    assert "they can disagree" in bars  # and says why the heat map's colours may not match the bars'
    assert "width:100.0%" in bars and "width:20.0%" in bars  # scaled to the strongest word
    mixed = influence_html([WordInfluence("hi", 0.8, -0.1), WordInfluence("win", 0.2, 0.05)], "spam")
    assert mixed.count("class='bar away'") == 1 and "rgba(31,119,180" in mixed and "rgba(214,39,40" in mixed
    assert influence_html([], "spam") == ""


def test_data_quality_and_counts_show_every_class(small_data: Path) -> None:
    prepared = prepare(str(small_data), small_data)
    summary = prepared.summary
    text = quality_markdown(summary)
    assert "distinct texts" in text and "train & test" in text and "Not de-duplicated" in text
    assert quality_markdown(None) == "Data quality: no data yet."
    counts = counts_frame(prepared)
    assert counts[""].tolist() == ["messages", "ham", "spam", "balanced", "train", "validation", "test"]
    three = prepare(str(write_three_classes(small_data.parent)), small_data.parent / "three")
    assert counts_frame(three)[""].tolist()[1:4] == ["bills", "friends", "work"]  # your own labels, not ham/spam


def test_grid_fields_become_a_grid_shown_before_it_is_queued() -> None:
    assert parse_values(" 8, 16 32;64 ", float, "alphas") == (8.0, 16.0, 32.0, 64.0) and parse_values("", int, "seeds") == ()
    with pytest.raises(Exception, match="seeds: '1.5' is not a list of whole numbers"):
        parse_values("1.5", int, "seeds")
    grid = grid_of([1, 2, 4, 8, 16], "8, 16", [], "", [], [], "1 2 3")
    assert grid.size == 30 and grid.varied == ("rank", "alpha", "seed")
    assert grid_preview(grid).startswith("**5 ranks × 2 alphas × 3 seeds = 30 runs**")
    assert "more than the 100" in grid_preview(grid_of(list(range(1, 12)), "1 2 3 4 5 6 7 8 9 10", [], "", [], [], ""))
    assert grid_preview(Grid()).startswith("Choose at least one value")
    assert pick_axes(None, None, ["rank", "seed"]) == ("rank", "seed") and pick_axes("alpha", "alpha", ["rank"]) == ("alpha", "rank")


# --- handlers over a finished run ------------------------------------------------------------------


def test_evaluate_a_finished_run_at_any_threshold(lab: Lab) -> None:
    assert EvaluateTab(lab).evaluation_choices().value == "first-run"
    summary, confusion, metrics, roc, wrong = EvaluateTab(lab).evaluate("first-run", "validation", 0.5)
    assert "full validation set: 8 messages" in summary and "AUC" in summary
    assert "true spam" in confusion and metrics.columns[1] == "threshold 0.50"
    assert set(roc["curve"]) == {"ROC curve", "chance"} and roc["true positive rate"].max() == 1.0
    assert wrong is not None and list(wrong.columns) == ["true", "predicted", "P(spam)", "message"]
    everything_spam = EvaluateTab(lab).evaluate("first-run", "test", 0.0)[2]
    assert everything_spam.iloc[2, 1] == 1.0  # recall of spam at threshold 0
    summary, confusion, metrics, _, ham_wrong = EvaluateTab(lab).evaluate("first-run", "validation", 0.5, "ham")  # either class can be the positive one
    assert "**ham** when P(ham)" in summary and "one vs rest" not in summary and metrics.iloc[1, 0] == "precision (ham)"
    assert confusion.index("true spam") < confusion.index("true ham")  # the rest first, the positive class second
    assert sorted(ham_wrong["message"]) == sorted(wrong["message"])  # two classes: the same mistakes either way
    assert EvaluateTab(lab).evaluate(None, "validation", 0.5)[0].startswith("No run chosen: choose a finished run")
    with pytest.raises(gr.Error, match="from 0 to 1"):
        EvaluateTab(lab).evaluate("first-run", "validation", 1.5)
    with pytest.raises(gr.Error, match="press Refresh"):
        EvaluateTab(lab).evaluate("../elsewhere", "validation", 0.5)
    with pytest.raises(gr.Error, match="choose validation or test"):
        EvaluateTab(lab).evaluate("first-run", "train", 0.5)


def test_evaluate_without_texts_and_a_record_of_an_older_version(lab: Lab) -> None:
    record_path = lab.settings.out / "first-run" / "run.json"
    record = json.loads(record_path.read_text())
    record["config"]["data"] = str(lab.settings.out / "gone")
    record_path.write_text(json.dumps(record))
    summary, *_, wrong = EvaluateTab(lab).evaluate("first-run", "validation", 0.5)
    assert "texts are not shown" in summary and wrong is None
    validation = record["scores"]["validation"]
    old = {"labels": [0, 0, 1, 1, 1], "p_positive": [0.1, 0.6, 0.3, 0.8, 0.9]}  # P(spam) only, as older versions kept
    record["scores"]["validation"] = old
    record.pop("best", None)  # older versions kept no best adapter: the last's scores are the run's only ones
    record_path.write_text(json.dumps(record))
    summary, _, metrics, roc, _ = EvaluateTab(lab).evaluate("first-run", "validation", 0.5)
    assert "5 messages" in summary and "AUC): **0.833**" in summary and metrics.iloc[1, 1] == round(2 / 3, 3)
    assert len(validation["probabilities"]) == 8  # what this version keeps: every class's probability


def test_three_classes_one_against_the_rest(lab: Lab, tmp_path: Path) -> None:
    """The worked example of test_evaluate: P(friends) is [.2, .6, .5, .3, .4, .1], friends are messages b and d."""
    three_class_scores(lab.settings.out / "first-run", tmp_path)

    picker = EvaluateTab(lab).positive_choices("first-run")
    assert picker.choices == [("bills", "bills"), ("friends", "friends"), ("work", "work")] and picker.value == "bills"
    assert EvaluateTab(lab).positive_choices("first-run", "work").value == "work"  # a choice the run has stays
    assert EvaluateTab(lab).positive_choices(None).choices == []

    summary, confusion, metrics, roc, wrong = EvaluateTab(lab).evaluate("first-run", "validation", 0.5, "friends")
    assert "6 messages" in summary and "**friends** when P(friends) ≥ **0.50**" in summary and "one vs rest" in summary
    assert "2 mistakes" in summary and "AUC): **0.750**" in summary
    assert "true work" in confusion and "predicted not friends" in confusion  # every class's answers, then friends vs the rest
    assert metrics.iloc[:4, 1].tolist() == [round(100 * 4 / 6, 2), 0.5, 0.5, 0.5]
    curve = roc[roc["curve"] == "ROC curve"]
    assert curve["false positive rate"].tolist() == [0, 0, 0.25, 0.5, 0.5, 0.75, 1]
    assert wrong.values.tolist() == [["friends", "work", 0.3, "d"], ["work", "friends", 0.5, "c"]]
    assert list(wrong.columns) == ["true", "predicted", "P(friends)", "message"]
    assert EvaluateTab(lab).evaluate("first-run", "validation", 0.3, "friends")[2].iloc[2, 1] == 1.0  # recall of friends
    assert "AUC): **0.812**" in EvaluateTab(lab).evaluate("first-run", "validation", 0.5, "work")[0]  # 6.5 of 8 pairs: the tie counts half
    with pytest.raises(gr.Error, match="no class 'spam': choose one of bills, friends, work"):
        EvaluateTab(lab).evaluate("first-run", "validation", 0.5, "spam")


def test_history_and_loss_overlay(lab: Lab) -> None:
    history = RunsTab(lab).history()
    assert history["run"].tolist() == ["first-run"] and history["steps"].tolist() == [6]
    assert RunsTab(lab).overlay_choices().value == ["first-run"]
    overlay = RunsTab(lab).overlay(["first-run"])
    assert set(overlay["run"]) == {"first-run · train", "first-run · validation"} and overlay["step"].min() == 1
    assert RunsTab(lab).overlay([]).empty and list(RunsTab(lab).overlay([]).columns) == ["step", "loss", "run"]
    assert set(RunsTab(lab).overlay_colors(["first-run"]).color_map) == {"first-run · train", "first-run · validation"}
    with pytest.raises(gr.Error, match="choose runs"):
        RunsTab(lab).overlay("first-run")  # type: ignore[arg-type]


def test_explain_and_classify_a_file(lab: Lab) -> None:
    heat, bars = ClassifyTab(lab).explain("WIN a free prize now", None)
    assert heat.count("class='token ") >= 5 and bars.count("class='bar ") == 5
    assert all(f">{word}</div>" in bars for word in ["WIN", "a", "free", "prize", "now"])
    with pytest.raises(gr.Error, match="empty"):
        ClassifyTab(lab).explain("  ", None)

    path, preview = ClassifyTab(lab).classify_upload(upload_bytes(b"text,label\nWIN cash now,spam\nsee you at 6,ham\n", "mine.csv"), None)
    written = pd.read_csv(path)
    assert written["message"].tolist() == ["WIN cash now", "see you at 6"] and {"label", "p_ham", "p_spam"} <= set(written.columns)
    assert preview["message"].tolist() == written["message"].tolist()
    with pytest.raises(gr.Error, match="holds no messages"):
        ClassifyTab(lab).classify_upload(upload_bytes(b"\n\n", "blank.txt"), None)
    with pytest.raises(gr.Error, match="only files uploaded"):
        ClassifyTab(lab).classify_upload(str(SMS_ZIP), None)


def test_data_quality_reads_the_prepared_summary(lab: Lab, tmp_path: Path) -> None:
    text, repeated = DataTab(lab).data_quality()
    assert text.startswith("### Data quality") and "**0 texts occur more than once**" in text and repeated is None  # the small data has none
    rows = [("spam", "WIN cash now")] * 3 + [("ham", "see you at 6")] * 2 + [(label, f"{label} note {i}") for label in ("ham", "spam") for i in range(10)]
    repeats = tmp_path / "repeats.csv"
    pd.DataFrame(rows, columns=["label", "text"]).to_csv(repeats, index=False)
    prepare(str(repeats), lab.settings.cache)
    text, repeated = DataTab(lab).data_quality()
    assert "**2 texts occur more than once** (3 extra copies)" in text
    assert list(repeated.columns) == ["copies", "message"] and repeated.values.tolist() == [[3, "WIN cash now"], [2, "see you at 6"]]


# --- a grid, in the app's queue --------------------------------------------------------------------


@pytest.mark.slow
def test_a_grid_queues_every_combination_and_its_results_compare(lab: Lab) -> None:
    controls = asdict(train_controls(lab.settings.model, max_steps=3.0, eval_freq=2.0))
    no_values = dict(ranks=[], alphas="", scalings=[], lrs="", presets=[], layers=[], seeds="")
    with pytest.raises(gr.Error, match="varies no setting"):
        RunsTab(lab).add_grid(**no_values, **controls)
    note = RunsTab(lab).add_grid(**{**no_values, "ranks": [2, 1], "seeds": "1, 2"}, owner="Cy", **controls)
    assert note.startswith("Queued 4 runs in grid-")
    table, picked, _, _ = RunsTab(lab).queue()
    assert len(table) == 4 and set(table["who"]) == {"Cy"} and len(picked.choices) == 4
    assert lab.scheduler.wait(timeout=600)
    grid = RunsTab(lab).grids().value
    assert grid.startswith("grid-")
    assert sorted(run.name for run in list_runs(lab.settings.out / grid)) == ["rank1-seed1", "rank1-seed2", "rank2-seed1", "rank2-seed2"]
    note, heat, cost = RunsTab(lab).compare(grid, None, None)
    assert note.startswith("4 of 4 runs") and "Varied: rank, seed" in note
    assert heat is not None and cost is not None
    points = grid_points(list_runs(lab.settings.out / grid))
    by_rank = summarise(points, ["rank"])
    assert [s.key for s in by_rank] == [(1,), (2,)] and all(s.count == 2 for s in by_rank)
    assert by_rank[1].trainable == 2 * by_rank[0].trainable  # LoRA size grows linearly with rank
    names = [name for name, _ in all_runs(lab.settings.out)]
    assert {n.split("/")[1] for n in names if "/" in n} == {"rank1-seed1", "rank1-seed2", "rank2-seed1", "rank2-seed2"} and "first-run" in names
    with pytest.raises(gr.Error, match="choose a grid"):
        RunsTab(lab).compare("../elsewhere", None, None)


def test_grid_pictures_draw_mean_and_spread() -> None:
    from engine.runs.compare import GridPoint

    fixed = {"alpha": 16.0, "scaling": "alpha", "lr": 1e-3, "preset": "book", "targets": "all"}
    points = [
        GridPoint(f"r{rank}-s{seed}", {**fixed, "rank": rank, "seed": seed}, accuracy, 100 * rank, 2.0)
        for rank, seed, accuracy in [(1, 1, 0.8), (1, 2, 0.9), (4, 1, 0.95), (4, 2, 0.97)]
    ]
    texts = [t.get_text() for t in heat_map(points, "rank", "seed").axes[0].texts]
    assert texts == ["80.0%", "95.0%", "90.0%", "97.0%"]  # a cell per (seed, rank)
    averaged = [t.get_text() for t in heat_map(points, "rank", "alpha").axes[0].texts]
    assert averaged == ["85.0%\n±7.1 (n=2)", "96.0%\n±1.4 (n=2)"]  # seeds averaged, their spread shown
    figure = accuracy_against_cost(points, ["rank"])
    assert figure.axes[0].get_xscale() == "log" and "mean of 2 runs each" in figure.texts[0].get_text()


# --- the launched app ------------------------------------------------------------------------------


def test_insight_views_through_gradio_client(lab: Lab, tmp_path: Path) -> None:
    with running_app(lab.settings, lab=lab) as served:
        check_through_client(served, tmp_path)


def check_through_client(served: RunningApp, tmp_path: Path) -> None:
    client = local_client(served.url)
    endpoints = set(client.view_api(return_format="dict", print_info=False)["named_endpoints"])
    wanted = {"/evaluate", "/positive_classes", "/explain", "/classify_file", "/run_history", "/overlay", "/add_grid", "/queue", "/compare"}
    assert wanted <= endpoints
    summary, confusion, metrics, roc, wrong = client.predict("first-run", "validation", 0.3, "spam", api_name="/evaluate")
    assert "A message counts as **spam** when P(spam) ≥ **0.30**" in summary  # the threshold sent, not the default 0.50
    assert "true ham" in confusion
    history = client.predict(api_name="/run_history")
    assert history["data"][0][history["headers"].index("run")] == "first-run"
    heat, bars = client.predict("Call now to claim your prize", None, api_name="/explain")
    assert "class='token " in heat and "class='bar " in bars
    lines = tmp_path / "lines.txt"
    lines.write_text("WIN a prize\nsee you later\n")
    path, preview = client.predict(handle_file(str(lines)), None, api_name="/classify_file")
    assert pd.read_csv(path)["label"].isin(["ham", "spam"]).all()
    with pytest.raises(Exception, match="varies no setting"):
        client.predict(ranks=[], api_name="/add_grid")
