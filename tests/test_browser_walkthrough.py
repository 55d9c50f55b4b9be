"""A whole visit on a fresh app, in a real browser, with not one error in the page's console.

Upload the data, change the rank, train a few steps, reload mid-run, Stop, train to the end,
classify, explain, evaluate; then a grid of runs in the queue: watch one on the Train tab, cancel
one still waiting, and see the heat map of what the grid found. Same rules as test_browser.py
(Debian chromium + Playwright; CI=true makes a missing browser fail; nothing outside 127.0.0.1).
"""

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import test_browser
from app_fixtures import RunningApp, running_app
from conftest import SMS_ZIP
from test_browser import app_page, expect, open_tab, screenshot, set_number, sync_api

from ui.settings import AppSettings

pytestmark = [pytest.mark.browser, pytest.mark.slow]

browser = test_browser.browser  # the same module-scoped chromium fixture
STATUS = "#train-status textarea"


@pytest.fixture
def served(tiny_model_dir: Path, tmp_path: Path) -> Iterator[RunningApp]:
    """A fresh app: no data, no runs, one worker (so a grid's runs wait their turn)."""
    settings = AppSettings(
        model=str(tiny_model_dir), device="cpu", out=tmp_path / "runs", cache=tmp_path / "cache", data_urls=("http://127.0.0.1:9/none.zip",), workers=1
    )
    with running_app(settings) as running:
        yield running


def queue_row(page: "sync_api.Page", run: str) -> "sync_api.Locator":
    return page.locator("#queue [role=row]", has_text=run)


def test_a_whole_visit_with_no_console_error(browser: "sync_api.Browser", served: RunningApp) -> None:
    with app_page(browser, served.url) as page:
        errors: list[str] = []
        stage = ["start"]  # where the visit was when an error came
        page.on("pageerror", lambda error: errors.append(f"uncaught at {stage[0]}: {error}"))
        # While the page reloads, Gradio's client logs each event stream the reload cuts ("AbortError", "Connection errored
        # out"): the page's own doing, not a fault. Every other stage must stay free of console errors.
        page.on("console", lambda msg: errors.append(f"console at {stage[0]}: {msg.text}") if msg.type == "error" and stage[0] != "reload" else None)

        # Data: the shipped zip, uploaded
        stage[0] = "upload"
        page.locator("#upload input[type=file]").set_input_files(str(SMS_ZIP))
        expect(page.locator("#data-status")).to_contain_text("Data ready from the uploaded file", timeout=60_000)

        # Model & LoRA: rank 4 and a long run
        stage[0] = "settings"
        open_tab(page, "Model & LoRA")
        set_number(page, "#rank input[type=number]", "4")
        page.get_by_text("Advanced").click()
        set_number(page, "#epochs input", "50")
        set_number(page, "#eval-freq input", "5")

        # Train a few steps, reload mid-run, Stop
        stage[0] = "first run"
        open_tab(page, "Train")
        page.get_by_role("button", name="Start training").click()
        status = page.locator(STATUS)
        expect(status).to_have_value(re.compile(r"^Running: step [1-9]"), timeout=120_000)
        expect(page.locator("#run-header")).to_contain_text("rank 4")
        stage[0] = "reload"
        page.reload()
        page.get_by_role("button", name="Download the SMS Spam Collection").wait_for()
        stage[0] = "first run, reloaded"
        open_tab(page, "Train")
        expect(status).to_have_value(re.compile(r"^Running: step [1-9]"), timeout=20_000)
        page.get_by_role("button", name="Stop", exact=True).click()
        expect(status).to_have_value(re.compile(r"^Stopped after step \d+"), timeout=30_000)
        expect(page.locator("#final")).to_contain_text("not offered on Evaluate")  # why a stopped run has no final table

        # ...then train to the end
        stage[0] = "second run"
        open_tab(page, "Model & LoRA")
        page.get_by_text("Advanced").click()  # closed again since the reload
        set_number(page, "#max-steps input", "10")
        open_tab(page, "Train")
        page.get_by_role("button", name="Start training").click()
        expect(status).to_have_value(re.compile(r"^Finished in "), timeout=300_000)
        expect(page.locator("#final")).to_contain_text("1,040 of 1,045", timeout=10_000)

        # Classify and explain with the adapter just trained
        stage[0] = "classify"
        open_tab(page, "Classify")
        expect(page.locator("#adapter-status")).to_contain_text(re.compile(r"Answering: run \d{8}-\d{6} · "), timeout=20_000)  # the run just trained
        page.locator("#message textarea").fill("WINNER!! You have won a free holiday, call now")
        page.get_by_role("button", name="Classify", exact=True).click()
        expect(page.locator("#prediction-after [data-testid='label-output-value']")).to_have_text(re.compile("^(ham|spam)$"), timeout=60_000)
        page.get_by_role("button", name="Explain this message").click()
        expect(page.locator("#token-heatmap .token").first).to_be_attached(timeout=60_000)

        # Evaluate the finished run
        stage[0] = "evaluate"
        open_tab(page, "Evaluate")
        expect(page.locator("#eval-summary")).to_contain_text("validation", timeout=30_000)

        # Runs: a grid of three ranks on one worker; watch the running one, cancel one still waiting
        stage[0] = "grid"
        open_tab(page, "Runs")
        for rank in ("8", "16"):
            page.locator("#grid-ranks").get_by_label(rank, exact=True).uncheck()
        expect(page.locator("#grid-preview")).to_contain_text("3 ranks = 3 runs")
        page.get_by_role("button", name="Add the grid to the queue").click()
        expect(page.locator("#queue-note")).to_contain_text("Queued 3 runs in grid-", timeout=20_000)
        expect(queue_row(page, "rank4")).to_contain_text("queued", timeout=20_000)
        grid = next(view.run.grid for view in served.lab.scheduler.views() if view.run.grid)
        page.locator("#queue-pick input").fill(f"{grid}/rank4")
        page.locator("#queue-pick input").press("Enter")
        page.get_by_role("button", name="Cancel", exact=True).click()
        expect(page.locator("#queue-note")).to_contain_text(f"Cancelled {grid}/rank4")
        expect(queue_row(page, "rank4")).to_contain_text("cancelled", timeout=10_000)
        running = next(view.run.id for view in served.lab.scheduler.views() if view.run.grid and view.run.state in ("running", "queued"))
        page.locator("#queue-pick input").fill(running)
        page.locator("#queue-pick input").press("Enter")
        page.get_by_role("button", name="Watch on the Train tab").click()
        expect(page.locator("#run-header")).to_contain_text(f"Run {running}", timeout=20_000)  # the Train tab opened, on that run
        open_tab(page, "Runs")
        expect(page.locator("#compare-note")).to_contain_text("2 of 3 runs", timeout=300_000)
        expect(page.locator("#compare-heat img")).to_be_visible(timeout=20_000)
        expect(page.locator("#compare-cost img")).to_be_visible(timeout=20_000)
        screenshot(page, "runs")

        assert [view.run.state for view in served.lab.scheduler.views() if view.run.grid] == ["done", "done", "cancelled"]
        assert errors == []
