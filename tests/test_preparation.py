"""What data preparation a run really does: the parse and de-duplication it asks for, whatever the source.

A prepared folder made another way is prepared again from the file it came from (never over it),
or the run is refused with a message; the run record says what was done.
"""

import io
import json
import shutil
import threading
import zipfile
from dataclasses import replace

import pandas as pd
import pytest
from conftest import SMS_ZIP, sms_zip_bytes, tiny_run_config

from engine.config import RunConfig
from engine.data.prepared import ORIGINAL_DIR, ZIP_NAME, prepare, read_source_file
from engine.errors import DataError
from engine.runs.run import DataReady, RunSaved, fine_tune


def record_of_a_run_stopped_once_its_data_is_ready(cfg: RunConfig) -> dict:
    """What fine_tune prepared and recorded: Stop as soon as the data is ready (a stopped run still writes run.json)."""
    stop = threading.Event()
    for event in fine_tune(cfg, stop):
        if isinstance(event, DataReady):
            stop.set()
        if isinstance(event, RunSaved):
            return json.loads(event.record.read_text())
    raise AssertionError("the run saved nothing")


def texts_in_two_splits(folder) -> int:
    texts = {name: set(pd.read_csv(folder / f"{name}.csv", keep_default_na=False)["Text"]) for name in ("train", "validation", "test")}
    return len(texts["train"] & texts["validation"]) + len(texts["train"] & texts["test"]) + len(texts["validation"] & texts["test"])


def test_the_book_reads_the_file_as_pandas_does_and_keeps_the_book_s_splits(tmp_path):
    book = read_source_file(SMS_ZIP, "book")
    assert (len(book), (book.Label == "ham").sum(), (book.Label == "spam").sum()) == (5572, 4825, 747)
    raw = zipfile.ZipFile(SMS_ZIP).read("SMSSpamCollection")
    pandas_reading = pd.read_csv(io.BytesIO(raw), sep="\t", header=None, names=["Label", "Text"])
    assert book.equals(pandas_reading)
    faithful = read_source_file(SMS_ZIP)
    assert faithful.Text[5081].startswith('"Keep ur problems') and "\nham\tYeah, give me a call" in book.Text[5081]  # two lines swallowed
    assert faithful.Text[282].startswith('"') and book.Text[282] == faithful.Text[282].replace('"', "")  # quotes consumed as CSV quoting
    # The book's balancing and split, re-stated: the same messages in the same order, the same CSV bytes.
    spam = pandas_reading[pandas_reading.Label == "spam"]
    balanced = pd.concat([pandas_reading[pandas_reading.Label == "ham"].sample(len(spam), random_state=123), spam])
    balanced["Label"] = balanced["Label"].map({"ham": 0, "spam": 1})
    shuffled = balanced.sample(frac=1, random_state=123).reset_index(drop=True)
    expected = {"train": shuffled[:1045], "validation": shuffled[1045:1194], "test": shuffled[1194:]}
    data = prepare(str(SMS_ZIP), tmp_path, parse="book")
    assert (data.summary.parse, data.summary.messages, data.summary.class_counts["ham"]) == ("book", 5572, 4825)
    for name, part in expected.items():
        assert (tmp_path / f"{name}.csv").read_text() == part.to_csv(index=None), name
    faithful_splits = prepare(str(SMS_ZIP), tmp_path / "faithful").splits
    assert len(set(faithful_splits.train.Text) - set(data.splits.train.Text)) > 150  # about 20 % of every split differs


def test_a_folder_read_faithfully_is_read_again_as_the_book_for_a_book_run(prepared_data, tmp_path):
    before = (prepared_data / "train.csv").read_bytes()
    again = prepare(str(prepared_data), tmp_path / "again", parse="book")
    assert again.folder == tmp_path / "again" and (again.summary.parse, again.summary.messages) == ("book", 5572)
    assert again.summary.source == str(SMS_ZIP)  # where the messages came from, not the folder in between
    assert (prepared_data / "train.csv").read_bytes() == before  # the folder itself is left as it was
    # Read back as it is (the Data tab), or for a run that reads it the same way: used in place.
    assert prepare(str(tmp_path / "again"), tmp_path / "unused").summary.parse == "book"
    assert prepare(str(tmp_path / "again"), tmp_path / "unused", parse="book").folder == tmp_path / "again"
    assert not (tmp_path / "unused").exists()
    # and the other way round: a recommended run on the book's splits reads every line again.
    assert prepare(str(tmp_path / "again"), tmp_path / "faithful", parse="faithful").summary.messages == 5574


