import zipfile

import pytest
from conftest import SMS_ZIP, sms_zip_bytes, zip_of

from engine.config import preset
from engine.data.prepared import ZIP_NAME, balance, load_splits, prepare, read_source_file, split
from engine.data.reading import parse_messages
from engine.errors import DataError, DownloadError
from engine.loaders import make_loaders

HTML = b"<!DOCTYPE html><html><body>Service unavailable</body></html>"


def raw_lines() -> list[str]:
    return zipfile.ZipFile(SMS_ZIP).read("SMSSpamCollection").decode().split("\n")[:-1]


def test_parses_all_5574_messages_without_quote_handling():
    messages = read_source_file(SMS_ZIP)
    assert (len(messages), (messages.Label == "ham").sum(), (messages.Label == "spam").sum()) == (5574, 4827, 747)
    # Texts are byte-for-byte the file's, quotes included (line 5082 opens a quote pandas would merge).
    assert messages.Text.tolist() == [line.split("\t", 1)[1] for line in raw_lines()]
    assert messages.Text[5081].startswith('"')


def test_download_falls_back_to_backup_and_reproduces_the_book_splits(http_server, tmp_path):
    http_server.routes["/backup.zip"] = (200, sms_zip_bytes(), {})
    events = []
    urls = [http_server.url("/primary.zip"), http_server.url("/backup.zip")]  # the primary answers 404
    data = prepare(None, tmp_path, events.append, urls=urls)
    assert http_server.hits == ["/primary.zip", "/backup.zip"]
    assert data.summary.source == urls[1]
    assert any(e.status.startswith("failed: HTTP 404") for e in events)
    assert events[-1].status == "done" and events[-1].received == len(sms_zip_bytes())
    summary = data.summary
    assert (summary.messages, summary.class_counts) == (5574, {"ham": 4827, "spam": 747})
    assert (summary.train, summary.validation, summary.test) == (1045, 149, 300)
    assert summary.longest_train_tokens == 120
    loaders = make_loaders(data.splits, preset("book").train, context_length=1024)
    assert (len(loaders.train), len(loaders.validation), len(loaders.test)) == (130, 19, 38)
    assert loaders.max_length == 120
    assert all(batch.input_ids.shape == (8, 120) for batch in loaders.train)
    # Cached: a second prepare makes no request.
    prepare(None, tmp_path, urls=urls)
    assert len(http_server.hits) == 2
    assert (tmp_path / ZIP_NAME).is_file()


def test_splits_round_trip_through_csv(prepared_data):
    splits = load_splits(prepared_data)
    again = split(balance(read_source_file(SMS_ZIP)))
    for (_, saved), (_, fresh) in zip(splits.items(), again.items(), strict=True):
        assert saved.equals(fresh)
    assert splits.train.Label.isin([0, 1]).all()
    assert 0.45 < splits.train.Label.mean() < 0.55


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (HTML, "not a valid zip"),
        (sms_zip_bytes()[: len(sms_zip_bytes()) // 2], "not a valid zip"),
        (zip_of({"readme": b"hello"}), "no SMSSpamCollection"),
    ],
    ids=["html-page", "truncated-zip", "zip-without-member"],
)
def test_bad_downloads_are_rejected_and_leave_no_file(http_server, tmp_path, body, problem):
    http_server.routes["/only.zip"] = (200, body, {})
    with pytest.raises(DownloadError, match=problem):
        prepare(None, tmp_path, urls=[http_server.url("/only.zip")])
    assert list(tmp_path.iterdir()) == []


def test_both_sources_failing_names_each(http_server, tmp_path):
    urls = [http_server.url("/a.zip"), "http://127.0.0.1:9/unreachable.zip"]
    with pytest.raises(DownloadError) as error:
        prepare(None, tmp_path, urls=urls)
    assert "a.zip: HTTP 404" in str(error.value) and "could not connect" in str(error.value)
    assert "pass its path" in str(error.value)


