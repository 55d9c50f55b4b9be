"""A room in real browsers: two visitors and the presenter, each a browser of their own.

Each visitor acts on their own runs only (others' buttons are off and say why), the presenter's link
shows the room's settings and stops anyone's run, a limit set by the presenter refuses a visitor's
next Start, and a reload keeps the visitor. The runs never train (a fake worker holds them): this is
about who may do what. Screenshots at projector and phone size go with the others (test_browser.py).
"""

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import test_browser
from app_fixtures import RunningApp, running_app
from fake_workers import FakeWorkers
from test_browser import app_page, expect, open_tab, screenshot, set_number, sync_api

from engine.runs.scheduler import Scheduler
from ui.lab import Lab
from ui.settings import AppSettings

pytestmark = [pytest.mark.browser, pytest.mark.slow]

browser = test_browser.browser  # the same module-scoped chromium fixture
TOKEN = "a-presenter-secret"
REFUSED = "only the visitor who started it, or the presenter, can"


@pytest.fixture
def room(tiny_model_dir: Path, prepared_data: Path, tmp_path: Path) -> Iterator[RunningApp]:
    shutil.copytree(prepared_data, tmp_path / "cache")
    settings = AppSettings(model=str(tiny_model_dir), device="cpu", out=tmp_path / "runs", cache=tmp_path / "cache", room=True, presenter_token=TOKEN)
    lab = Lab(settings, scheduler=Scheduler(settings.out, FakeWorkers(1)))
    try:
        with running_app(settings, lab=lab) as served:
            yield served
    finally:
        lab.close(timeout=1)


def start(page: "sync_api.Page", owner: str = "") -> str:
    """Press Start on the Train tab; the id of the new run the page then follows."""
    open_tab(page, "Train")
    header = page.locator("#run-header")
    before = following(header.inner_text())
    page.locator("#owner textarea, #owner input").first.fill(owner)
    page.locator("#start").click()
    expect(header).not_to_contain_text("No run yet", timeout=60_000)
    if before:
        expect(header).not_to_contain_text(f"Run {before}", timeout=60_000)
    run = following(header.inner_text())
    assert run
    return run


def following(header: str) -> str | None:
    """The run a Train tab's header names."""
    match = re.search(r"Run (\S+)", header)
    return match.group(1) if match else None


def pick(page: "sync_api.Page", run: str) -> None:
    page.locator("#queue-pick input").fill(run)
    page.locator("#queue-pick input").press("Enter")


RELOADING: set[str] = set()  # whose page is reloading: Gradio's client then logs each event stream the reload cuts, no fault


def console_errors(page: "sync_api.Page", errors: list[str], who: str) -> None:
    page.on("pageerror", lambda error: errors.append(f"{who}: uncaught {error}"))
    page.on("console", lambda message: errors.append(f"{who}: {message.text}") if message.type == "error" and who not in RELOADING else None)


def test_two_visitors_and_the_presenter(browser: "sync_api.Browser", room: RunningApp) -> None:
    errors: list[str] = []
    with (
        app_page(browser, room.url) as ann,
        app_page(browser, room.url) as bob,
        app_page(browser, f"{room.url}?presenter={TOKEN}") as presenter,
    ):
        for page, who in ((ann, "ann"), (bob, "bob"), (presenter, "presenter")):
            console_errors(page, errors, who)
        expect(ann.locator("#room-line")).to_contain_text("Your runs are yours", timeout=20_000)
        expect(presenter.locator("#room-line")).to_contain_text("You are the presenter", timeout=20_000)

        anns = start(ann, "Ann")
        expect(ann.locator(".toast-body", has_text=f"Run {anns} starts now")).to_have_count(1, timeout=10_000)
        expect(ann.locator("#stop")).to_be_enabled()

        open_tab(bob, "Train")  # Bob has no run yet: his page shows the newest, Ann's, and may not stop it
        expect(bob.locator("#run-header")).to_contain_text(f"Run {anns}", timeout=20_000)
        expect(bob.locator("#run-header")).to_contain_text(f"{REFUSED} stop it")
        expect(bob.locator("#stop")).to_be_disabled()
        screenshot(bob, "room-visitor-train")
        bobs = start(bob, "Bob")
        expect(bob.locator(".toast-body", has_text=f"Run {bobs} is 1st in line")).to_have_count(1, timeout=10_000)
        expect(bob.locator("#stop")).to_be_enabled()

        open_tab(bob, "Runs")
        expect(bob.locator("#room-settings")).to_be_hidden()
        expect(bob.locator("#queue [role=row]", has_text="Bob (you)")).to_have_count(1, timeout=20_000)
        pick(bob, anns)
        expect(bob.locator("#queue-stop")).to_be_disabled(timeout=10_000)
        expect(bob.locator("#queue-note")).to_contain_text(f"run {anns} is Ann's: {REFUSED} move, cancel, stop or resume it", timeout=20_000)
        screenshot(bob, "room-visitor-runs")
        bob.set_viewport_size({"width": 390, "height": 844})
        screenshot(bob, "room-visitor-runs-phone")
        bob.set_viewport_size({"width": 1280, "height": 720})

        open_tab(presenter, "Runs")
        expect(presenter.locator("#room-settings")).to_be_visible(timeout=10_000)
        pick(presenter, anns)
        expect(presenter.locator("#queue-stop")).to_be_enabled()
        presenter.locator("#queue-stop").click()
        expect(presenter.locator("#queue-note")).to_contain_text(f"Stopping {anns}", timeout=20_000)
        expect(presenter.locator("#queue [role=row]", has_text=anns)).to_contain_text("stopped", timeout=20_000)
        set_number(presenter, "#room-most-waiting input", "1")
        presenter.locator("#room-apply").click()
        expect(presenter.locator("#queue-note")).to_contain_text("Each visitor may now have at most 1 waiting run", timeout=20_000)
        screenshot(presenter, "room-presenter-runs")

        # Bob's run started when Ann's stopped; a first waiting run is fine, a second passes the limit
        start(bob, "Bob")
        open_tab(bob, "Train")
        bob.locator("#start").click()
        expect(bob.locator(".toast-body", has_text="you have 1 run waiting and may have at most 1 at once")).to_have_count(1, timeout=10_000)

        RELOADING.add("bob")
        bob.reload()  # the same browser is the same visitor: his own latest run, and his Stop
        bob.get_by_role("button", name="Download the SMS Spam Collection").wait_for()
        RELOADING.discard("bob")
        open_tab(bob, "Train")
        expect(bob.locator("#run-header")).to_contain_text("queued by Bob", timeout=20_000)
        expect(bob.locator("#stop")).to_be_enabled()
    assert errors == [], errors
