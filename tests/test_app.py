"""The Gradio app: handlers called directly, then the launched app driven through gradio_client."""

import re
import time
from collections.abc import Iterator
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import gradio as gr
import huggingface_hub
import pandas as pd
import pytest
from app_fixtures import RunningApp, as_upload, running_app, train_controls, upload_bytes
from conftest import sms_zip_bytes
from gradio_client import handle_file
from matplotlib.figure import Figure

import app
from engine.adapted_linear import product_path
from engine.config import LORA_TARGETS, RunConfig
from engine.data.prepared import SOURCES
from engine.errors import ConfigError
from engine.runs.lock import LOCK_FILE
from engine.runs.scheduler import RunView
from scripts.load_test import local_client
from ui.classify_tab import EXAMPLE_MESSAGES, ClassifyTab
from ui.controls import Controls, ControlWidgets, run_config
from ui.data_tab import DataTab
from ui.lab import Lab
from ui.live_axes import AXIS_SERIES
from ui.model_tab import ModelTab, model_label
from ui.parameters_tab import ParametersTab
from ui.settings import AppSettings
from ui.train_tab import MAX_BATCH_POINTS, TrainTab, live_views, loss_frame

API_NAMES = {
    "anatomy_runs",
    "anatomy",
    "export_peft",
    "export_transformers",
    "download_data",
    "upload_data",
    "show_data",
    "load_weights",
    "apply_preset",
    "parameters",
    "start",
    "poll",
    "attach",
    "stop",
    "classify",
    "adapter_info",
    "controls",
    "stop_download",
    "classify_many",
    "add_grid",
    "queue",
    "cancel_run",
    "stop_run",
    "move_up",
    "move_down",
    "compare",
}
VIEW = (  # the Train tab's outputs, in order
    "header",
    "status",
    "progress",
    "loss",
    "loss_again",
    "live_confusion",
    "live_scores",
    "accuracy",
    "baseline",
    "final",
    "book_plot",
    "files",
    "follow",
    "stop_button",
    "resume_button",
    "shown",
)


def wait_until_idle(lab: Lab, timeout: float = 600.0) -> RunView:
    assert lab.scheduler.wait(timeout=timeout), "the runs did not finish"
    return lab.followed(None)


def view_of(values: tuple) -> dict[str, Any]:
    """The Train tab's outputs by name (gradio_client leaves out the page's own state and the Stop and Resume buttons)."""
    names = VIEW if len(values) == len(VIEW) else tuple(name for name in VIEW if name not in ("stop_button", "resume_button", "shown"))
    return dict(zip(names, values, strict=True))


def drawn(plotted: pd.DataFrame, series: str) -> pd.DataFrame:
    """A plot's frame without the rows that only stretch its axes."""
    return plotted[~plotted[series].isin(AXIS_SERIES)]


def frame(value: Any) -> pd.DataFrame:
    """A Dataframe/plot value as gradio_client returns it, or as a handler returns it."""
    if isinstance(value, pd.DataFrame):
        return value
    return pd.DataFrame(value["data"], columns=value.get("headers") or value.get("columns"))


# --- building and configuration ---------------------------------------------------------------


def test_build_ui_loads_nothing_and_names_every_event(settings: AppSettings) -> None:
    demo = app.build_ui(settings)
    names = {fn.api_name for fn in demo.fns.values()}
    assert API_NAMES <= names
    by_name = {fn.api_name: fn.fn for fn in demo.fns.values()}
    assert by_name["explain"].__qualname__ == "ClassifyTab.explain"  # no later event took the name first (Gradio would call this one explain_1)
    public = {fn.api_name for fn in demo.fns.values() if fn.api_visibility == "public"}
    assert not {name for name in public if re.fullmatch(r".+_\d+", name)}  # no two events share a name (Gradio numbers the later ones)
    tabs = [block.label for block in demo.blocks.values() if isinstance(block, gr.Tab)]
    assert tabs == ["Data", "Model & LoRA", "Train", "Parameters", "Classify", "Evaluate", "Inside the adapter", "Runs"]
    # building touches no files but the runs folder's lock, which the app holds while it runs
    assert [path.name for path in settings.out.iterdir()] == [LOCK_FILE] and not settings.cache.exists()


