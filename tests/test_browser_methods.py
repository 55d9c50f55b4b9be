"""The methods in a real browser: the method control greys out the LoRA settings, and the Runs tab sets the
methods side by side, the classical baseline included (same rules as test_browser.py)."""

from collections.abc import Iterator
from pathlib import Path

import pytest
import test_browser
from app_fixtures import RunningApp, running_app
from test_browser import app_page, expect, open_tab, screenshot
from test_methods_compared import write_run

from engine.config import BASELINE_METHOD
from ui.settings import AppSettings

pytestmark = [pytest.mark.browser, pytest.mark.slow]

browser = test_browser.browser  # the same module-scoped chromium fixture


@pytest.fixture
def served(tiny_model_dir: Path, prepared_data: Path, tmp_path: Path) -> Iterator[RunningApp]:
    write_run(tmp_path / "runs", "lora-run", "lora", "2026-01-02T10:00:00+00:00", 0.95, saved_bytes=2_500_000)
    write_run(tmp_path / "runs", "baseline-run", BASELINE_METHOD, "2026-01-01T09:00:00+00:00", 0.9)
    settings = AppSettings(model=str(tiny_model_dir), device="cpu", out=tmp_path / "runs", cache=prepared_data)
    with running_app(settings) as running:
        yield running


@pytest.mark.parametrize("viewport", [{"width": 1280, "height": 720}, {"width": 390, "height": 844}])
def test_method_control_and_methods_side_by_side(browser, served, viewport):
    with app_page(browser, served.url) as page:
        errors: list[str] = []
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.set_viewport_size(viewport)
        open_tab(page, "Model & LoRA")
        expect(page.locator("#lora-picture")).to_contain_text("frozen", timeout=20_000)  # the page's load events have set the controls
        rank = page.locator("#rank input[type=number]")
        expect(rank).to_be_enabled()
        page.locator("#method").get_by_text("Everything", exact=False).click()
        expect(page.locator("#method-note")).to_contain_text("not used")
        expect(rank).to_be_disabled()
        expect(page.locator("#alpha input")).to_be_disabled()
        screenshot(page, f"methods-model-{viewport['width']}")
        expect(rank).to_be_disabled()  # still, once everything the click set off has settled
        page.locator("#method").get_by_text("LoRA: small", exact=False).click()
        expect(rank).to_be_enabled()
        open_tab(page, "Runs")
        table = page.locator("#methods-compared")
        expect(table).to_contain_text("TF-IDF baseline (no LLM)", timeout=20_000)
        expect(table).to_contain_text("90")
        expect(table).to_contain_text("2.5")
        expect(page.locator("#methods-note")).to_contain_text("97.32 % validation")
        if viewport["width"] > 1000:  # fitting it once is enough: the button's layout is the same
            page.locator("#fit-baseline").click()
            expect(page.locator("#baseline-note")).to_contain_text("96.67 %", timeout=120_000)  # the real SMS splits, as the CLI gets
            expect(table).to_contain_text("96.67")  # the new baseline run replaces the older one side by side
            expect(page.locator("#run-history")).to_contain_text("baseline-2")  # and joins the history (baseline-<date-time>)
        screenshot(page, f"methods-runs-{viewport['width']}")
        assert errors == []
