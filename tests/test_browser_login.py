"""The login page in a real browser, with every route but it behind the login: it loads, logs in, and the
app works afterwards, with nothing refused and no console error along the way."""

import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from app_fixtures import running_app
from test_browser import ARGS, CHROMIUM, IN_CI, SCREENSHOTS, open_tab, sync_api

from ui.lab import Lab

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not shutil.which(CHROMIUM):
        (pytest.fail if IN_CI else pytest.skip)(f"{CHROMIUM} is missing: apt-get install -y chromium")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield launched
        launched.close()


def open_any_tab(page: Any, name: str) -> None:
    """Open a tab, from the "More tabs" menu where it does not fit beside the others (on a phone)."""
    if page.get_by_role("tab", name=name, exact=True).filter(visible=True).count():
        open_tab(page, name)
        return
    page.get_by_role("button", name="More tabs").click()
    page.locator(".overflow-dropdown button", has_text=name).click()


@pytest.mark.parametrize("size", [(1280, 720), (390, 844)], ids=["desktop", "phone"])
def test_the_login_page_logs_in_and_the_app_works(browser: Any, trained_lab: Lab, size: tuple[int, int]) -> None:
    with running_app(trained_lab.settings, auth=("demo", "pw"), lab=trained_lab) as running:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page = browser.new_page(viewport={"width": size[0], "height": size[1]})
        errors: list[str] = []
        refused: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.on("response", lambda response: refused.append(f"{response.status} {response.url}") if response.status in (401, 403) else None)
        page.goto(running.url)
        page.get_by_label("username").fill("demo")
        page.get_by_label("password").fill("pw")
        page.get_by_role("button", name="Login").click()
        sync_api.expect(page.get_by_role("tab", name="Data", exact=True).filter(visible=True).first).to_be_visible(timeout=60_000)  # past the login
        page.screenshot(path=str(SCREENSHOTS / f"after-login-{size[0]}.png"))
        open_any_tab(page, "Classify")
        page.locator("#message textarea").fill("WIN a prize now")
        page.locator("#classify").click()
        sync_api.expect(page.locator("#prediction-after")).to_contain_text("%", timeout=60_000)  # an answer, through the queue
        page.screenshot(path=str(SCREENSHOTS / f"after-login-classified-{size[0]}.png"))
        assert refused == [] and errors == []
        page.close()