def test_deduplicate_is_honoured_for_a_prepared_folder(prepared_data, tmp_path):
    assert texts_in_two_splits(prepared_data) > 0
    data = prepare(str(prepared_data), tmp_path / "deduplicated", deduplicate=True)
    assert data.summary.deduplicated and data.folder == tmp_path / "deduplicated"
    assert texts_in_two_splits(data.folder) == 0
    assert set(data.summary.duplicates["across_splits"].values()) == {0}


def test_a_run_asking_for_deduplication_gets_deduplicated_data_and_says_so(tiny_model_dir, prepared_data, tmp_path):
    cfg = tiny_run_config(tiny_model_dir, prepared_data, tmp_path / "run")
    record = record_of_a_run_stopped_once_its_data_is_ready(replace(cfg, deduplicate=True))
    assert record["config"]["deduplicate"] and record["data"]["deduplicated"]
    assert record["config"]["data"] == str(tmp_path / "run" / "data")
    assert texts_in_two_splits(tmp_path / "run" / "data") == 0
    assert set(record["data"]["duplicates"]["across_splits"].values()) == {0}


def test_fine_tune_downloads_from_the_run_s_urls_and_prepares_as_asked(tiny_model_dir, http_server, tmp_path):
    http_server.routes["/mirror.zip"] = (200, sms_zip_bytes(), {})
    cfg = tiny_run_config(tiny_model_dir, tmp_path, tmp_path / "run")
    changes = {"data": None, "data_urls": (http_server.url("/mirror.zip"),), "data_cache": str(tmp_path / "cache"), "deduplicate": True, "parse": "book"}
    data = record_of_a_run_stopped_once_its_data_is_ready(replace(cfg, **changes))["data"]
    assert http_server.hits == ["/mirror.zip"] and data["source"] == http_server.url("/mirror.zip")
    assert (data["parse"], data["deduplicated"], data["original"]) == ("book", True, ZIP_NAME)


def test_splits_alone_cannot_be_deduplicated(prepared_data, tmp_path):
    folder = tmp_path / "splits"
    folder.mkdir()
    for name in ("train", "validation", "test"):
        shutil.copy(prepared_data / f"{name}.csv", folder)
    with pytest.raises(DataError, match="splits without the summary of the file they came from, so they cannot be de-duplicated"):
        prepare(str(folder), tmp_path / "cache", deduplicate=True)
    # Used as they are otherwise, whatever the parse: nothing is read, and the summary says so.
    assert prepare(str(folder), tmp_path / "cache", parse="book").summary.parse == "given"


def test_a_folder_whose_file_is_gone_is_refused_with_what_to_do(tmp_path):
    source = tmp_path / "sms.zip"
    shutil.copy(SMS_ZIP, source)
    prepare(str(source), tmp_path / "cache")
    assert (tmp_path / "cache" / ORIGINAL_DIR / "sms.zip").read_bytes() == SMS_ZIP.read_bytes()  # a copy is kept
    source.unlink()
    assert prepare(str(tmp_path / "cache"), tmp_path / "book", parse="book").summary.messages == 5572  # from the copy
    shutil.rmtree(tmp_path / "cache" / ORIGINAL_DIR)
    with pytest.raises(DataError, match=r"read line by line.*this run needs it read as the book reads it.*is gone: download or upload the data again"):
        prepare(str(tmp_path / "cache"), tmp_path / "book", parse="book")


def test_a_download_folder_from_an_older_version_is_prepared_again_from_its_zip(tmp_path):
    shutil.copy(SMS_ZIP, tmp_path / ZIP_NAME)
    prepare(str(tmp_path / ZIP_NAME), tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    for key in ("parse", "original"):  # what older versions did not record
        del summary[key]
    summary["source"] = "https://example.org/sms.zip"
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    shutil.rmtree(tmp_path / ORIGINAL_DIR)
    assert prepare(str(tmp_path), tmp_path / "book", parse="book").summary.messages == 5572


def test_the_data_tab_says_how_the_file_was_read(tmp_path):
    from ui.data_tab import quality_markdown

    faithful = prepare(str(SMS_ZIP), tmp_path / "faithful").summary
    book = prepare(str(tmp_path / "faithful"), tmp_path / "book", parse="book").summary
    assert "**Read line by line**" in quality_markdown(faithful) and "the *book* preset reads the file as the book's code does" in quality_markdown(faithful)
    assert "**Read as the book's code reads it**" in quality_markdown(book) and "*recommended* preset reads every line" in quality_markdown(book)
