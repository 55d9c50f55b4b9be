"""The Data tab's own-data and de-duplicate options in a real browser, through to training, Classify and Evaluate.

Same rules as test_browser.py (Debian chromium + Playwright; CI=true makes a missing browser fail;
any request outside 127.0.0.1 fails the test); the app downloads the SMS zip from 127.0.0.1.
Screenshots go to a temporary folder, or to LORA_LAB_SCREENSHOTS (e.g. docs/screenshots).
"""

import csv
import re
import tempfile
from pathlib import Path

import pytest
import test_browser
from app_fixtures import RunningApp
from conftest import SMS_ZIP
from test_browser import eventually, expect, open_tab, points_inside, screenshot, set_number, sync_api

from engine.data.prepared import prepare

pytestmark = [pytest.mark.browser, pytest.mark.slow]

browser, served, page = test_browser.browser, test_browser.served, test_browser.page  # the same chromium, app and page

TOPICS = {
    "billing": "my invoice {i} was charged twice, please refund the payment",
    "delivery": "where is parcel {i}? the courier said it would arrive today",
    "praise": "thank you {i} times, the support team was wonderful",
}


def write_tickets(path: Path, per_class: int = 30) -> Path:
    """A headered CSV of three classes: your own data, not SMS spam."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for label, text in TOPICS.items():
            writer.writerows([text.format(i=i), label] for i in range(per_class))
    return path


def count_of(page: "sync_api.Page", row: str) -> str:
    """The Counts table's number for one row ("train", "validation", a class name...)."""
    match = re.search(rf"\n{re.escape(row)}\n([\d,]+)", page.locator("#counts").inner_text())  # the table reads "row\nnumber" per line
    assert match, f"no {row!r} row in the Counts table"
    return match.group(1).replace(",", "")


def test_deduplicate_before_splitting_changes_the_splits(page: "sync_api.Page") -> None:
    with tempfile.TemporaryDirectory() as folder:
        expected = prepare(str(SMS_ZIP), Path(folder), deduplicate=True).summary
    download = page.get_by_role("button", name="Download the SMS Spam Collection")
    download.click()
    expect(page.locator("#counts")).to_contain_text("1,045", timeout=60_000)
    assert [count_of(page, row) for row in ("balanced", "train", "validation", "test")] == ["1494", "1045", "149", "300"]
    expect(page.locator("#data-quality")).to_contain_text("Not de-duplicated", timeout=20_000)
    expect(page.locator("#data-quality")).to_contain_text("Read line by line")  # and the book preset reads it its own way

    page.get_by_label("De-duplicate before splitting").check()
    download.click()
    expect(page.locator("#counts")).not_to_contain_text("1,045", timeout=60_000)
    shown = [count_of(page, row) for row in ("balanced", "train", "validation", "test")]
    assert shown == [str(n) for n in (expected.balanced, expected.train, expected.validation, expected.test)]
    assert expected.train < 1045  # hundreds of repeated texts are gone
    expect(page.locator("#data-quality")).to_contain_text("De-duplicated", timeout=20_000)


def test_your_own_csv_trains_and_its_labels_reach_classify_and_evaluate(page: "sync_api.Page", served: RunningApp, tmp_path: Path) -> None:
    # Data: upload a three-class CSV; the preview and counts name its classes
    page.locator("#upload input[type=file]").set_input_files(str(write_tickets(tmp_path / "tickets.csv")))
    expect(page.locator("#data-status")).to_contain_text("Data ready from the uploaded file tickets.csv", timeout=60_000)
    for name in TOPICS:
        expect(page.locator("#preview")).to_contain_text(name)
        assert count_of(page, name) == "30"
    assert count_of(page, "balanced") == "90"
    screenshot(page, "data-custom")

    # Train briefly: the live confusion matrix has a row per class
    open_tab(page, "Model & LoRA")
    page.get_by_text("Advanced").click()
    set_number(page, "#max-steps input", "6")
    set_number(page, "#eval-freq input", "2")
    open_tab(page, "Train")
    page.get_by_role("button", name="Start training").click()
    expect(page.locator("#train-status textarea")).to_have_value(re.compile(r"^Finished in "), timeout=300_000)
    live = page.locator("#live-confusion")
    for name in TOPICS:
        expect(live).to_contain_text(f"true {name}")
    expect(live).to_contain_text("macro-averaged")
    eventually(lambda: points_inside(page, "#live-scores"), (12).__eq__, "4 scores at steps 1, 3 and 5")  # the axes' own rows lie outside
    assert served.lab.followed(None).progress.data.labels == tuple(TOPICS)

    # Classify: the answer is one of the file's labels, with every class's probability
    open_tab(page, "Classify")
    page.locator("#message textarea").fill("the courier lost my parcel")
    page.get_by_role("button", name="Classify", exact=True).click()
    answer = page.locator("#prediction-after [data-testid='label-output-value']")
    expect(answer).to_have_text(re.compile(f"^({'|'.join(TOPICS)})$"), timeout=60_000)
    for name in TOPICS:
        expect(page.locator("#prediction-after")).to_contain_text(name)

    # Evaluate: one class against the rest, for any class chosen
    open_tab(page, "Evaluate")
    summary = page.locator("#eval-summary")
    expect(summary).to_contain_text("one vs rest", timeout=20_000)
    expect(summary).to_contain_text("P(billing) ≥ 0.50")
    expect(page.locator("#roc path[aria-roledescription='line mark']")).to_have_count(2, timeout=20_000)
    page.locator("#eval-positive input").click()
    page.get_by_role("option", name="praise").click()
    expect(summary).to_contain_text("P(praise) ≥ 0.50", timeout=10_000)
    expect(page.locator("#eval-metrics")).to_contain_text("recall (praise)")
    expect(page.locator("#confusion")).to_contain_text("predicted not praise")
    screenshot(page, "evaluate-classes")
