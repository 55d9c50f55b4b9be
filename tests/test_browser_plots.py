"""The Train tab's live plots in a real browser, fed the frames a run produces, one poll at a time.

A small page holds the Train tab's own plots (the same factories) and a button that sends the next
frame, so what the browser draws at each moment of a run is checked without the timing of a real
run. Same rules as test_browser.py (Debian chromium + Playwright; CI=true makes a missing browser fail).
"""

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import gradio as gr
import pytest
import test_browser
from app_fixtures import free_port
from test_browser import eventually, expect, points_inside, sync_api

from engine.config import RunConfig
from engine.evaluate import Metrics
from engine.runs.events import BaselineEvaluated
from engine.runs.queue import QueuedRun
from engine.runs.recorder import BatchLoss, RunProgress
from engine.runs.scheduler import RunView
from engine.train import LossEvaluated, ValidationEvaluated
from ui.train_tab import LOSS_COLORS, SCORE_COLORS, accuracy_plot, loss_plot, scores_plot, training_view

pytestmark = [pytest.mark.browser, pytest.mark.slow]

browser = test_browser.browser  # the same module-scoped chromium fixture


@contextlib.contextmanager
def plots_page(browser: "sync_api.Browser", frames: Sequence[tuple[Any, Any, Any]]) -> Iterator["sync_api.Page"]:
    """A page with the Train tab's loss, scores and accuracy plots; each click on Next shows the next frame."""
    with gr.Blocks() as demo:
        loss = loss_plot("step", "Loss by optimiser step", "loss-steps")
        scores = scores_plot()
        accuracy = accuracy_plot()
        shown = gr.Number(0, label="frames shown", elem_id="shown")  # lands with the frame: the signal that it did
        following = gr.Button("Next", elem_id="next")
        following.click(lambda index: (int(index) + 1, *frames[int(index)]), shown, [shown, loss, scores, accuracy])
    _, url, _ = demo.queue().launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        with test_browser.app_page(browser, url, ready="Next") as page:
            yield page
    finally:
        demo.close()


def plots_of(progress: RunProgress, config: RunConfig | None = None) -> tuple[Any, Any, Any]:
    """What a poll sends the loss, scores and accuracy plots while following a running run at `progress`."""
    values = training_view(RunView(QueuedRun("20261202-120000", config or RunConfig(), state="running"), progress, None)).values()
    return values[3], values[6], values[7]


def next_frame(page: "sync_api.Page") -> None:
    """Send the next frame and wait until the page has it (Vega then redraws: what is checked next waits for it)."""
    shown = page.locator("#shown input")
    following = int(shown.input_value()) + 1
    page.get_by_role("button", name="Next").click()
    expect(shown).to_have_value(str(following), timeout=10_000)


def legend(page: "sync_api.Page", plot: str) -> list[str]:
    return page.locator(f"{plot} g.role-legend-label text").all_text_contents()


def drawn_strokes(page: "sync_api.Page", plot: str) -> set[str]:
    """The colours of the line paths that draw something (more than one point)."""
    lines = page.locator(f"{plot} path[aria-roledescription='line mark']")
    return {(lines.nth(i).get_attribute("stroke") or "").lower() for i in range(lines.count()) if (lines.nth(i).get_attribute("d") or "").count("L") >= 1}


def batches(first: int, last: int) -> tuple[BatchLoss, ...]:
    return tuple(BatchLoss(step, 8 * step, 1.0 - step / 100) for step in range(first, last + 1))


def estimate(step: int) -> LossEvaluated:
    """The book's 0-based step: the plots draw it at step + 1, as the batches."""
    return LossEvaluated(step - 1, step / 130, 8 * step, 0.9 - step / 200, 0.95 - step / 300)


def test_the_estimate_curves_stay_drawn_to_the_end_of_a_run(browser: "sync_api.Browser") -> None:
    # As a run goes: the first poll lands before the first estimate is in (a real model takes a while
    # over it), then estimates every 5 steps, then the run ends with the same rows.
    polls = [
        RunProgress(batch_losses=batches(1, 1)),
        RunProgress(batch_losses=batches(1, 6), estimates=(estimate(1),)),
        RunProgress(batch_losses=batches(1, 11), estimates=(estimate(1), estimate(6), estimate(11))),
    ]
    polls.append(polls[-1])  # the last poll, when the run is done
    with plots_page(browser, [(plots_of(progress)[0], None, None) for progress in polls]) as page:
        for _ in polls:
            next_frame(page)
        everything = {LOSS_COLORS[name].lower() for name in LOSS_COLORS}
        eventually(lambda: drawn_strokes(page, "#loss-steps"), lambda drawn: drawn == everything, "every curve drawn at the end")
        assert legend(page, "#loss-steps") == ["training batch", "train", "validation"]