def test_stalled_download_times_out_then_backup_is_used(http_server, tmp_path, monkeypatch):
    import engine.data.download

    monkeypatch.setattr(engine.data.download, "READ_TIMEOUT_S", 0.5)
    http_server.routes["/stall.zip"] = (200, sms_zip_bytes(), {})
    http_server.stall_after["/stall.zip"] = 1000
    http_server.routes["/good.zip"] = (200, sms_zip_bytes(), {})
    events = []
    data = prepare(None, tmp_path, events.append, urls=[http_server.url("/stall.zip"), http_server.url("/good.zip")])
    assert data.summary.source.endswith("/good.zip")
    assert [e.status for e in events if e.status.startswith("failed")] == ["failed: timed out"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([ZIP_NAME, "summary.json", "train.csv", "validation.csv", "test.csv"])


def test_local_tsv_with_crlf_blank_lines_and_header(tmp_path):
    lines = ["label\ttext"] + [f"ham\thello {i}" for i in range(20)] + [""] + [f"spam\tWIN {i} \"now" for i in range(20)]
    path = tmp_path / "mine.tsv"
    path.write_bytes("\r\n".join(lines).encode())
    data = prepare(str(path), tmp_path / "cache")
    assert (data.summary.messages, data.summary.class_counts) == (40, {"ham": 20, "spam": 20})
    assert (data.summary.train, data.summary.validation, data.summary.test) == (28, 4, 8)


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"ham\thello\nspam no tab here\n", "line 2: no tab"),
        (b"ham\thello\nmaybe\tsomething\n", "line 2: unknown label"),
        (b"ham\thello\n\xff\xfe bad\n", "not UTF-8 .*line 2"),
        (b"\n\n", "holds no messages"),
    ],
)
def test_malformed_tsv_names_the_line(raw, problem):
    with pytest.raises(DataError, match=problem):
        parse_messages(raw, "mine.tsv")


def test_single_class_data_is_refused(tmp_path):
    path = tmp_path / "ham-only.tsv"
    path.write_text("".join(f"ham\tmessage {i}\n" for i in range(30)))
    with pytest.raises(DataError, match="no spam messages"):
        prepare(str(path), tmp_path / "cache")


def test_html_page_saved_as_zip_is_named(tmp_path):
    path = tmp_path / "sms.zip"
    path.write_bytes(HTML)
    with pytest.raises(DataError, match="HTML page"):
        read_source_file(path)


def test_missing_prepared_folder_explains(tmp_path):
    with pytest.raises(DataError, match="python -m engine data"):
        load_splits(tmp_path)


def test_cancelling_a_download_leaves_nothing(http_server, tmp_path):
    from engine.errors import Cancelled

    http_server.routes["/big.zip"] = (200, sms_zip_bytes(), {})

    def cancel_after_first_chunk(progress):
        if progress.received:
            raise Cancelled("download stopped")

    with pytest.raises(Cancelled):
        prepare(None, tmp_path, cancel_after_first_chunk, urls=[http_server.url("/big.zip"), http_server.url("/never.zip")])
    assert list(tmp_path.iterdir()) == []
    assert http_server.hits == ["/big.zip"]


def test_oversized_source_file_is_refused(tmp_path, monkeypatch):
    import engine.data.prepared

    monkeypatch.setattr(engine.data.prepared, "MAX_SOURCE_BYTES", 1000)
    path = tmp_path / "huge.tsv"
    path.write_text("ham\t" + "x" * 2000 + "\n")
    with pytest.raises(DataError, match="over the 1,000-byte limit"):
        read_source_file(path)


def test_prepared_folder_keeps_the_original_counts(prepared_data, tmp_path):
    again = prepare(str(prepared_data), tmp_path)
    assert (again.summary.messages, again.summary.class_counts) == (5574, {"ham": 4827, "spam": 747})
    assert again.summary.token_lengths["train"].max == 120
    (prepared_data / "summary.json").rename(tmp_path / "moved.json")
    try:
        described = prepare(str(prepared_data), tmp_path).summary
        assert (described.messages, described.class_counts) == (1494, {"ham": 747, "spam": 747})  # what the splits hold
    finally:
        (tmp_path / "moved.json").rename(prepared_data / "summary.json")


def test_a_summary_of_an_older_version_is_still_read(prepared_data, tmp_path):
    import json
    import shutil

    folder = tmp_path / "older"
    shutil.copytree(prepared_data, folder)
    written = json.loads((folder / "summary.json").read_text())
    older = {key: value for key, value in written.items() if key not in ("class_counts", "class_fractions")}
    older |= {"ham": 4827, "spam": 747, "spam_fraction": {"train": 0.4986, "validation": 0.5235, "test": 0.4933}}  # how it was written then
    (folder / "summary.json").write_text(json.dumps(older))
    again = prepare(str(folder), tmp_path / "unused")
    assert again.folder == folder  # used as it is, not described anew from its splits
    assert (again.summary.messages, again.summary.class_counts, again.summary.source) == (5574, {"ham": 4827, "spam": 747}, written["source"])
