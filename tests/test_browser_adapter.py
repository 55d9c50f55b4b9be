"""See what LoRA learned, and take it with you, in a real browser: the anatomy of a run's adapter (heat map,
spectra, growth), its command line, the Download buttons, and a confusion matrix's cells leading to their
messages and each message's "Why this answer?" (Evaluate, and the Train tab's live matrix).

Same rules as test_browser.py (Debian chromium + Playwright; CI=true makes a missing browser fail; any
request outside 127.0.0.1 fails the test). Screenshots go to a temporary folder, or to LORA_LAB_SCREENSHOTS.
"""

import re
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path

import insight_fixtures
import pytest
import test_browser
from app_fixtures import RunningApp, running_app
from test_browser import app_page, expect, open_tab, screenshot, set_number, sync_api

from ui.settings import AppSettings

pytestmark = [pytest.mark.browser, pytest.mark.slow]

finished_runs = insight_fixtures.finished_runs
browser = test_browser.browser

PHONE = {"width": 390, "height": 844}


@pytest.fixture
def served(tiny_model_dir: Path, finished_runs: Path, small_data: Path, tmp_path: Path) -> Iterator[RunningApp]:
    shutil.copytree(finished_runs, tmp_path / "runs")
    shutil.copytree(small_data, tmp_path / "cache")
    settings = AppSettings(model=str(tiny_model_dir), device="cpu", out=tmp_path / "runs", cache=tmp_path / "cache", data_urls=("http://127.0.0.1:9/none.zip",))
    with running_app(settings) as running:
        yield running


@pytest.fixture
def page(browser: "sync_api.Browser", served: RunningApp) -> Iterator["sync_api.Page"]:
    with app_page(browser, served.url) as opened:
        errors: list[str] = []
        opened.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        yield opened
        assert errors == [], f"the browser console reported errors: {errors}"


def open_a_cell_and_a_message(page: "sync_api.Page", prefix: str, matrix: str) -> None:
    """Click the fullest cell of `matrix`, then the first message it lists: its explanation appears below, in place."""
    cells = page.locator(f"{matrix} td[data-cell]")
    expect(cells.first).to_be_attached(timeout=30_000)
    counts = [int(cells.nth(i).inner_text()) for i in range(cells.count())]
    fullest = max(range(len(counts)), key=counts.__getitem__)
    cells.nth(fullest).click()
    listed = page.locator(f"#{prefix}-cell-messages [role=row].virtual-row")  # the rows shown (not the table's hidden measuring ones)
    expect(page.locator(f"#{prefix}-cell-note")).to_contain_text(f"{counts[fullest]} message", timeout=20_000)
    expect(listed.first).to_be_visible(timeout=20_000)
    message = listed.first.locator("[role=gridcell]").last.inner_text().strip()
    listed.first.locator("[role=gridcell]").last.click()
    expect(page.locator(f"#{prefix}-why-note")).to_contain_text("Why this answer?", timeout=60_000)
    expect(page.locator(f"#{prefix}-why-heat .token").first).to_be_attached(timeout=60_000)
    shown = "".join(page.locator(f"#{prefix}-why-heat .token").all_inner_texts())
    assert shown.strip()[:20] == message[:20]  # the explanation is of the message clicked
    expect(page.locator(f"#{prefix}-why-words .bar").first).to_be_attached(timeout=20_000)


