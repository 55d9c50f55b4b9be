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
import test_browser_insight
from app_fixtures import RunningApp, running_app
from insight_fixtures import three_class_scores
from test_browser import app_page, expect, open_tab, set_number, sync_api

from ui.settings import AppSettings
from ui.views import AWAY_RGB, TOWARDS_RGB

pytestmark = [pytest.mark.browser, pytest.mark.slow]

finished_runs = insight_fixtures.finished_runs
browser = test_browser.browser  # the same module-scoped chromium fixture
served, page = test_browser_insight.served, test_browser_insight.page  # the same app: a finished run and the small data


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


def settled(page: "sync_api.Page", output: str) -> None:
    """Wait until the output's last event has completed (Gradio hides its status tracker then; pending or failed
    shows it), and check it carries no error badge."""
    trackers = page.locator(f"{output} [data-testid='status-tracker']")
    expect(trackers.first).to_be_attached()
    for index in range(trackers.count()):
        expect(trackers.nth(index)).to_have_class(re.compile(r"\bhide\b"), timeout=10_000)
    expect(page.locator(f"{output} .error")).to_have_count(0)


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
    # Two legends for two quantities, in the same colours: the heat map's probability, the bars' change in it
    for view, up, down in ((heat, "P(spam) above 0.5", "P(spam) below 0.5"), (bars, "the word raises P(spam)", "the word lowers P(spam)")):
        expect(view.locator(".direction-legend")).to_contain_text(up)
        expect(view.locator(".direction-legend")).to_contain_text(down)
        assert background(view.locator(".swatch.towards")) == towards
        assert background(view.locator(".swatch.away")) == away
    expect(bars.locator(".why-they-differ")).to_contain_text("they can disagree")
    for index in range(heat.locator(".token").count()):  # a token's colour says which side of 0.5 it is
        token = heat.locator(".token").nth(index)
        assert background(token) == (towards if float(token.get_attribute("data-p")) >= 0.5 else away)
    for index in range(bars.locator(".bar").count()):  # a word's bar says which way it pushes, whatever the signs present
        bar = bars.locator(".bar").nth(index)
        assert background(bar) == (towards if "towards" in (bar.get_attribute("class") or "") else away)


def test_an_explanation_clears_when_the_message_changes(page: "sync_api.Page") -> None:
    explain(page, "URGENT! Your mobile number has won a prize. Call now to claim, T&C apply.")
    expect(page.locator("#word-influence .bar").first).to_be_attached(timeout=20_000)
    page.locator("#message textarea").fill("see you at six")  # the explanation spoke of the other message
    expect(page.locator("#token-heatmap .token")).to_have_count(0, timeout=10_000)
    expect(page.locator("#word-influence .bar")).to_have_count(0)
    explain(page, "see you at six")  # and a new one comes for the new message
    page.locator("#example-1").click()  # an example put in the box clears it too
    expect(page.locator("#token-heatmap .token")).to_have_count(0, timeout=10_000)


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
    expect(page.locator(".toast-body", has_text="the message is empty")).to_have_count(1, timeout=10_000)
    # The refusal clears the answers to the last message (they stay until the failure is handled): then no badge may remain.
    expect(page.locator("#classify-details")).not_to_contain_text("tokens read", timeout=10_000)
    expect(page.locator("#prediction-after [data-testid='label-output-value']")).to_have_count(0)
    for output in ("#prediction-after", "#prediction-before", "#classify-details"):
        settled(page, output)
    # a failed Download: its message by the upload box, the data shown before untouched, no badges
    open_tab(page, "Data")
    expect(page.locator("#counts")).to_contain_text("train", timeout=20_000)
    page.get_by_role("button", name="Download the SMS Spam Collection").click()
    status = page.locator("#data-status")
    expect(status).to_contain_text("upload", timeout=30_000)
    expect(status).to_contain_text("could not connect")  # put there by the failure's own handler, after the error
    for output in ("#data-status", "#counts", "#preview", "#token-histogram"):
        settled(page, output)
    expect(page.locator("#counts")).to_contain_text("train")


