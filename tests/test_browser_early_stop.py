"""Early stopping and the best adapter in a real browser (same rules as test_browser.py): the control on Model &
LoRA, and Classify and Evaluate naming the adapter that answers, best by default, last when picked on either tab."""

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import test_browser
import test_early_stop
from app_fixtures import RunningApp, running_app
from test_browser import app_page, expect, open_tab, screenshot, set_number
from test_early_stop import BEST, STOP

from ui.settings import AppSettings

pytestmark = [pytest.mark.browser, pytest.mark.slow]

browser = test_browser.browser  # the same module-scoped chromium fixture
early_stopped = test_early_stop.early_stopped  # a run that stopped early at step 7, its best at step 3


@pytest.fixture
def served(early_stopped: tuple[Path, Path], tiny_model_dir: Path, prepared_data: Path, tmp_path: Path) -> Iterator[RunningApp]:
    shutil.copytree(early_stopped[0], tmp_path / "runs" / "early")
    settings = AppSettings(model=str(tiny_model_dir), device="cpu", out=tmp_path / "runs", cache=prepared_data)
    with running_app(settings) as running:
        yield running


@pytest.mark.parametrize("viewport", [{"width": 1280, "height": 720}, {"width": 390, "height": 844}])
def test_the_best_adapter_answers_by_default_and_the_last_when_picked(browser, served, viewport):
    with app_page(browser, served.url) as page:
        errors: list[str] = []
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.set_viewport_size(viewport)
        open_tab(page, "Model & LoRA")
        page.get_by_text("Advanced").click()  # beside the other training settings
        expect(page.locator("#early-stop")).to_contain_text("Stop early after N estimates without improvement")
        set_number(page, "#early-stop input", "3")
        screenshot(page, f"early-stop-model-{viewport['width']}")

        open_tab(page, "Classify")
        status = page.locator("#adapter-status")
        expect(status).to_contain_text(f"best adapter, step {BEST} of {STOP} (lowest validation loss)", timeout=20_000)
        page.locator("#message textarea").fill("WINNER!! claim your free prize now")
        page.locator("#classify").click()
        expect(page.locator("#classify-details")).to_contain_text(f"best adapter, step {BEST} of {STOP}", timeout=30_000)
        screenshot(page, f"early-stop-classify-best-{viewport['width']}")
        page.locator("#answering-adapter").get_by_text("last: after the final step").click()
        expect(status).to_contain_text(f"last adapter, step {STOP} of {STOP} (its best was at step {BEST})")

        open_tab(page, "Evaluate")  # the choice of adapter follows Classify's
        expect(page.locator("#eval-summary")).to_contain_text(f"Run early, last adapter, step {STOP} of {STOP}", timeout=20_000)
        page.locator("#eval-adapter").get_by_text("best: lowest validation loss").click()
        expect(page.locator("#eval-summary")).to_contain_text(f"Run early, best adapter, step {BEST} of {STOP}")
        screenshot(page, f"early-stop-evaluate-{viewport['width']}")
        open_tab(page, "Classify")
        expect(status).to_contain_text(f"best adapter, step {BEST} of {STOP}")  # and back
        assert errors == []
