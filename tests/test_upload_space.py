"""The upload space, counted honestly: the bytes actually received (a body without Content-Length, uploads
still arriving), the files per upload and held at once, and no per-upload cost that grows with the files held."""

import contextlib
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from app_fixtures import RunningApp, running_app

import ui.http_guard
import ui.upload_stream
from ui.guards import discard_upload, upload_folder
from ui.login_throttle import FREE_TRIES, FREE_TRIES_ALL, LONGEST_WAIT_ALL_S, LoginThrottle
from ui.settings import UPLOAD_LIFETIME_S, UPLOAD_SWEEP_S
from ui.upload_space import FILE_FLOOR_BYTES, SpaceLimits, UploadSpace
from ui.upload_stream import PartCounter

MB = 1024 * 1024
SPACE_MB = 2
FILES_HELD = 6
BOUNDARY = "lora-lab-test-boundary"


def multipart(files: list[tuple[str, bytes]]) -> bytes:
    """A multipart body with `files` as Gradio's page sends them (each a "files" part)."""
    parts = [
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode()
        + data
        + b"\r\n"
        for name, data in files
    ]
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def chunks(body: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    """`body` as a stream of unknown length: httpx sends it chunked, with no Content-Length."""
    for start in range(0, len(body), size):
        yield body[start : start + size]


def landed(names: list[str]) -> list[Path]:
    """The files of these (unique) names anywhere in the upload folder."""
    return [path for path in upload_folder().rglob("*") if path.name in names and path.is_file()]


def loose_files() -> set[Path]:
    """Files lying directly in the upload folder: where Gradio's parser keeps an upload while it arrives."""
    return {path for path in upload_folder().iterdir() if path.is_file()}


def post(running: RunningApp, content: bytes | Iterator[bytes]) -> httpx.Response:
    headers = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}
    return httpx.post(f"{running.url}gradio_api/upload", content=content, headers=headers, timeout=120)


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[RunningApp]:
    """The app with a 2 MB upload space of at most FILES_HELD files."""
    from ui.settings import AppSettings

    folder = tmp_path_factory.mktemp("upload-space")
    settings = AppSettings(model=str(tiny_model_dir), device="cpu", out=folder / "runs", cache=folder / "cache", max_upload_mb=1, upload_space_mb=SPACE_MB)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ui.http_guard, "MAX_HELD_UPLOADS", FILES_HELD)
        with running_app(settings) as running:
            yield running


@pytest.fixture
def names() -> Iterator[list[str]]:
    """Unique file names for one test; whatever landed under them is deleted afterwards, as the app would."""
    given: list[str] = []
    yield given
    for path in landed(given):
        discard_upload(path)


def unique(names: list[str], count: int) -> list[str]:
    names.extend(f"{uuid.uuid4().hex}.bin" for _ in range(count))
    return names[-count:]


@pytest.mark.slow
def test_a_body_without_content_length_is_counted_as_it_streams(guarded: RunningApp, names: list[str]) -> None:
    files = unique(names, 3)
    before = loose_files()
    answer = post(guarded, chunks(multipart([(name, bytes([i]) * 900_000) for i, name in enumerate(files)])))
    assert answer.status_code == 413, answer.text
    assert answer.text.startswith("The server's space for uploads is full: this upload (more than ")
    assert landed(files) == [] and loose_files() <= before  # nothing kept, not even the part cut short
    small = unique(names, 1)[0]
    assert post(guarded, chunks(multipart([(small, b"x" * 1000)]))).status_code == 200  # the bytes it took are free again