@pytest.fixture
def fresh(tiny_model_dir: Path, tmp_path: Path) -> Iterator[RunningApp]:
    """The app as a first-time visitor finds it: no data, no runs."""
    settings = AppSettings(
        model=str(tiny_model_dir), device="cpu", out=tmp_path / "runs", cache=tmp_path / "cache", data_urls=("http://127.0.0.1:9/none.zip",)
    )
    with running_app(settings) as running:
        yield running


def right_edge_inside(page: "sync_api.Page", table: str, header: str) -> bool:
    """Whether a column's header is within the table's visible width (not scrolled off to the right)."""
    cell = page.locator(f"{table} th[role=columnheader]", has_text=header).first
    box, frame = cell.bounding_box(), page.locator(f"{table} [role=grid]").bounding_box()
    assert box and frame, header
    return box["x"] + box["width"] <= frame["x"] + frame["width"] + 1


def test_answers_come_first_in_wide_tables(page: "sync_api.Page", served: RunningApp) -> None:
    long = "Dear customer, " + "this message goes on and on about nothing in particular, " * 8 + "call now"
    open_tab(page, "Classify")
    page.get_by_text("Classify many messages at once").click()
    page.locator("#many textarea").fill(f"{long}\nsee you at 6")
    page.locator("#classify-many").click()
    expect(page.locator("#many-results")).to_contain_text("see you at 6", timeout=60_000)
    for header in ("label", "probability"):
        assert right_edge_inside(page, "#many-results", header), header
    open_tab(page, "Evaluate")
    expect(page.locator("#mistakes [role=gridcell]").first).to_be_attached(timeout=20_000)
    for header in ("true", "predicted", "P(spam)"):
        assert right_edge_inside(page, "#mistakes", header), header
    open_tab(page, "Runs")
    expect(page.locator("#run-history")).to_contain_text("first-run", timeout=20_000)
    for header in ("test acc. (%)", "state"):
        assert right_edge_inside(page, "#run-history", header), header


DRAWN = {"Runs": "#overlay path[aria-roledescription='line mark']", "Evaluate": "#mistakes [role=gridcell]", "Model & LoRA": "#lora-picture .lora-picture"}


def test_switching_tabs_logs_no_errors(page: "sync_api.Page", served: RunningApp) -> None:
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    open_tab(page, "Runs")
    expect(page.locator("#overlay path[aria-roledescription='line mark']")).to_have_count(2, timeout=20_000)
    open_tab(page, "Model & LoRA")
    runs = served.lab.settings.out  # a run finishes meanwhile (a sweep's, say): the next visit to Runs chooses it
    shutil.copytree(runs / "first-run", runs / "second-run")
    record = (runs / "second-run" / "run.json").read_text(encoding="utf-8")
    (runs / "second-run" / "run.json").write_text(re.sub(r'"created": "\d{4}', '"created": "2999', record), encoding="utf-8")
    for name in ("Runs", "Evaluate", "Model & LoRA", "Runs", "Model & LoRA", "Evaluate", "Model & LoRA"):
        open_tab(page, name)
        expect(page.locator(DRAWN[name]).first).to_be_visible(timeout=20_000)  # the tab shows its content: switch on at once
    # The Runs tab took the new run when opened (its refresh ran and drew it); an error logged on the way is caught.
    expect(page.locator("#overlay-runs")).to_contain_text("second-run", timeout=20_000)
    assert errors == []


# What a tab says, once its refresh has run, when there is nothing yet (Data, Train and Classify fill theirs on the page's load).
EMPTY_SAYS = {"Evaluate": ("#eval-summary", "No finished run yet"), "Runs": ("#compare-note", "No grid yet")}


