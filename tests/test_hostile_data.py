"""Hostile data: zip bombs (uploads, downloads, the CLI), thousands of labels (data and adapters), labels
that hide characters or run to 120 KB, adapters whose values overflow float32, Stop during a download that
trickles and a source that trickles for ever; each refused cheaply, with a message."""

import re
import threading
import tracemalloc
import zipfile
from pathlib import Path

import gradio as gr
import pytest
import torch
from app_fixtures import as_upload, upload_bytes
from conftest import changed_adapter, sms_zip_bytes
from safetensors import safe_open

import engine.adapter
import engine.classifier
from engine.adapter import read_adapter
from engine.classifier import Classifier
from engine.cli import main as cli
from engine.config import MAX_CLASSES, MAX_LABEL_CHARS
from engine.data.download import download_first_valid
from engine.data.prepared import MAX_UNPACKED_BYTES, MEMBER, prepare, read_source_file, validate_zip
from engine.data.reading import parse_messages
from engine.errors import AdapterError, Cancelled, DataError, DownloadError
from ui.classify_tab import ClassifyTab
from ui.controls import MAX_OWNER_CHARS, owner_name
from ui.data_tab import MAX_HISTOGRAM_SERIES, DataTab, counts_frame, token_histogram
from ui.lab import Lab

MB = 1024 * 1024


