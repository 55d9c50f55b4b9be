"""The insight views in a real browser: data quality, Evaluate, why this answer, Runs and a grid of two ranks.

Same rules as test_browser.py (Debian chromium + Playwright; CI=true makes a missing browser fail;
any request outside 127.0.0.1 fails the test). The app starts with a finished tiny run in its runs
folder and a small prepared dataset, so every view has real content at once. Screenshots go to a
temporary folder, or to LORA_LAB_SCREENSHOTS (e.g. docs/screenshots) to refresh the README's.
"""

import csv
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import insight_fixtures
import pytest
import test_browser
from app_fixtures import RunningApp, running_app
from test_browser import app_page, expect, open_tab, screenshot, set_number, sync_api

from engine.runs.history import all_runs
from ui.classify_tab import EXAMPLE_MESSAGES
from ui.settings import AppSettings

pytestmark = [pytest.mark.browser, pytest.mark.slow]

finished_runs = insight_fixtures.finished_runs
browser = test_browser.browser  # the same module-scoped chromium fixture


@pytest.fixture
def served(tiny_model_dir: Path, finished_runs: Path, small_data: Path, tmp_path: Path) -> Iterator[RunningApp]:
    shutil.copytree(finished_runs, tmp_path / "runs")
    shutil.copytree(small_data, tmp_path / "cache")
    settings = AppSettings(
        model=str(tiny_model_dir), device="cpu", out=tmp_path / "runs", cache=tmp_path / "cache", data_urls=("http://127.0.0.1:9/none.zip",)
    )
    with running_app(settings) as running:
        yield running


@pytest.fixture
def page(browser: "sync_api.Browser", served: RunningApp) -> Iterator["sync_api.Page"]:
    with app_page(browser, served.url) as opened:
        yield opened


def test_insight_views_in_a_real_browser(page: "sync_api.Page", served: RunningApp, tmp_path: Path) -> None:
    # Data: the prepared data's duplicates
    expect(page.locator("#data-quality")).to_contain_text("distinct texts", timeout=20_000)
    expect(page.locator("#data-quality")).to_contain_text("train & test")
    screenshot(page, "data-quality")

    # Evaluate: confusion matrix, metrics, ROC and mistakes of the finished run; the threshold moves them
    open_tab(page, "Evaluate")
    expect(page.locator("#confusion")).to_contain_text("true spam", timeout=20_000)
    expect(page.locator("#eval-summary")).to_contain_text("full validation set")
    expect(page.locator("#roc path[aria-roledescription='line mark']")).to_have_count(2, timeout=20_000)
    expect(page.locator("#eval-metrics")).to_contain_text("threshold 0.50")
    set_number(page, "#threshold input[type=number]", "0.2")
    expect(page.locator("#eval-metrics")).to_contain_text("threshold 0.20", timeout=10_000)
    expect(page.locator("#confusion")).to_contain_text("threshold 0.20")
    screenshot(page, "evaluate")

    # Classify: why this answer
    open_tab(page, "Classify")
    page.locator("#message textarea").fill(EXAMPLE_MESSAGES[2])
    page.get_by_role("button", name="Explain this message").click()
    expect(page.locator("#token-heatmap .token").first).to_be_attached(timeout=60_000)
    assert page.locator("#token-heatmap .token").count() > 10
    expect(page.locator("#word-influence .bar").first).to_be_attached(timeout=20_000)
    expect(page.locator("#word-influence")).to_contain_text("URGENT!")
    screenshot(page, "classify-explain")

    # Classify many: pasted lines answer in a table; an uploaded file comes back as a CSV to download
    page.get_by_text("Classify many messages at once").click()
    page.locator("#many textarea").fill("\n".join(EXAMPLE_MESSAGES[:3]))
    page.locator("#classify-many").click()
    for message in EXAMPLE_MESSAGES[:3]:
        expect(page.locator("#many-results")).to_contain_text(message[:20], timeout=60_000)
    page.get_by_text("Classify a file", exact=True).click()
    messages = tmp_path / "messages.txt"
    messages.write_text("\n".join(EXAMPLE_MESSAGES) + "\n", encoding="utf-8")
    page.locator("#batch-file input[type=file]").set_input_files(str(messages))
    page.locator("#classify-file").click()
    with page.expect_download(timeout=60_000) as download:
        page.locator("#batch-result a").first.click()
    rows = list(csv.reader(Path(download.value.path()).read_text(encoding="utf-8").splitlines()))
    assert rows[0][:2] == ["message", "label"] and [row[0] for row in rows[1:]] == list(EXAMPLE_MESSAGES)
    expect(page.locator("#batch-preview")).to_contain_text(EXAMPLE_MESSAGES[0][:20])

    # Runs: the history, the loss overlay, and a grid of two ranks: the Train tab follows it, the queue and heat map show it
    open_tab(page, "Runs")
    expect(page.locator("#run-history")).to_contain_text("first-run", timeout=20_000)
    expect(page.locator("#overlay path[aria-roledescription='line mark']")).to_have_count(2, timeout=20_000)
    open_tab(page, "Model & LoRA")
    page.get_by_text("Advanced").click()
    set_number(page, "#max-steps input", "4")
    set_number(page, "#eval-freq input", "2")
    open_tab(page, "Runs")
    for rank in ("4", "8", "16"):
        page.locator("#grid-ranks").get_by_label(rank, exact=True).uncheck()
    expect(page.locator("#grid-preview")).to_contain_text("2 ranks = 2 runs")
    page.get_by_role("button", name="Add the grid to the queue").click()
    expect(page.locator("#queue-note")).to_contain_text("Queued 2 runs in grid-", timeout=20_000)
    open_tab(page, "Train")  # the Train tab follows the grid's runs as they start, with no reload
    expect(page.locator("#run-header")).to_contain_text(re.compile(r"Run grid-\d+-\d+/rank[12]"), timeout=120_000)
    open_tab(page, "Runs")
    queue = page.locator("#queue")
    expect(queue).to_contain_text("rank2", timeout=20_000)
    expect(page.locator("#compare-note")).to_contain_text("2 of 2 runs", timeout=300_000)
    expect(page.locator("#compare-heat img")).to_be_visible(timeout=20_000)
    expect(page.locator("#compare-cost img")).to_be_visible(timeout=20_000)
    page.locator("#runs-refresh").click()
    expect(page.locator("#run-history")).to_contain_text("rank2", timeout=20_000)
    rank_1 = next(run.trainable for _, run in all_runs(served.lab.settings.out) if run.name == "rank1")
    expect(page.locator("#run-history")).to_contain_text(f"{rank_1:,}")  # one way of writing a count, everywhere
    expect(page.locator("#overlay")).to_contain_text("rank2 · validation", timeout=20_000)  # the legend follows the chosen runs
    expect(page.locator("#overlay path[aria-roledescription='line mark']")).to_have_count(4, timeout=20_000)
    screenshot(page, "runs")
