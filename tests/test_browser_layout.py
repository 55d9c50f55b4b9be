"""Every tab on a phone (390 x 844) and on a projector (1280 x 720), checked from the page's own boxes.

No main component overlaps another (its content included, unless the component scrolls or clips it),
charts keep a readable width and their titles whole, no table column is narrower than its header's first word, the LoRA
picture reads W, then A, then B, and the browser console stays free of the warnings our plots used to
cause. Screenshots of every tab at both sizes go to a temporary folder, or to LORA_LAB_SCREENSHOTS
(e.g. docs/screenshots) as phone-<tab>.png and projector-<tab>.png. Same rules as test_browser.py.
"""

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import insight_fixtures
import pytest
import test_browser
from app_fixtures import RunningApp, running_app, train_controls
from test_browser import charts_settled, expect, is_local, open_tab, screenshot, sync_api

from ui.classify_tab import EXAMPLE_MESSAGES
from ui.settings import AppSettings
from ui.train_tab import TrainTab
from ui.views import HALF_ROW_PX

pytestmark = [pytest.mark.browser, pytest.mark.slow]

finished_runs = insight_fixtures.finished_runs
browser = test_browser.browser  # the same module-scoped chromium fixture

SIZES = {"phone": (390, 844), "projector": (1280, 720)}
# What each tab shows once it has drawn its content: the check waits for it.
READY = {
    "Data": "#preview [role=gridcell]",
    "Model & LoRA": "#lora-picture .lora-picture",
    "Train": "#loss-steps path[aria-roledescription='line mark']",
    "Parameters": "#param-chart img",
    "Classify": "#word-influence .bar",
    "Evaluate": "#mistakes [role=gridcell]",
    "Inside the adapter": "#anatomy-spectra img",
    "Runs": "#overlay path[aria-roledescription='line mark']",  # drawn after the history table
}
GRADIOS_OWN = "The input spec uses Vega-Lite v5"  # Gradio's chart spec names an older Vega-Lite than it ships, on every chart

# The page's boxes, measured in the browser. A "main component" is a Gradio block holding no other block;
# its extent is its box grown by any content that spills out of it (content a scroller or clipper holds
# does not spill).
LAYOUT_JS = """
(minChart) => {
  const panel = [...document.querySelectorAll('[role=tabpanel]')].find(p => p.offsetParent !== null);
  const shown = (el) => el.offsetParent !== null && el.getBoundingClientRect().width > 0;
  const leaves = [...panel.querySelectorAll('.block')].filter(b => shown(b) && !b.querySelector('.block'));
  const name = (el) => el.id || el.getAttribute('aria-label') || el.className.split(' ').slice(0, 2).join('.');
  const clipped = (el, block) => {
    for (let a = el.parentElement; a && a !== block.parentElement; a = a.parentElement) {
      const style = getComputedStyle(a);
      if (style.overflowX !== 'visible' || style.overflowY !== 'visible') return true;
    }
    return false;
  };
  const extent = (block) => {
    const r = block.getBoundingClientRect();
    const box = {left: r.left, top: r.top, right: r.right, bottom: r.bottom};
    for (const el of block.querySelectorAll('*')) {
      const e = el.getBoundingClientRect();
      if (e.width === 0 || e.height === 0 || clipped(el, block)) continue;
      box.left = Math.min(box.left, e.left); box.top = Math.min(box.top, e.top);
      box.right = Math.max(box.right, e.right); box.bottom = Math.max(box.bottom, e.bottom);
    }
    return box;
  };
  const boxes = leaves.map(b => [name(b), extent(b)]);
  const overlaps = [];
  for (let i = 0; i < boxes.length; i++) for (let j = i + 1; j < boxes.length; j++) {
    const [a, p] = boxes[i], [b, q] = boxes[j];
    const w = Math.min(p.right, q.right) - Math.max(p.left, q.left), h = Math.min(p.bottom, q.bottom) - Math.max(p.top, q.top);
    if (w > 1 && h > 1) overlaps.push(`${a} and ${b} overlap by ${Math.round(w)} x ${Math.round(h)} px`);
  }
  // A chart's block at least minChart wide (or the whole row), and its plotting area (a Vega chart's x axis)
  // at least half of that: a title wider than the chart squeezes the plotting area instead.
  const narrowCharts = leaves.filter(b => b.querySelector('svg.marks, .matplotlib img')).flatMap(b => {
    const width = b.getBoundingClientRect().width, axis = b.querySelector("g.role-axis[aria-label^='X-axis']");
    const drawn = axis ? axis.getBoundingClientRect().width : width;
    return width < Math.min(minChart, panel.getBoundingClientRect().width) - 2 || drawn < width / 2
      ? [`${name(b)} is ${Math.round(width)} px wide, its axis ${Math.round(drawn)} px`] : [];
  });
  // A chart's title (and axis titles) inside its drawing (a text box may pass it by a pixel or two, unseen):
  // a y title taller than the plot pushes the title out.
  const cutTitles = leaves.flatMap(b => [...b.querySelectorAll('svg.marks')].flatMap(svg => {
    const frame = svg.getBoundingClientRect();
    return [...svg.querySelectorAll('g.role-title text, g.role-axis-title text')].flatMap(t => {
      const r = t.getBoundingClientRect();
      const out = Math.max(frame.top - r.top, frame.left - r.left, r.bottom - frame.bottom, r.right - frame.right);
      return r.width > 0 && out > 3 ? [`${name(b)}: "${t.textContent}" is cut by its chart's edge (${Math.round(out)} px)`] : [];
    });
  }));
  const canvas = document.createElement('canvas').getContext('2d');
  const narrowColumns = [];
  for (const grid of panel.querySelectorAll('[role=grid]')) {
    if (!shown(grid)) continue;
    for (const th of grid.querySelectorAll('th[role=columnheader]')) {
      const span = th.querySelector('.header-content span') || th;
      const word = span.textContent.trim().split(/\\s+/)[0];
      if (!word) continue;
      const style = getComputedStyle(span);
      canvas.font = `${style.fontStyle} ${style.fontWeight} ${style.fontSize} ${style.fontFamily}`;
      const wrap = th.querySelector('.cell-wrap') || th;
      const pad = parseFloat(getComputedStyle(wrap).paddingLeft) + parseFloat(getComputedStyle(wrap).paddingRight);
      const room = th.getBoundingClientRect().width - pad, needed = canvas.measureText(word).width;
      if (room + 0.5 < needed) narrowColumns.push(`${name(grid.closest('.block'))}: "${word}" needs ${Math.round(needed)} px, has ${Math.round(room)}`);
    }
  }
  return {leaves: boxes.length, overlaps, narrowCharts, narrowColumns, cutTitles};
}
"""