def test_run_config_turns_widget_values_into_a_validated_config(settings: AppSettings) -> None:
    controls = train_controls(settings.model, preset_name="book", rank=4.0, max_steps=0.0, padding="longest")
    cfg = run_config(settings, controls, owner="  Ana\n  Lima ")
    assert (cfg.lora.rank, cfg.train.epochs, cfg.train.batch_size, cfg.train.max_steps) == (4, 1, 8, None)
    assert cfg.train.group_by_length is False and cfg.preset == "book" and cfg.train.lr == 8e-4
    assert cfg.data is None  # nothing prepared yet: the run downloads first, from the app's sources
    assert cfg.data_urls == settings.data_urls and cfg.out_dir == str(settings.out) and cfg.owner == "Ana Lima"
    assert cfg.train.live_metrics is True
    assert run_config(settings, replace(controls, live_metrics=False)).train.live_metrics is False

    settings.cache.mkdir()
    (settings.cache / "train.csv").write_text("Label,Text\n")
    assert run_config(settings, controls).data == str(settings.cache)

    with pytest.raises(ConfigError, match="rank must be a whole number"):
        run_config(settings, replace(controls, rank=2.5))
    with pytest.raises(ConfigError, match="targets is empty"):
        run_config(settings, replace(controls, targets=[]))


def test_controls_round_trip_a_run_config_in_widget_order(settings: AppSettings) -> None:
    cfg = RunConfig.from_preset("book", model=settings.model)
    controls = Controls.of(cfg)
    assert Controls(*controls.values()) == replace(controls, targets=list(cfg.lora.targets))  # a reload's outputs are Start's inputs
    assert run_config(settings, controls).lora == cfg.lora


def test_every_event_that_passes_the_controls_passes_all_of_them_in_order(settings: AppSettings) -> None:
    fns = {fn.api_name: fn for fn in app.build_ui(settings).fns.values()}
    start = [block._id for block in fns["start"].inputs]
    controls = start[1:]  # after the visitor's name
    assert [block._id for block in fns["controls"].outputs] == controls  # a reload refills exactly what Start sends
    assert [block._id for block in fns["add_grid"].inputs[-len(controls) :]] == controls  # a grid trains the same controls
    assert fns["start"].input_parameter_names == ["owner", *Controls.names()]  # the API's parameter names
    assert fns["add_grid"].input_parameter_names == ["ranks", "alphas", "scalings", "lrs", "presets", "layers", "seeds", "owner", *Controls.names()]
    assert [field.name for field in fields(ControlWidgets)] == list(Controls.names())


def test_cli_defaults_and_bad_model(capsys: pytest.CaptureFixture[str]) -> None:
    args = app.parse_args([])
    assert (args.host, args.port, args.share, args.device, args.model) == ("127.0.0.1", 7860, False, "auto", "gpt2-small")
    assert tuple(args.data_urls) == SOURCES
    with pytest.raises(SystemExit):
        app.parse_args(["--model", "gpt2-huge"])
    assert "unknown model 'gpt2-huge'" in capsys.readouterr().err


# --- Data tab ------------------------------------------------------------------------------------


def test_download_uses_the_backup_when_the_primary_fails(settings: AppSettings, http_server) -> None:
    http_server.routes["/backup.zip"] = (200, sms_zip_bytes(), {})
    lab = Lab(replace(settings, device="auto", data_urls=(http_server.url("/primary.zip"), http_server.url("/backup.zip"))))
    status, counts, preview, histogram = DataTab(lab).download_data()
    assert status.startswith(f"Data ready from {http_server.url('/backup.zip')}")
    assert f"{http_server.url('/primary.zip')}: failed: HTTP 404" in status
    assert dict(zip(counts.data[""], counts.data["messages"], strict=True)) == {
        "messages": 5574,
        "ham": 4827,
        "spam": 747,
        "balanced": 1494,
        "train": 1045,
        "validation": 149,
        "test": 300,
    }
    assert list(preview["class"]) == ["ham"] * 3 + ["spam"] * 3
    assert isinstance(histogram, Figure)
    assert any("padding cut-off (book): 120 tokens" in text.get_text() for text in histogram.axes[0].get_legend().get_texts())
    # a reloaded page shows the same data
    assert DataTab(lab).show_data()[0] == status.split("\n")[0]


