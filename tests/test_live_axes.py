"""The Train tab's plots reach the run's planned end from its first poll, before any point is drawn."""

from pathlib import Path

from engine.config import RunConfig
from engine.data.prepared import load_summary
from engine.runs.queue import QueuedRun
from engine.runs.recorder import RunProgress
from engine.runs.scheduler import RunView
from ui.live_axes import BELOW, END, TOP, UNKNOWN_STEPS, live_axes, planned_steps
from ui.train_tab import EMPTY_LOSS, EMPTY_SCORES, training_view


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


def test_the_rows_that_stretch_the_axes_lie_outside_them() -> None:
    axes = live_axes(view(RunProgress(phase="training", total_steps=650, steps_per_epoch=130, epochs=5), batch_size=8))
    assert (axes.steps, axes.examples) == (650, 5200)
    loss = axes.loss(EMPTY_LOSS).set_index("split")
    assert (loss.loc[END, "step"], loss.loc[END, "examples seen"], loss.loc[END, "loss"]) == (650, 5200, BELOW)  # at the end, under the axis
    assert (loss.loc[TOP, "step"], loss.loc[TOP, "loss"]) == (BELOW, 1.0)  # the loss axis reaches 1, left of the axis
    scores = axes.points(EMPTY_SCORES, "score (%)", "metric").set_index("metric")
    assert (scores.loc[END, "step"], scores.loc[END, "score (%)"]) == (650, BELOW)


def test_every_plot_of_a_followed_run_is_stretched_and_no_run_gets_none() -> None:
    values = training_view(view(RunProgress(phase="training", total_steps=40, steps_per_epoch=130, epochs=1))).values()
    loss_steps, loss_examples, scores, accuracy = values[3], values[4], values[6], values[7]
    assert loss_steps is loss_examples  # one frame for both loss plots
    assert [frame.query("`step` >= 0")["step"].max() for frame in (loss_steps, scores, accuracy)] == [40, 40, 40]
    assert training_view(None).values()[3] is None  # no run at all: the plots stay empty, never an empty frame
    assert training_view(view()).values()[3].query("`step` >= 0")["step"].max() == UNKNOWN_STEPS