# Every announcement of Gradio's screen-reader status line, kept from the page's start.
ANNOUNCEMENTS_JS = """
window.__announced = [];
new MutationObserver(() => document.querySelectorAll('[role=status]').forEach(e => {
  const text = e.textContent.trim();
  if (text) window.__announced.push(text);
})).observe(document, {subtree: true, childList: true, characterData: true});
"""


@pytest.fixture(scope="module")
def served(tiny_model_dir: Path, finished_runs: Path, small_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApp]:
    """An app with data, an earlier finished run, and a short run of its own (so the Train tab has curves)."""
    folder = tmp_path_factory.mktemp("layout")
    shutil.copytree(finished_runs, folder / "runs")
    shutil.copytree(small_data, folder / "cache")
    settings = AppSettings(model=str(tiny_model_dir), device="cpu", out=folder / "runs", cache=folder / "cache", data_urls=("http://127.0.0.1:9/none.zip",))
    with running_app(settings) as running:
        TrainTab(running.lab).start_training(train_controls(settings.model, max_steps=6.0, eval_freq=2.0, epochs=2.0))
        assert running.lab.scheduler.wait(timeout=600), "the short run did not finish"
        yield running


def check_layout(page: "sync_api.Page", size: str, tab: str) -> None:
    found = page.evaluate(LAYOUT_JS, HALF_ROW_PX)
    assert found["leaves"] > 0, (size, tab)
    assert found["overlaps"] == [], (size, tab)
    assert found["narrowCharts"] == [], (size, tab)
    assert found["narrowColumns"] == [], (size, tab)
    assert found["cutTitles"] == [], (size, tab, *found["cutTitles"])
    if tab == "Model & LoRA":
        w, a, b = (page.locator(f"#lora-picture .matrix.{name}").bounding_box() for name in "wab")
        assert w and a and b
        assert (w["y"], w["x"]) <= (a["y"], a["x"]) and abs(a["y"] - b["y"]) < 2 and a["x"] < b["x"], (size, w, a, b)  # W, then A and B side by side
        assert b["x"] + b["width"] <= SIZES[size][0], (size, b)  # B within the screen


@pytest.mark.parametrize("size", SIZES)
def test_every_tab_keeps_its_layout_at_phone_and_projector_size(browser: "sync_api.Browser", served: RunningApp, size: str) -> None:
    width, height = SIZES[size]
    context = browser.new_context(viewport={"width": width, "height": height})
    context.add_init_script(ANNOUNCEMENTS_JS)
    page = context.new_page()
    external: list[str] = []
    page.on("request", lambda request: None if is_local(request.url) else external.append(request.url))
    warnings: list[str] = []
    page.on("console", lambda m: warnings.append(f"{m.type}: {m.text}") if m.type in ("warning", "error") and GRADIOS_OWN not in m.text else None)
    page.on("pageerror", lambda error: warnings.append(f"uncaught: {error}"))
    try:
        page.goto(served.url)
        page.get_by_role("button", name="Download the SMS Spam Collection").wait_for()
        for tab, ready in READY.items():
            open_tab(page, tab)
            if tab == "Classify":
                page.locator("#example-3").click()
                expect(page.locator("#message textarea")).to_have_value(EXAMPLE_MESSAGES[2])
                page.get_by_role("button", name="Classify", exact=True).click()
                expect(page.locator("#prediction-after [data-testid='label-output-value']")).to_have_text(re.compile("^(ham|spam)$"), timeout=60_000)
                page.get_by_role("button", name="Explain this message").click()
            expect(page.locator(ready).first).to_be_attached(timeout=60_000)
            charts_settled(page)
            check_layout(page, size, tab)
            screenshot(page, f"{size}-{tab.split()[0].lower()}")
        assert warnings == []
        announced = page.evaluate("window.__announced")
        assert announced and not [text for text in announced if text.startswith("common.")]  # Gradio's untranslated "common.complete"
    finally:
        context.close()
    assert external == [], f"the page requested something outside 127.0.0.1: {external}"