def test_download_failure_points_to_the_upload_box(settings: AppSettings, http_server) -> None:
    lab = Lab(replace(settings, device="auto", data_urls=(http_server.url("/nothing.zip"),)))
    data = DataTab(lab)
    with pytest.raises(gr.Error, match="The download failed") as refused:
        data.download_data()
    assert refused.value.visible is False  # said in the status line, beside the upload box, not in a toast over it
    status, *kept = data.failed()
    assert f"{http_server.url('/nothing.zip')}: failed: HTTP 404" in status and "in the box beside the Download button" in status
    assert all(isinstance(view, type(gr.skip())) for view in kept)  # the data shown before stays
    assert DataTab(lab).show_data()[0].startswith("No data yet")


def test_each_page_sees_its_own_failure_and_a_late_page_load_draws_over_none(lab: Lab, sms_zip: Path) -> None:
    data = DataTab(lab)
    first, second, third = (gr.Request(session_hash=name) for name in ("first", "second", "third"))
    with pytest.raises(gr.Error):
        data.upload_data(upload_bytes(b"hello world\n", "notes.txt"), request=first)
    with pytest.raises(gr.Error):
        data.upload_data(None, request=second)
    assert "notes.txt was not used" in data.failed(first)[0]  # two visitors failing at once: each reads their own reason
    assert "The upload was not used" in data.failed(second)[0]
    data.upload_data(as_upload(sms_zip), request=third)
    # the pages' own loads, ending after their visitors pressed: nothing drawn over what those presses showed
    for request in (first, second, third):
        assert all(isinstance(view, type(gr.skip())) for view in data.page_data(request))
    status, counts, _, _ = data.page_data(gr.Request(session_hash="a new page"))
    assert status.startswith("Data ready from") and counts.data["messages"][0] == 5574


def test_upload_a_local_file(lab: Lab, sms_zip: Path, tmp_path: Path) -> None:
    status, counts, _, _ = DataTab(lab).upload_data(as_upload(sms_zip))
    assert status == "Data ready from the uploaded file sms_spam_collection.zip" and counts.data["messages"][0] == 5574
    lab.close()  # the app stops (it owns its runs folder while it runs)
    restarted = Lab(lab.settings)  # a new app process finds the splits and the summary saved in its cache
    status, counts, _, _ = DataTab(restarted).show_data()
    restarted.close()
    assert status == f"Data prepared earlier, read from {lab.settings.cache}" and counts.data["messages"][0] == 5574
    with pytest.raises(gr.Error, match="no tab between label and message"):
        DataTab(lab).upload_data(upload_bytes(b"hello world\n", "notes.txt"))
    with pytest.raises(gr.Error, match="choose the SMS Spam Collection"):
        DataTab(lab).upload_data(None)


# --- Model & LoRA, Parameters ----------------------------------------------------------------------


def test_load_weights_from_a_local_folder_runs_the_sanity_generation(lab: Lab, tiny_model_dir: Path) -> None:
    status, text = ModelTab(lab).load_weights(str(tiny_model_dir))
    assert status.startswith(f"{tiny_model_dir}: 2 layers, width 32; weights ") and "loaded on cpu" in status
    assert status.endswith(f"; frozen products through {product_path().describe()}")  # oneDNN, or F.linear and why
    assert text.startswith("Every effort moves you") and len(text) > len("Every effort moves you")