def zip_bomb(path: Path, unpacked_bytes: int, block: bytes = b"\0" * MB) -> Path:
    """A real zip bomb: an SMSSpamCollection member inflating to `unpacked_bytes` (written a block at a time)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive, archive.open(MEMBER, "w", force_zip64=True) as member:
        for _ in range(unpacked_bytes // len(block)):
            member.write(block)
    return path


def understating(bomb: Path, claimed: int) -> Path:
    """The same bomb with its central directory claiming the member holds `claimed` bytes (a lying header)."""
    raw = bytearray(bomb.read_bytes())
    central = raw.rindex(b"PK\x01\x02")
    raw[central + 24 : central + 28] = claimed.to_bytes(4, "little")  # the uncompressed size zipfile believes
    lying = bomb.with_name("lying-" + bomb.name)
    lying.write_bytes(bytes(raw))
    return lying


@pytest.fixture(scope="module")
def zero_bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    bomb = zip_bomb(tmp_path_factory.mktemp("bomb") / "sms.zip", 256 * MB)
    assert bomb.stat().st_size < 300 * 1024  # about 1000:1
    return bomb


@pytest.fixture(scope="module")
def line_bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Valid messages, over the limit: parsed whole, these would be ten million messages."""
    return zip_bomb(tmp_path_factory.mktemp("bomb") / "lines.zip", 64 * MB, b"ham\tx\n" * (MB // 6))


def peak_bytes(action) -> int:
    tracemalloc.start()
    try:
        action()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


@pytest.mark.parametrize("which", ["zero_bomb", "line_bomb"])
def test_a_zip_bomb_is_refused_before_it_inflates(which: str, request: pytest.FixtureRequest) -> None:
    bomb = request.getfixturevalue(which)

    def read() -> None:
        with pytest.raises(DataError, match=f"{bomb.name} unpacks to more than 50 MB, the limit for a message file"):
            read_source_file(bomb)

    assert peak_bytes(read) < 16 * MB  # the zip itself and little else: nothing was inflated


def test_a_bomb_with_a_lying_header_inflates_no_further_than_the_limit(zero_bomb: Path) -> None:
    lying = understating(zero_bomb, MAX_UNPACKED_BYTES)  # its header passes the check, yet it holds 256 MB

    def read() -> None:
        with pytest.raises(DataError, match="unpacks to more than 50 MB|is not a valid zip"):
            read_source_file(lying)

    assert peak_bytes(read) < MAX_UNPACKED_BYTES + 32 * MB


def test_a_bomb_is_refused_as_a_download(zero_bomb: Path, http_server, tmp_path: Path) -> None:
    http_server.routes["/sms.zip"] = (200, zero_bomb.read_bytes(), {})
    with pytest.raises(DownloadError, match="sms.zip: the downloaded file unpacks to more than 50 MB"):
        prepare(None, tmp_path, urls=[http_server.url("/sms.zip")])
    assert list(tmp_path.iterdir()) == []  # nothing kept


def test_a_bomb_is_refused_by_the_command_line(line_bomb: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["data", "--source", str(line_bomb), "--cache", str(tmp_path)]) == 2
    assert "lines.zip unpacks to more than 50 MB, the limit for a message file" in capsys.readouterr().err


def test_a_bomb_is_refused_as_an_upload_and_the_upload_deleted(lab: Lab, zero_bomb: Path) -> None:
    import gradio as gr

    upload = Path(upload_bytes(zero_bomb.read_bytes(), "sms.zip"))
    with pytest.raises(gr.Error, match="unpacks to more than 50 MB"):
        DataTab(lab).upload_data(str(upload))
    assert not upload.exists()


def test_the_real_zip_still_reads(sms_zip: Path) -> None:
    validate_zip(sms_zip)
    assert len(read_source_file(sms_zip)) == 5574


# --- the number of classes ---------------------------------------------------------------------


def labelled_csv(path: Path, classes: int, per_class: int = 3) -> Path:
    rows = ["label,text"] + [f"class {c:05d},message {i} of class {c}" for i in range(per_class) for c in range(classes)]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_thousands_of_labels_are_refused_at_the_first_label_too_many(tmp_path: Path) -> None:
    source = labelled_csv(tmp_path / "labels.csv", 2000)
    with pytest.raises(DataError, match=f"labels.csv, line {MAX_CLASSES + 2}: more than {MAX_CLASSES} different labels .*at most {MAX_CLASSES} classes"):
        prepare(str(source), tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_the_data_tab_s_cost_does_not_grow_with_the_classes(tmp_path: Path) -> None:
    prepared = prepare(str(labelled_csv(tmp_path / "many.csv", MAX_CLASSES, per_class=10)), tmp_path / "cache")
    assert len(prepared.splits.labels) == MAX_CLASSES  # the most classes are accepted...
    legend = token_histogram(prepared).axes[0].get_legend().get_texts()
    assert len(legend) == MAX_HISTOGRAM_SERIES + 1  # ...and drawn as a few series (plus the cut-off line)
    assert legend[MAX_HISTOGRAM_SERIES - 1].get_text() == f"{MAX_CLASSES - MAX_HISTOGRAM_SERIES + 1} other classes"
    counts = counts_frame(prepared)
    assert len(counts) < 20 and counts["messages"][0] == 10 * MAX_CLASSES


def test_an_adapter_declaring_a_hundred_thousand_classes_is_refused_before_anything_is_built(
    adapter_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[int] = []
    real = engine.classifier.build_classifier
    monkeypatch.setattr(engine.classifier, "build_classifier", lambda *a, **k: built.append(k.get("n_classes")) or real(*a, **k))
    many = changed_adapter(adapter_dir, tmp_path / "adapter.safetensors", lambda c, t: c.update(labels=[f"c{i}" for i in range(100_000)]))
    with pytest.raises(AdapterError, match=f"declares 100,000 classes; LoRA Lab handles at most {MAX_CLASSES}"):
        Classifier.load(many, torch.device("cpu"))
    assert built == []


class CountingOpen:
    """engine.adapter's safe_open, counting the tensors actually read."""

    reads: list[str] = []

    def __init__(self, *args: object) -> None:
        self.handle = safe_open(*args)

    def __enter__(self) -> "CountingOpen":
        self.handle.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.__exit__(*exc)

    def __getattr__(self, name: str) -> object:
        return getattr(self.handle, name)

    def get_tensor(self, key: str) -> torch.Tensor:
        CountingOpen.reads.append(key)
        return self.handle.get_tensor(key)


def test_a_tensor_declared_larger_than_its_config_allows_is_refused_from_the_header(adapter_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def huge_head(config: dict, tensors: dict) -> None:
        tensors["score.base_layer.weight"] = torch.zeros(200_000, 32)  # 25 MB of head for 2 classes

    bloated = changed_adapter(adapter_dir, tmp_path / "adapter.safetensors", huge_head)
    CountingOpen.reads = []
    monkeypatch.setattr(engine.adapter, "safe_open", CountingOpen)
    with pytest.raises(AdapterError, match=r"score.base_layer.weight is declared \[200000, 32\], which does not fit rank 16, width 32 and 2 classes"):
        read_adapter(bloated)
    assert CountingOpen.reads == []  # refused before a byte of tensor data was read
    read_adapter(adapter_dir)
    assert len(CountingOpen.reads) > 0  # (the proxy does see reads)


# --- Stop during a download that trickles ------------------------------------------------------------


def test_stop_acts_at_once_while_a_download_trickles(http_server, tmp_path: Path) -> None:
    # 4 KiB a minute: a read waiting for a whole 64 KiB chunk, as before, would wait 16 minutes for it.
    http_server.routes["/slow.zip"] = (200, sms_zip_bytes(), {})
    http_server.trickle["/slow.zip"] = 60.0
    stop, heard, outcome = threading.Event(), threading.Event(), []

    def on_progress(progress: object) -> None:
        heard.set()
        if stop.is_set():
            raise Cancelled("stopped")

    def download() -> None:
        try:
            download_first_valid([http_server.url("/slow.zip")], tmp_path / "sms.zip", validate_zip, on_progress)
        except Cancelled:
            outcome.append("stopped")

    thread = threading.Thread(target=download, daemon=True)
    thread.start()
    assert heard.wait(30)  # the download reports even before a chunk has arrived...
    stop.set()
    thread.join(30)  # ...so Stop ends it long before the server sends its second 4 KiB
    assert outcome == ["stopped"] and not thread.is_alive()
    assert list(tmp_path.iterdir()) == []  # the partial file is gone


# --- label text ----------------------------------------------------------------------------------


def test_labels_are_cleaned_of_what_no_one_sees(tmp_path: Path) -> None:
    written = ["spam", "\ufeffspam", "  spam", "spam\u200b", "ham", "ham ", "not  spam", "not spam\t", "caf\u00e9", "cafe\u0301"]
    rows = ["label,text"] + [f'"{label}",message {i} of {n}' for n, label in enumerate(written) for i in range(10)]
    (tmp_path / "mine.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    prepared = prepare(str(tmp_path / "mine.csv"), tmp_path / "cache")
    assert prepared.splits.labels == ("café", "ham", "not spam", "spam")  # one class each, however it was written
    sms = parse_messages("ham\thello\n\ufeffspam\tWIN now\n \ufeffHAM \tsee you\n".encode())  # a BOM inside: from files joined together
    assert list(sms["Label"]) == ["ham", "spam", "ham"]


def test_a_label_longer_than_a_name_is_refused_at_its_line(tmp_path: Path) -> None:
    rows = ["label,text", "spam,hi", "ham,hello"] + [f"{'x' * 120_000}{i},message {i}" for i in range(50)]  # 50 labels of 120 KB
    (tmp_path / "long.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=f"long.csv, line 4: a label of 120,001 characters; class names are at most {MAX_LABEL_CHARS}"):
        prepare(str(tmp_path / "long.csv"), tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_an_adapter_with_a_label_longer_than_a_name_is_refused(adapter_dir: Path, tmp_path: Path) -> None:
    long = changed_adapter(adapter_dir, tmp_path / "adapter.safetensors", lambda c, t: c.update(labels=["ham", "s" * 120_000]))
    with pytest.raises(AdapterError, match=f"a class name of 120,000 characters, over {MAX_LABEL_CHARS}"):
        read_adapter(long)


def test_a_visitor_s_name_for_their_runs_is_cleaned_and_cut() -> None:
    assert owner_name("\ufeff  Ann\u200b  Lee ") == "Ann Lee"
    assert owner_name("Ann " * 30_000) == ("Ann " * 15).strip() and MAX_OWNER_CHARS == 60  # 120 KB cut to a name at once


# --- adapters that overflow the numbers the model computes in ---------------------------------------------------------


def test_an_adapter_finite_in_float64_but_not_in_float32_is_refused(adapter_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def huge_bias(config: dict, tensors: dict[str, torch.Tensor]) -> None:
        tensors["score.base_layer.bias"] = torch.full_like(tensors["score.base_layer.bias"], 1e300, dtype=torch.float64)

    huge = changed_adapter(adapter_dir, tmp_path / "huge" / "adapter.safetensors", huge_bias)
    with pytest.raises(AdapterError, match=r"tensor score.base_layer.bias holds values up to 1e\+300, beyond the largest float32 number"):
        read_adapter(huge)
    assert cli(["classify", "--adapter", str(huge.parent), "WIN a prize"]) == 2


def test_an_answer_that_is_not_a_number_is_never_shown(trained_lab: Lab, adapter_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def huge_head(config: dict, tensors: dict[str, torch.Tensor]) -> None:
        tensors["score.base_layer.weight"] = torch.full_like(tensors["score.base_layer.weight"], 3e38)  # finite in float32; its products are not

    overflowing = changed_adapter(adapter_dir, tmp_path / "head" / "adapter.safetensors", huge_head)
    problem = "the model's answer is not a number: the adapter's values overflow the float32 numbers the model computes in"
    with pytest.raises(AdapterError, match=problem):
        Classifier.load(overflowing, torch.device("cpu")).classify(["WIN a prize"])
    assert cli(["classify", "--adapter", str(overflowing.parent), "WIN a prize"]) == 2  # no P(ham)=nan, and not a success
    assert problem in capsys.readouterr().err
    tab = ClassifyTab(trained_lab)
    for action in (lambda f: tab.classify("WIN a prize", f), lambda f: tab.classify_many("WIN a prize", f), lambda f: tab.explain("WIN a prize", f)):
        with pytest.raises(gr.Error, match=problem):  # the page and the API (the same handlers) say so instead of "ham 0 %, spam 0 %"
            action(as_upload(overflowing))


# --- downloads: a deadline per source, and visitors side by side -----------------------------------------------------------


def test_a_source_that_trickles_has_a_deadline_and_the_next_is_tried(http_server, tmp_path: Path) -> None:
    http_server.routes["/slow.zip"] = (200, sms_zip_bytes(), {})
    http_server.trickle["/slow.zip"] = 0.5  # 4 KiB every half second: never silent for the read timeout, 25 s for the zip
    http_server.routes["/backup.zip"] = (200, sms_zip_bytes(), {})
    heard: list[str] = []
    urls = [http_server.url("/slow.zip"), http_server.url("/backup.zip")]
    used = download_first_valid(urls, tmp_path / "sms.zip", validate_zip, lambda p: heard.append(p.status), deadline_s=2)
    assert used == urls[1]  # the backup, once the first source's time was up
    (failure,) = [status for status in heard if status.startswith("failed")]
    assert re.fullmatch(r"failed: too slow: [\d,]+ bytes in 2 s, the most one source may take", failure)
