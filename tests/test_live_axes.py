"""The Train tab's plot axes reach the run's planned end from its first poll, before any point is drawn."""

from dataclasses import replace
from pathlib import Path

from engine.config import RunConfig
from engine.data.prepared import load_summary
from engine.runs.queue import QueuedRun
from engine.runs.recorder import RunProgress
from engine.runs.scheduler import RunView
from ui.live_axes import UNKNOWN_STEPS, live_axes, planned_steps
from ui.train_tab import training_view


def view(progress: RunProgress | None = None, data: Path | None = None, **train: object) -> RunView:
    config = RunConfig(data=str(data) if data else None).with_train(**train)
    return RunView(QueuedRun("20261207-120000", config, state="running" if progress else "queued"), progress, 1 if progress is None else None)


def test_a_waiting_run_plans_its_steps_from_the_data_it_will_read(prepared_data: Path) -> None:
    summary = load_summary(prepared_data)
    assert summary is not None
    per_epoch = summary.train // 8  # the last, partial batch is dropped, as in the book
    assert planned_steps(view(data=prepared_data, batch_size=8, epochs=5)) == 5 * per_epoch
    assert planned_steps(view(data=prepared_data, batch_size=8, epochs=5, max_steps=40)) == 40  # max_steps ends it first
    assert planned_steps(view(data=prepared_data, batch_size=8, epochs=1, max_steps=10_000)) == per_epoch
    assert planned_steps(view(max_steps=30)) == 30  # it downloads its data first: max_steps is all that is known
    assert planned_steps(view()) == UNKNOWN_STEPS


def test_a_running_run_says_its_steps_and_the_loss_axis_follows_its_points() -> None:
    started = RunProgress(phase="training", total_steps=650, steps_per_epoch=130, epochs=5)
    axes = live_axes(view(started, batch_size=8), loss_drawn=False)
    assert (axes.steps, axes.examples) == (650, 5200)
    assert axes.loss_plot(None, "step")["y_lim"] == [0.0, 1.0]  # no point yet: 0 to 1
    assert live_axes(view(started, batch_size=8), loss_drawn=True).loss_plot(None, "step")["y_lim"] == [0.0, None]  # from the points


def test_every_plot_of_a_followed_run_gets_its_axes_and_no_run_gets_none() -> None:
    started = RunProgress(phase="training", total_steps=40, steps_per_epoch=130, epochs=1)
    values = training_view(view(started)).values()
    loss_steps, loss_examples, scores, accuracy = values[3], values[4], values[6], values[7]
    assert (loss_steps["x_lim"], loss_examples["x_lim"], scores["x_lim"], accuracy["x_lim"]) == ([0, 40], [0, 320], [0, 40], [0, 40])
    assert training_view(None).values()[3] is None  # no run at all: the plots stay empty, never an empty frame
    waiting = training_view(replace(view(), progress=None)).values()
    assert waiting[3]["x_lim"] == [0, UNKNOWN_STEPS]
