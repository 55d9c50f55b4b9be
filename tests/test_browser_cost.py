"""The cost lines in a real browser: beside Start (measured once, then changing with the settings) and under a grid's preview."""

import re

import pytest
import test_browser
from test_browser import expect, open_tab, screenshot, set_number, sync_api

pytestmark = [pytest.mark.browser, pytest.mark.slow]
browser, served, page = test_browser.browser, test_browser.served, test_browser.page  # the same chromium, app and page

COST = re.compile(r"About .+ on this machine \(CPU\), peak memory [\d.]+ GB")


def test_the_cost_shows_beside_start_and_under_a_grid(page: "sync_api.Page") -> None:
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    open_tab(page, "Train")
    line = page.locator("#run-cost")
    expect(line).to_contain_text(COST, timeout=120_000)  # the first estimate measures the machine (a subprocess)
    before = line.inner_text()
    screenshot(page, "cost-train-1280")
    open_tab(page, "Model & LoRA")
    page.get_by_text("Advanced").click()
    set_number(page, "#epochs input", "40")
    open_tab(page, "Train")
    expect(line).not_to_have_text(before, timeout=90_000)  # queued behind the other widgets' events on a busy machine
    expect(line).to_contain_text(COST)
    open_tab(page, "Runs")
    expect(page.locator("#grid-cost")).to_contain_text(re.compile(r"\d+ runs, about .+ on \d+ workers?\."), timeout=60_000)
    screenshot(page, "cost-runs-1280")
    page.set_viewport_size({"width": 390, "height": 844})
    open_tab(page, "Train")
    expect(line).to_contain_text(COST)
    screenshot(page, "cost-train-phone")
    assert errors == []