def test_empty_tables_show_their_column_names(browser: "sync_api.Browser", fresh: RunningApp) -> None:
    with app_page(browser, fresh.url) as page:
        expect(page.locator("#data-status")).to_contain_text("No data yet", timeout=20_000)
        for tab in ("Data", "Train", "Classify", "Evaluate", "Runs"):
            open_tab(page, tab)
            if tab in EMPTY_SAYS:  # the tab's refresh on opening has ended: it says there is nothing yet
                element, words = EMPTY_SAYS[tab]
                expect(page.locator(element)).to_contain_text(words, timeout=20_000)
            for table in page.locator("[role=grid]").all():
                if table.is_visible():
                    names = [text.strip() for text in table.locator("th[role=columnheader]").all_inner_texts()]
                    assert names and not all(name.isdigit() for name in names if name), (tab, names)
        open_tab(page, "Runs")
        assert "test acc. (%)" in headers(page, "#run-history")
        open_tab(page, "Data")
        assert headers(page, "#preview") == ["class", "message"]


def test_evaluate_speaks_of_the_chosen_class_and_counts_in_good_english(page: "sync_api.Page", served: RunningApp, tmp_path: Path) -> None:
    three_class_scores(served.lab.settings.out / "first-run", tmp_path)

    open_tab(page, "Evaluate")
    summary = page.locator("#eval-summary")
    expect(summary).to_contain_text("P(bills) ≥ 0.50", timeout=20_000)
    page.locator("#eval-positive input").click()
    page.get_by_role("option", name="friends").click()
    expect(summary).to_contain_text("P(friends) ≥ 0.50", timeout=10_000)
    set_number(page, "#threshold input[type=number]", "0.55")
    expect(summary).to_contain_text("1 mistake,", timeout=10_000)
    tab_text = page.locator("#eval-summary").locator("xpath=ancestor::*[@role='tabpanel'][1]").inner_text()
    assert "spam" not in tab_text.lower()  # this run knows no spam: nothing on the tab speaks of it


def covers(toast: "sync_api.Locator", control: "sync_api.Locator") -> bool:
    box, other = toast.bounding_box(), control.bounding_box()
    assert box and other
    apart = box["x"] >= other["x"] + other["width"] or other["x"] >= box["x"] + box["width"]
    return not (apart or box["y"] >= other["y"] + other["height"] or other["y"] >= box["y"] + box["height"])


def test_toasts_go_by_themselves_and_cover_no_control_they_speak_of(page: "sync_api.Page", served: RunningApp) -> None:
    # a failed Download points to the upload box: nothing may sit on it
    expect(page.locator("#data-status")).to_contain_text("Data prepared earlier", timeout=30_000)  # the page's own load has drawn the data
    download = page.get_by_role("button", name="Download the SMS Spam Collection")
    download.click()
    # The failure is told in the status line by the failure's own handler, which runs after the error (and any toast of it) arrived.
    expect(page.locator("#data-status")).to_contain_text("upload", timeout=30_000)
    settled(page, "#data-status")
    for toast in page.locator(".toast-body").all():
        assert not covers(toast, page.locator("#upload")) and not covers(toast, download)
    # a second Start while a run goes: an info toast says the new run waits, away from Start and Stop, and goes by itself
    open_tab(page, "Model & LoRA")
    page.get_by_text("Advanced").click()
    set_number(page, "#epochs input", "50")
    open_tab(page, "Train")
    start, stop = page.get_by_role("button", name="Start training"), page.get_by_role("button", name="Stop", exact=True)
    start.click()
    expect(page.locator("#train-status textarea")).to_have_value(re.compile("^Running"), timeout=60_000)
    start.click()
    toast = page.locator(".toast-body", has_text="waits in the queue behind 1 other run")
    expect(toast).to_have_count(1, timeout=10_000)
    assert not covers(toast, start) and not covers(toast, stop)
    expect(toast).to_have_count(0, timeout=15_000)  # gone by itself
    stop.click()