def test_a_size_that_cannot_be_downloaded_says_so_in_plain_words(lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    assert model_label("gpt2-small") == "gpt2-small (124M parameters) · downloads 548 MB"
    assert model_label(lab.settings.model).endswith("(your folder, 1.6M parameters) · on this machine")
    status, text = ModelTab(lab).load_weights("gpt2-small")  # HF_HUB_OFFLINE=1 (conftest)
    assert status.startswith("gpt2-small is not on this machine yet and needs a download of 548 MB, but this app was started offline")
    assert "connect to the internet and press the button again" in status and f"“on this machine” ({Path(lab.settings.model).name})" in status and text == ""
    assert ModelTab(lab).weights_note() == ""  # the folder given with --model is here: nothing to warn of on a page load
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    status, _ = ModelTab(lab).load_weights("gpt2-medium")
    assert status.startswith("gpt2-medium is not on this machine yet and needs a download of 1,520 MB, but the internet cannot be reached")
    assert ParametersTab(lab).parameters("gpt2-small", 16, list(LORA_TARGETS), False)[1] is not None  # the rest still works


def test_offline_with_no_model_here_the_model_tab_says_so_and_the_two_ways_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    lab = Lab(AppSettings(out=tmp_path / "runs", cache=tmp_path / "cache"))  # no --model folder, nothing downloaded, offline (conftest)
    try:
        for said in (ModelTab(lab).weights_note(), ModelTab(lab).load_weights("gpt2-small")[0]):
            assert "No model is on this machine yet" in said and "started offline" in said
            assert "connect this machine to the internet once" in said and "--model FOLDER" in said
            assert "marked “on this machine”" not in said  # none is
    finally:
        lab.close()


def test_a_fresh_page_selects_the_model_the_app_was_started_with(settings: AppSettings, tmp_path: Path) -> None:
    from engine.runs.queue import RunQueue

    earlier = RunQueue(settings.out)  # an earlier app trained gpt2-small at rank 4 in this runs folder
    cfg = RunConfig.from_preset("recommended", model="gpt2-small")
    (run,) = earlier.add([replace(cfg, lora=replace(cfg.lora, rank=4))])
    earlier.claim_next("cpu")
    earlier.finish(run.id, "done")
    lab = Lab(settings)  # started again with --model FOLDER
    try:
        model, preset, rank = ModelTab(lab).controls()[:3]
        assert (model, preset, rank) == (settings.model, "recommended", 16)  # not gpt2-small, a 548 MB download
    finally:
        lab.close()


def test_presets_set_their_controls(lab: Lab) -> None:
    assert ModelTab(lab).apply_preset("book") == (16, 16.0, "alpha", "last", "longest", 5e-5, 5, 8, "fp32")
    assert ModelTab(lab).apply_preset("recommended") == (16, 16.0, "alpha_over_rank", "last_token", "batch", 8e-4, 5, 8, "auto")
    with pytest.raises(gr.Error, match="unknown preset"):
        ModelTab(lab).apply_preset("fastest")


def test_parameters_match_the_book_and_follow_rank_and_targets(lab: Lab) -> None:
    chart, table, breakdown = ParametersTab(lab).parameters("gpt2-small", 16.0, list(LORA_TARGETS), False)
    rows = dict(zip(table[""], table["gpt2-small"], strict=True))
    assert rows["total parameters (before freezing)"] == "124,441,346"
    assert rows["LoRA trainable"] == "2,666,528"
    assert rows["ratio"] == "47x fewer"
    assert chart.axes[0].get_xscale() == "log" and "1 weight in 47 is trained" in chart.axes[0].get_title()
    bars = {label.get_text(): patch.get_width() for label, patch in zip(chart.axes[0].get_yticklabels(), chart.axes[0].patches, strict=True)}
    assert bars == {"trained": 2_666_528, "frozen": 124_441_346}  # the chart agrees with the table
    by_kind = dict(zip(breakdown["kind of layer"], breakdown["trained"], strict=True))
    assert by_kind["attention: query (attn.q_proj)"] == "294,912" and by_kind["embeddings"] == "0"
    assert sum(int(n.replace(",", "")) for n in breakdown["trained"]) == 2_666_528
    assert sum(int(n.replace(",", "")) for n in breakdown["frozen"]) == 124_441_346  # every weight of the base model and the new head stays frozen

    _, smaller, by_kind = ParametersTab(lab).parameters("gpt2-small", 4.0, ["attn.q_proj", "attn.v_proj"], False)
    assert dict(zip(smaller[""], smaller["gpt2-small"], strict=True))["LoRA trainable"] == "147,456"  # 12 blocks x 2 layers x 4 x (768 + 768)
    assert by_kind["trained"].tolist()[1] == "0"  # keys are left alone
    with pytest.raises(gr.Error, match="targets is empty"):
        ParametersTab(lab).parameters("gpt2-small", 16, [], False)


# --- Train and Classify ----------------------------------------------------------------------------


@pytest.mark.slow
def test_train_poll_classify_through_the_handlers(lab: Lab, settings: AppSettings, sms_zip: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(gr.Error, match="No finished run yet"):
        ClassifyTab(lab).classify("hello", None)
    assert ClassifyTab(lab).adapter_info().startswith("**No finished run yet")
    assert ModelTab(lab).controls() == (
        settings.model,
        "recommended",
        16,
        16.0,
        "alpha_over_rank",
        list(LORA_TARGETS),
        False,
        "last_token",
        "batch",
        8e-4,
        5,
        8,
        0,
        50,
        True,
        "auto",
        "lora",
        0,
    )
    idle = view_of(TrainTab(lab).attach())
    assert idle["status"] == "Ready: no run yet." and idle["loss"] is None and idle["live_scores"] is None  # None, never an empty frame, for the plots
    assert "No run yet" in idle["header"]
    with pytest.raises(gr.Error, match="rank must be"):
        TrainTab(lab).start_training(train_controls(settings.model, rank=0.0))

    DataTab(lab).upload_data(as_upload(sms_zip))
    first = view_of(TrainTab(lab).start_training(train_controls(settings.model), owner="Ana"))
    assert first["status"].startswith(("Next in the queue", "Running")) and "queued by **Ana**" in first["header"] and "rank 16" in first["header"]
    second = view_of(TrainTab(lab).start_training(train_controls(settings.model, rank=2.0)))  # queued behind the first, and followed
    assert "waits in the queue behind 1 other run" in capsys.readouterr().out  # gr.Info outside a request prints
    assert second["follow"].value != first["follow"].value and "rank 2" in second["header"]
    wait_until_idle(lab)
    first_run, second_run = (view.run for view in lab.scheduler.views())
    assert (first_run.state, first_run.config.lora.rank, second_run.state, second_run.config.lora.rank) == ("done", 16, "done", 2)

    polled = view_of(TrainTab(lab).poll(first_run.id, None))
    # a poll sends the follow list's choices, never its value: one in flight as the visitor picks a run would put the old one back
    assert "value" not in polled["follow"].constructor_args and first["follow"].constructor_args["value"] == first_run.id
    assert polled["status"].startswith("Finished in ") and "step 12 of 12" in polled["progress"]
    assert polled["loss"] is polled["loss_again"] and set(polled["loss"]["split"]) == {"training batch", "train", "validation", *AXIS_SERIES}
    # the axes reach the run's planned end: 12 steps, 12 batches of 8 examples (a row outside the axes stretches them)
    ends = [polled[name].query("`step` >= 0")["step"].max() for name in ("loss", "live_scores", "accuracy")]
    assert ends == [12, 12, 12] and polled["loss"]["examples seen"].max() == 96
    # the full validation set at the last estimate (after step 11, the book's step 10), and its scores at every estimate
    live_confusion, live_scores = polled["live_confusion"], drawn(polled["live_scores"], "metric")
    assert "Full validation set (149 messages) after step 11" in live_confusion and "true spam" in live_confusion and "precision" in live_confusion
    assert live_scores["step"].unique().tolist() == [1, 6, 11] and set(live_scores["metric"]) == {"accuracy", "precision", "recall", "F1"}
    last = lab.scheduler.view(first_run.id).progress.live[-1].metrics
    assert live_scores[live_scores["metric"] == "F1"]["score (%)"].iloc[-1] == round(100 * last.f1, 2)
    assert f">{last.confusion[1][1]}</td>" in live_confusion
    assert list(drawn(polled["accuracy"], "split")["step"]) == [0, 0, 12, 12]  # before training, then the end of epoch 1 (cut at step 12)
    assert list(polled["baseline"]["split"]) == ["train", "validation", "test"]
    best = lab.scheduler.view(first_run.id).progress.best.step  # an estimate's step (1, 6 or 11): never the last, 12
    best_rows = [f"validation, best adapter (step {best})", f"test, best adapter (step {best})"]
    assert list(polled["final"]["split"]) == ["train", "validation", "test", *best_rows]  # the best adapter's figures below the last's
    # train scores whole batches only, as in the book: the table says so beside the Data tab's 1,045
    assert polled["final"]["messages"].tolist() == ["1,040 of 1,045", "149", "300", "149", "300"]
    assert Path(polled["book_plot"]).name == "loss.png" and [Path(f).name for f in polled["files"]] == ["adapter.safetensors", "run.json"]
    unchanged = TrainTab(lab).poll(first_run.id, polled["shown"])  # a poll with nothing new sends nothing
    assert all(value is gr.skip() or isinstance(value, dict) and value.get("__type__") == "update" for value in unchanged[:-1])
    assert TrainTab(lab).stop_training(first_run.id).startswith("Finished")  # nothing to stop
    newest = lab.followed(None).run
    assert newest.id == second_run.id  # a page that follows "the newest run" shows the one that started last
    assert ModelTab(lab).controls() == train_controls(settings.model, rank=2, epochs=1, batch_size=8, max_steps=12, eval_freq=5).values()  # what a reload shows

    adapter = Path(first_run.config.out_dir) / "adapter"
    uploaded = as_upload(adapter / "adapter.safetensors")
    fine_tuned, untrained, details = ClassifyTab(lab).classify(EXAMPLE_MESSAGES[0], uploaded, second_run.id)
    for scores in (fine_tuned, untrained):
        assert set(scores) == {"ham", "spam"} and abs(sum(scores.values()) - 1) < 1e-5
    # the upload replaces the chosen run, and is named by its file name only (never the server's temporary path)
    assert "Answered by the uploaded adapter adapter.safetensors;" in details and str(Path(uploaded).parent) not in details
    assert ClassifyTab(lab).adapter_info(uploaded, second_run.id).startswith("**Answering: the uploaded adapter adapter.safetensors**")
    assert ClassifyTab(lab).adapter_info().startswith(f"**Answering: run {second_run.id}")  # the newest finished run, by default
    assert f"Answered by run {second_run.id};" in ClassifyTab(lab).classify(EXAMPLE_MESSAGES[0], None)[2]
    assert f"Answered by run {first_run.id};" in ClassifyTab(lab).classify(EXAMPLE_MESSAGES[0], None, first_run.id)[2]  # or the one chosen
    with pytest.raises(gr.Error, match="empty"):
        ClassifyTab(lab).classify("   ", None)


def test_live_views_show_the_latest_estimate_or_say_why_there_is_none(settings: AppSettings) -> None:
    from engine.evaluate import Metrics
    from engine.runs.queue import QueuedRun
    from engine.runs.recorder import RunProgress
    from engine.train import ValidationEvaluated

    assert live_views(None) == ("<div id='live-note'>The full validation set is scored at each loss estimate.</div>", None)
    run = QueuedRun("20261202-150000", RunConfig().with_train(live_metrics=False), state="running")
    assert "off for this run" in live_views(RunView(run, RunProgress(), None))[0]
    points = (
        ValidationEvaluated(0, 0.01, 8, Metrics(0.7, 0.5, [[10, 0], [10, 0]], 0.0, 0.0, 0.0, 20)),
        ValidationEvaluated(49, 0.4, 400, Metrics(0.2, 0.9, [[9, 1], [1, 9]], 0.9, 0.9, 0.9, 20)),
    )
    confusion, scores = live_views(RunView(run, RunProgress(live=points), None))
    assert "Full validation set (20 messages) after step 50, the latest estimate: accuracy 90.0%" in confusion and "(of spam)" in confusion
    assert "final table below scores the model once more after its last step" in confusion  # why it can differ from the final figures
    assert ">9</td>" in confusion and ">10</td>" not in confusion  # the latest estimate only
    assert scores[scores["metric"] == "F1"][["step", "score (%)"]].values.tolist() == [[1, 0.0], [50, 90.0]]


def test_loss_frame_thins_long_runs_but_keeps_estimates_and_the_last_step() -> None:
    from engine.runs.recorder import BatchLoss, RunProgress
    from engine.train import LossEvaluated

    progress = RunProgress(batch_losses=tuple(BatchLoss(step, 8 * step, 1.0) for step in range(1, 2001)), estimates=(LossEvaluated(999, 0.5, 8000, 0.6, 0.5),))
    shown = loss_frame(progress)
    batch = shown[shown["split"] == "training batch"]
    assert len(batch) <= MAX_BATCH_POINTS + 1 and batch["step"].iloc[-1] == 2000
    assert (shown["split"] == "validation").sum() == 1 and shown[shown["split"] == "validation"]["step"].tolist() == [1000]
    assert loss_frame(RunProgress()) is None


# --- the launched app, through gradio_client --------------------------------------------------------


@pytest.fixture
def served(settings: AppSettings) -> Iterator[RunningApp]:
    with running_app(settings) as running:
        yield running


@pytest.mark.slow
def test_gradio_client_drives_the_whole_app(served: RunningApp, settings: AppSettings, sms_zip: Path) -> None:
    client = local_client(served.url)
    endpoints = set(client.view_api(return_format="dict", print_info=False)["named_endpoints"])
    assert {f"/{name}" for name in API_NAMES} <= endpoints

    status, counts, _, _ = client.predict(handle_file(str(sms_zip)), api_name="/upload_data")
    assert status.startswith("Data ready") and frame(counts)["messages"][0] == 5574
    chart, table, breakdown = client.predict(settings.model, 4, ["attn.q_proj"], False, api_name="/parameters")
    assert frame(breakdown)["trained"].iloc[0] == "512"  # 2 blocks x 4 x (32 + 32)
    assert client.predict("book", api_name="/apply_preset")[3:5] == ("last", "longest")
    weights, sanity = client.predict(settings.model, api_name="/load_weights")
    assert "2 layers" in weights and sanity.startswith("Every effort moves you")

    started = view_of(client.predict(model=settings.model, max_steps=15, eval_freq=5, api_name="/start"))
    run_id = started["follow"]["value"]
    deadline = time.monotonic() + 600
    while not (polled := view_of(client.predict(run_id, None, api_name="/poll")))["status"].startswith("Finished"):
        assert time.monotonic() < deadline, polled["status"]
        time.sleep(0.5)
    assert "step 15 of 15" in polled["progress"]
    splits = frame(polled["final"])["split"].tolist()
    assert splits[:3] == ["train", "validation", "test"]
    assert [split.split(" (")[0] for split in splits[3:]] == ["validation, best adapter", "test, best adapter"]  # "(step N)": an estimate's
    assert sorted(Path(f).name for f in polled["files"]) == ["adapter.safetensors", "run.json"]
    assert "Full validation set (149 messages) after step 11" in polled["live_confusion"]  # the live confusion matrix of the last estimate
    attached = view_of(client.predict(api_name="/attach"))  # what a reloaded page shows: the newest run
    assert attached["status"] == polled["status"] and attached["live_confusion"] == polled["live_confusion"]

    fine_tuned, untrained, details = client.predict("WIN a free prize now!!!", None, api_name="/classify")
    assert fine_tuned["label"] in ("ham", "spam") and untrained["label"] in ("ham", "spam")
    assert "tokens read" in details
    with pytest.raises(Exception, match="empty"):  # gradio_client raises AppError with the engine's message
        client.predict("", None, api_name="/classify")
    assert client.predict(None, None, api_name="/adapter_info").startswith(f"**Answering: run {run_id} ·")  # the newest finished run


@pytest.mark.slow
def test_a_second_visitors_run_queues_and_any_visitor_can_stop_or_cancel(served: RunningApp, settings: AppSettings, sms_zip: Path) -> None:
    first = local_client(served.url)
    second = local_client(served.url)
    first.predict(handle_file(str(sms_zip)), api_name="/upload_data")
    running = view_of(first.predict(model=settings.model, epochs=50, max_steps=0, api_name="/start"))["follow"]["value"]
    deadline = time.monotonic() + 600
    while not ((view := served.lab.scheduler.view(running)).progress and view.progress.step):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    waiting = view_of(second.predict(owner="Bo", model=settings.model, rank=2, api_name="/start"))  # queued behind, not refused
    waiting_id = waiting["follow"]["value"]
    assert waiting["status"] == "Next in the queue: it starts when a worker is free." and "queued by **Bo**" in waiting["header"]
    queue_table = frame(second.predict(None, api_name="/queue")[0])
    assert queue_table.columns[:2].tolist() == ["state", "test acc. (%)"]  # answers first
    states = queue_table["state"].tolist()
    assert states[0] == "queued, 1st in line" and states[1].startswith("step ") and queue_table["who"].tolist()[0] == "Bo"  # newest first

    assert second.predict(waiting_id, api_name="/cancel_run").startswith("Cancelled")
    assert second.predict(running, api_name="/stop").startswith("Stopping")  # anyone may stop the run a page watches
    assert served.lab.scheduler.wait(timeout=60)
    assert [served.lab.scheduler.view(i).run.state for i in (running, waiting_id)] == ["stopped", "cancelled"]
    stopped = view_of(first.predict(running, None, api_name="/poll"))
    assert stopped["status"].startswith("Stopped after step") and "not offered on Evaluate" in frame(stopped["final"]).iloc[0, 0]