def test_the_anatomy_of_a_run_its_command_and_its_downloads(page: "sync_api.Page", served: RunningApp, browser: "sync_api.Browser") -> None:
    open_tab(page, "Inside the adapter")
    # First the adapter Classify answers with: the run's best, where it kept one apart from its last.
    expect(page.locator("#anatomy-summary")).to_contain_text(re.compile(r"(Best adapter \(step \d+\)|As saved): Rank 16, but most layers use"), timeout=30_000)
    heat = page.locator("#anatomy-heat td[data-layer]")
    expect(heat).to_have_count(6 * 2 + 1, timeout=20_000)  # 2 blocks x 6 kinds, and the head
    expect(page.locator("#anatomy-heat")).to_contain_text("%")
    expect(page.locator("#anatomy-spectra img")).to_be_visible(timeout=20_000)
    expect(page.locator("#anatomy-growth path[aria-roledescription='line mark']").first).to_be_attached(timeout=20_000)
    expect(page.locator("#reproduce-command")).to_contain_text("python -m engine train \\", timeout=20_000)
    expect(page.locator("#reproduce-command")).to_contain_text("--preset recommended")
    expect(page.locator("#reproduce-client")).to_contain_text("api_name='/start'")
    screenshot(page, "anatomy")

    page.locator("#anatomy-measure").get_by_text("Directions it uses").click()
    expect(page.locator("#anatomy-heat caption")).to_contain_text("Directions it uses", timeout=20_000)
    page.locator("#anatomy-moment input").click()
    page.get_by_role("option", name="after step 1", exact=True).click()
    expect(page.locator("#anatomy-summary")).to_contain_text("After step 1:", timeout=20_000)
    page.locator("#anatomy-moment input").click()
    page.get_by_role("option", name=re.compile(r"^as saved \(after step 6\)$")).click()
    expect(page.locator("#anatomy-summary")).to_contain_text("As saved: Rank 16, but most layers use", timeout=20_000)  # the last adapter

    page.locator("#export-peft").click()
    expect(page.locator("#export-file a").first).to_be_attached(timeout=120_000)
    with page.expect_download(timeout=60_000) as download:
        page.locator("#export-file a").first.click()
    with zipfile.ZipFile(download.value.path()) as archive:
        assert {"adapter_model.safetensors", "adapter_config.json", "README.md", "vocab.json"} <= set(archive.namelist())

    phone = browser.new_context(viewport=PHONE)
    small = phone.new_page()
    small.goto(served.url)
    small.get_by_role("button", name="Download the SMS Spam Collection").wait_for()
    open_tab(small, "Inside the adapter")  # a phone's tab bar wraps onto two rows: every tab in sight
    expect(small.locator("#anatomy-heat td[data-layer]")).to_have_count(13, timeout=30_000)
    expect(small.locator("#anatomy-spectra img")).to_be_visible(timeout=20_000)
    screenshot(small, "anatomy-phone")
    phone.close()


def test_an_evaluate_cell_lists_its_messages_and_each_opens_its_reason(page: "sync_api.Page") -> None:
    open_tab(page, "Evaluate")
    expect(page.locator("#confusion")).to_contain_text("true spam", timeout=20_000)
    open_a_cell_and_a_message(page, "eval", "#confusion")
    screenshot(page, "evaluate-cell-reason")


def test_the_live_matrix_of_a_run_lists_its_messages_and_their_reasons(page: "sync_api.Page") -> None:
    open_tab(page, "Model & LoRA")
    page.get_by_text("Advanced").click()
    set_number(page, "#max-steps input", "3")
    set_number(page, "#eval-freq input", "2")
    open_tab(page, "Train")
    page.get_by_role("button", name="Start training").click()
    expect(page.locator("#live-confusion")).to_contain_text("Full validation set", timeout=120_000)
    expect(page.locator("#train-status textarea")).to_have_value(re.compile(r"^Finished in "), timeout=300_000)
    open_a_cell_and_a_message(page, "live", "#live-confusion")
    expect(page.locator("#live-why-note")).to_contain_text("the adapter saved at step 3")
    screenshot(page, "train-cell-reason")


def test_a_runs_entry_says_how_to_run_it_again(page: "sync_api.Page") -> None:
    open_tab(page, "Runs")
    history = page.locator("#run-history [role=row].virtual-row")
    expect(history.first).to_contain_text("first-run", timeout=20_000)
    history.first.locator("[role=gridcell]").nth(3).click()
    expect(page.locator("#run-entry-name")).to_contain_text("first-run: how to run it again", timeout=20_000)
    expect(page.locator("#run-entry-command")).to_contain_text("python -m engine train \\")
    expect(page.locator("#run-entry-client")).to_contain_text("api_name='/start'")
    screenshot(page, "runs-entry")