def test_the_first_estimate_shows_as_points_on_sensible_axes(browser: "sync_api.Browser") -> None:
    first = ValidationEvaluated(0, 0.01, 8, Metrics(0.7, 0.55, [[10, 10], [8, 12]], 0.55, 0.6, 0.57, 40))
    progress = RunProgress(live=(first,), baseline=BaselineEvaluated(0.5, 0.475, 0.5))
    _, scores, accuracy = plots_of(progress)
    with plots_page(browser, [(None, scores, accuracy)]) as page:
        next_frame(page)
        expect(page.locator("#live-scores path[aria-roledescription='point']").first).to_be_attached(timeout=10_000)
        eventually(lambda: points_inside(page, "#live-scores"), lambda inside: inside == len(SCORE_COLORS), "one estimate, four scores")
        eventually(lambda: points_inside(page, "#accuracy"), lambda inside: inside == 2, "train and validation before training")
        for plot in ("#live-scores", "#accuracy"):
            ticks = page.locator(f"{plot} g.role-axis text").all_text_contents()
            assert ticks and not any("0.000" in tick for tick in ticks), ticks
        assert "step (0: before training)" in page.locator("#accuracy g.role-axis text").all_text_contents()


# Gradio's own spec names an older Vega-Lite than it ships; every chart logs this, whatever its data.
GRADIOS_OWN = "The input spec uses Vega-Lite v5"


def x_ticks(page: "sync_api.Page", plot: str) -> list[str]:
    """The labels along a plot's x axis, left to right."""
    return page.locator(f"{plot} g.role-axis[aria-label^='X-axis'] g.role-axis-label text").all_text_contents()


def last_tick(page: "sync_api.Page", plot: str) -> int:
    """Where a plot's x axis ends: its last whole-number label (Vega keeps its own description of the axis from the first draw)."""
    return max(int(tick.replace(",", "")) for tick in x_ticks(page, plot))


def test_the_plots_reach_the_planned_end_from_the_start_and_warn_of_nothing(browser: "sync_api.Browser") -> None:
    # A run of 40 steps that has not drawn anything yet, then its first steps: before, the empty plots had an
    # axis with one "1.000000" tick and the browser warned "Infinite extent" for every field.
    config = RunConfig().with_train(max_steps=40)
    polls = [RunProgress(), RunProgress(total_steps=40, steps_per_epoch=130, epochs=1, step=3, batch_losses=batches(1, 3))]
    with plots_page(browser, [plots_of(progress, config) for progress in polls]) as page:
        warnings: list[str] = []
        page.on("console", lambda message: warnings.append(message.text) if message.type in ("warning", "error") and GRADIOS_OWN not in message.text else None)
        for progress in polls:
            next_frame(page)
            if progress.batch_losses:  # the frame is drawn once its batches are
                batches_only = {LOSS_COLORS["training batch"].lower()}
                eventually(lambda: drawn_strokes(page, "#loss-steps"), batches_only.__eq__, "the batches drawn")
            for plot in ("#loss-steps", "#live-scores", "#accuracy"):
                expect(page.locator(f"{plot} g.role-axis[aria-label^='X-axis']")).to_be_attached(timeout=10_000)
                eventually(lambda plot=plot: last_tick(page, plot), lambda last: last == 40, f"{plot} reaches the planned last step")
                ticks = x_ticks(page, plot)
                assert ticks and all(tick.isdigit() for tick in ticks), (plot, ticks)  # whole steps: no 1.000000, no 2.5
            assert points_inside(page, "#live-scores") == points_inside(page, "#accuracy") == 0  # the placeholders lie outside the axes
        assert warnings == []


def test_a_newly_followed_run_shows_its_own_points_on_its_own_axes(browser: "sync_api.Browser") -> None:
    # A page follows a run of 40 steps, then a new run of 20 that has drawn nothing yet. (Plot limits sent
    # with new data made Gradio redraw with the data it had: the first run's curves on the second's axes.)
    first = plots_of(RunProgress(total_steps=40, steps_per_epoch=130, epochs=1, step=10, batch_losses=batches(1, 10)), RunConfig().with_train(max_steps=40))
    second = plots_of(RunProgress(), RunConfig().with_train(max_steps=20))
    with plots_page(browser, [first, second]) as page:
        next_frame(page)
        eventually(lambda: drawn_strokes(page, "#loss-steps"), lambda drawn: drawn == {LOSS_COLORS["training batch"]}, "the first run's batches")
        assert last_tick(page, "#loss-steps") == 40
        next_frame(page)
        eventually(lambda: last_tick(page, "#loss-steps"), lambda last: last == 20, "the new run's axis")
        assert drawn_strokes(page, "#loss-steps") == set()  # nothing of the first run