@pytest.mark.slow
def test_uploads_still_arriving_count_against_the_space(guarded: RunningApp, names: list[str]) -> None:
    files = unique(names, 4)
    halfway = threading.Barrier(len(files), timeout=60)  # every upload has sent half of its bytes before any sends the rest
    statuses: list[int] = []

    def slow_upload(name: str) -> None:
        body = multipart([(name, b"\1" * 900_000)])

        def stream() -> Iterator[bytes]:
            yield from chunks(body[: len(body) // 2])
            with contextlib.suppress(threading.BrokenBarrierError):  # an upload refused already waits for no one
                halfway.wait()
            yield from chunks(body[len(body) // 2 :])

        try:
            statuses.append(post(guarded, stream()).status_code)
        except httpx.HTTPError:
            statuses.append(413)  # refused while still sending: the server may close the connection first

    threads = [threading.Thread(target=slow_upload, args=(name,)) for name in files]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    kept = sum(path.stat().st_size for path in landed(files))
    assert kept <= SPACE_MB * MB and 413 in statuses, (kept, statuses)  # 4 x 0.9 MB would pass the 2 MB space


@pytest.mark.slow
def test_an_upload_that_stalls_is_cut_and_frees_its_bytes(guarded: RunningApp, names: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ui.upload_stream, "IDLE_S", 1.0)
    stalled = unique(names, 1)[0]
    body = multipart([(stalled, b"\1" * 900_000)])
    url = httpx.URL(guarded.url)
    head = f"POST /gradio_api/upload HTTP/1.1\r\nHost: {url.host}\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
    with socket.create_connection((url.host, url.port), timeout=60) as connection:
        connection.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body[:500_000])  # ...and then nothing
        answer = ""
        while "send it again" not in answer and (received := connection.recv(65536)):  # the answer's head and its text
            answer += received.decode()
    assert answer.startswith("HTTP/1.1 408") and "the upload stalled: nothing arrived for 1 s" in answer
    assert landed([stalled]) == []
    two = [(name, bytes([i]) * 900_000) for i, name in enumerate(unique(names, 2))]
    assert post(guarded, multipart(two)).status_code == 200  # 1.8 MB: it fits the 2 MB space only if the stalled 0.5 MB is free again


@pytest.mark.slow
def test_files_are_bounded_per_upload_and_held(guarded: RunningApp, names: list[str]) -> None:
    too_many = unique(names, ui.http_guard.MAX_FILES_PER_UPLOAD + 1)
    answer = post(guarded, multipart([(name, b"tiny") for name in too_many]))
    assert answer.status_code == 413 and answer.text == f"one upload holds at most {ui.http_guard.MAX_FILES_PER_UPLOAD} files: send them in several uploads"
    assert landed(too_many) == []
    for name in unique(names, FILES_HELD):
        assert post(guarded, multipart([(name, b"tiny " + name.encode())])).status_code == 200
    refused = post(guarded, multipart([(unique(names, 1)[0], b"one too many")]))
    assert refused.status_code == 413 and refused.text.startswith(f"The server holds {FILES_HELD} uploaded files, its limit of {FILES_HELD}.")
    discard_upload(landed(names[-2:-1])[0])  # the app deletes an upload it has read: its place is free again
    assert post(guarded, multipart([(unique(names, 1)[0], b"fits again")])).status_code == 200


@pytest.mark.slow
def test_an_upload_costs_the_same_however_many_files_are_held(guarded: RunningApp, names: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    held = {str(upload_folder() / f"held-{i}" / "tiny.txt") for i in range(5000)}  # what 5,000 earlier uploads leave in Gradio's set
    statted: list[str] = []
    stat = Path.stat

    def counting_stat(self: Path, *args: object, **kwargs: object) -> object:
        if str(self) in held:
            statted.append(str(self))
        return stat(self, *args, **kwargs)

    monkeypatch.setattr(Path, "stat", counting_stat)
    monkeypatch.setattr(guarded.demo, "upload_file_set", guarded.demo.upload_file_set | held)
    assert post(guarded, multipart([(unique(names, 1)[0], b"one more")])).status_code == 200
    assert statted == []  # none of them looked at (on the event loop, every other visitor waits meanwhile)


# --- the ledger and the part counter, without a server ----------------------------------------------------------------


def space(mb: float = 1, files: int = 100) -> UploadSpace:
    return UploadSpace(SpaceLimits(int(mb * MB), 10, files, UPLOAD_LIFETIME_S, UPLOAD_SWEEP_S))


def test_bytes_arriving_are_charged_as_they_arrive_and_freed_when_they_end() -> None:
    ledger = space(1)
    first, second = ledger.admit(None), ledger.admit(None)
    assert not isinstance(first, str) and not isinstance(second, str)
    assert first.receive(600_000) is None
    assert second.receive(500_000) is not None  # 1.1 MB arriving at once: the second must stop
    first.end()
    second.end()
    assert ledger.used() == (0, 0)
    announced = ledger.admit(700_000)
    assert not isinstance(announced, str) and ledger.used() == (0, 0)  # announcing sets nothing aside: sending nothing holds nothing
    assert announced.receive(700_000) is None and isinstance(ledger.admit(400_000), str)  # an announced size that cannot fit: refused at once


def test_every_file_costs_at_least_a_block_and_a_deleted_file_frees_its_bytes(tmp_path: Path) -> None:
    ledger = space(1)
    paths = [str(tmp_path / f"{i}.txt") for i in range(100)]
    assert ledger.hold(paths, 0)
    assert ledger.used() == (100 * FILE_FLOOR_BYTES, 0) and ledger.held_files() == 100
    ledger.forget(paths[0])
    assert ledger.used()[0] == 99 * FILE_FLOOR_BYTES and ledger.held_files() == 99
    assert ledger.hold([paths[0]], 0) and not ledger.hold([str(tmp_path / "one-too-many.txt")], 0)  # 100 files at most


def followed(body: bytes, size: int, most_parts: int = 10) -> tuple[PartCounter, str | None]:
    """`body` fed in chunks of `size` bytes: the counter, and the first problem it found."""
    counter = PartCounter(f"multipart/form-data; boundary={BOUNDARY}")
    return counter, next((problem for chunk in chunks(body, size) if (problem := counter.feed(chunk, most_parts))), None)


@pytest.mark.parametrize("size", [1, 2, 7, 4096])
def test_the_parts_of_a_body_are_counted_across_chunk_edges(size: int) -> None:
    counter, problem = followed(multipart([(f"{i}.bin", b"data") for i in range(3)]), size, most_parts=2)
    assert counter.delimiters == 4 and problem == "one upload holds at most 2 files: send them in several uploads"


@pytest.mark.parametrize("size", [7, 4096, 10**6])
def test_a_part_that_is_no_file_is_held_to_a_few_kilobytes(size: int) -> None:
    assert followed(multipart([("big.bin", b"\0" * 200_000)]), size)[1] is None  # a file may be as large as the upload limit
    field = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="note"\r\n\r\n'.encode() + b"x" * 200_000 + f"\r\n--{BOUNDARY}--\r\n".encode()
    assert followed(field, size)[1] == "a form field of more than 64 KB: only files are uploaded here"  # no file: kept in memory by Gradio


def test_wrong_logins_are_throttled_and_a_right_one_clears_them() -> None:
    throttle = LoginThrottle()
    assert [throttle.attempt("10.0.0.1") for _ in range(FREE_TRIES)] == [0.0] * FREE_TRIES
    assert throttle.attempt("10.0.0.1") > 0  # the next must wait, however fast it comes
    assert throttle.attempt("10.0.0.2") == 0.0  # another address is not held up
    throttle.succeeded("10.0.0.2")
    assert throttle.attempt("10.0.0.2") == 0.0


def test_addresses_made_up_for_each_try_are_throttled_all_together() -> None:
    throttle = LoginThrottle()  # X-Forwarded-For from this machine, say: a new address for every guess
    assert [throttle.attempt(f"10.1.{i // 250}.{i % 250}") for i in range(FREE_TRIES_ALL)] == [0.0] * FREE_TRIES_ALL
    assert 0 < throttle.attempt("10.2.0.1") <= LONGEST_WAIT_ALL_S

