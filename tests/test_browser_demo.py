"""What a first-time visitor meets, in a real browser: each test is one problem a visitor once hit.

Same rules as test_browser.py (Debian chromium + Playwright; CI=true makes a missing browser fail;
any request outside 127.0.0.1 fails the test). The app starts with a finished tiny run and a small
prepared dataset (as in test_browser_insight.py), so Classify, Evaluate and Runs have content at once.
"""

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import insight_fixtures
import pytest
import test_browser
from app_fixtures import RunningApp, running_app
from test_browser import app_page, expect, open_tab, sync_api

from ui.settings import AppSettings
from ui.views import AWAY_RGB, TOWARDS_RGB

pytestmark = pytest.mark.browser

small_data, finished_runs = insight_fixtures.small_data, insight_fixtures.finished_runs
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


def css_rgb(rgb: tuple[int, int, int]) -> str:
    return f"rgb({rgb[0]}, {rgb[1]}, {rgb[2]})"


def background(locator: "sync_api.Locator") -> str:
    """The element's background colour without its transparency, as the browser computed it."""
    colour = locator.evaluate("element => getComputedStyle(element).backgroundColor")
    match = re.match(r"rgba?\((\d+), (\d+), (\d+)", colour)
    assert match, colour
    return f"rgb({match.group(1)}, {match.group(2)}, {match.group(3)})"


def column(page: "sync_api.Page", table: str, index: int) -> list[str]:
    """The text of one column of a table's rows, in order."""
    cells = page.locator(f"{table} [role=gridcell][data-col='{index}']")
    return [cells.nth(i).inner_text().strip() for i in range(cells.count())]


def headers(page: "sync_api.Page", table: str) -> list[str]:
    return [text.strip() for text in page.locator(f"{table} th[role=columnheader]").all_inner_texts()]


def explain(page: "sync_api.Page", message: str) -> None:
    open_tab(page, "Classify")
    page.locator("#message textarea").fill(message)
    page.get_by_role("button", name="Explain this message").click()
    expect(page.locator("#token-heatmap .token").first).to_be_attached(timeout=60_000)


def test_why_this_answer_speaks_one_colour_code(page: "sync_api.Page") -> None:
    explain(page, "URGENT! Your mobile number has won a prize. Call now to claim, T&C apply.")
    towards, away = css_rgb(TOWARDS_RGB), css_rgb(AWAY_RGB)
    heat, bars = page.locator("#token-heatmap"), page.locator("#word-influence")
    expect(bars.locator(".bar").first).to_be_attached(timeout=20_000)
    for view in (heat, bars):  # both legends show both directions, in the same colours
        expect(view.locator(".direction-legend")).to_contain_text("towards spam")
        expect(view.locator(".direction-legend")).to_contain_text("away from spam")
        assert background(view.locator(".swatch.towards")) == towards
        assert background(view.locator(".swatch.away")) == away
    for index in range(heat.locator(".token").count()):  # a token's colour says which side of 0.5 it is
        token = heat.locator(".token").nth(index)
        assert background(token) == (towards if float(token.get_attribute("data-p")) >= 0.5 else away)
    for index in range(bars.locator(".bar").count()):  # a word's bar says which way it pushes, whatever the signs present
        bar = bars.locator(".bar").nth(index)
        assert background(bar) == (towards if "towards" in (bar.get_attribute("class") or "") else away)


def test_emoji_show_whole_in_the_heat_map(page: "sync_api.Page") -> None:
    explain(page, "🎉🎉 You WON a free iPhone 📱!!!")
    tokens = page.locator("#token-heatmap .token").all_text_contents()
    assert "\ufffd" not in "".join(tokens)
    assert "".join(tokens) == "🎉🎉 You WON a free iPhone 📱!!!"


def test_classify_many_numbers_lines_as_typed_and_ignores_blank_ones(page: "sync_api.Page") -> None:
    open_tab(page, "Classify")
    page.get_by_text("Classify many messages at once").click()
    page.locator("#many textarea").fill("hello there\nWIN cash now, call 0800\n\n   \nsee you at 6\nok")
    page.locator("#classify-many").click()
    summary = page.locator("#many-summary")
    expect(summary).to_contain_text("4 messages classified", timeout=60_000)
    expect(summary).to_contain_text("2 blank lines ignored")
    expect(summary).not_to_contain_text("skipped")
    expect(page.locator("#many-results [role=row][data-index]")).to_have_count(4)
    assert column(page, "#many-results", 0) == ["1", "2", "5", "6"]


def test_an_error_clears_stale_answers_and_leaves_no_badges(page: "sync_api.Page") -> None:
    open_tab(page, "Classify")
    page.locator("#message textarea").fill("See you at 6?")
    page.get_by_role("button", name="Classify", exact=True).click()
    expect(page.locator("#classify-details")).to_contain_text("tokens read", timeout=60_000)
    page.locator("#message textarea").fill("   ")
    page.get_by_role("button", name="Classify", exact=True).click()
    expect(page.locator("#message")).to_contain_text("the message is empty", timeout=10_000)  # said at the box itself
    page.wait_for_timeout(1000)
    for output in ("#prediction-after", "#prediction-before", "#classify-details"):
        expect(page.locator(f"{output} .error")).to_have_count(0)
    expect(page.locator("#classify-details")).not_to_contain_text("16 tokens read")
    # a failed Download: its message by the upload box, the data shown before untouched, no badges
    open_tab(page, "Data")
    expect(page.locator("#counts")).to_contain_text("train", timeout=20_000)
    page.get_by_role("button", name="Download the SMS Spam Collection").click()
    status = page.locator("#data-status")
    expect(status).to_contain_text("upload", timeout=30_000)
    expect(status).to_contain_text("could not connect")
    page.wait_for_timeout(1000)
    for output in ("#data-status", "#counts", "#preview", "#token-histogram"):
        expect(page.locator(f"{output} .error")).to_have_count(0)
    expect(page.locator("#counts")).to_contain_text("train")
