"""One upload, counted as it streams into Gradio's upload route (`/gradio_api/upload`).

The body's bytes are charged to the upload space as they arrive and its multipart parts are followed
(one file per part; a part that is no file is a form field, held to a few KB); past a limit the body is closed where it stands, so that Gradio's parser ends
cleanly and leaves no temporary file behind, whatever it made of the cut body is deleted, and the
visitor gets a 413 naming the limit (408 for an upload that stalls). The files of an upload that passes are held in the ledger.
"""

import asyncio
import json
import re
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse

from ui.guards import discard_upload
from ui.server_log import log_refusal
from ui.upload_space import Arrival, UploadSpace

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[MutableMapping[str, Any], Receive, Send], Awaitable[None]]

BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.IGNORECASE)
MAX_FIELD_BYTES = 64 * 1024  # a part that is no file: Gradio's upload route reads none, and its parser keeps them in memory
MAX_HEADER_BYTES = 16 * 1024  # the headers of one part
IDLE_S = 60.0  # an upload that sends nothing this long is cut (408): its bytes and its connection are freed


class PartCounter:
    """Follows the parts of a multipart body as it streams, across chunk edges: counts them, and holds a part
    that is no file (a form field, which Gradio's parser keeps in memory) to MAX_FIELD_BYTES, its headers to MAX_HEADER_BYTES."""

    def __init__(self, content_type: str) -> None:
        found = BOUNDARY.search(content_type)
        self._delimiter = b"--" + found.group(1).encode("latin-1", "replace") if found else b""
        self._tail = b""  # the last bytes seen, which may begin a delimiter: looked at again with the next chunk
        self.delimiters = 0  # each part opens with one, and one closes the body
        self._headers: bytearray | None = None  # the current part's headers while they arrive; None once read
        self._is_file = False  # (before the first delimiter: the preamble, held like a field)
        self._part_bytes = 0

    def feed(self, chunk: bytes, most_parts: int) -> str | None:
        """Follow `chunk`: None, or why the upload is refused (too many files, a field or headers too long)."""
        if not self._delimiter:
            return None
        seen, start = self._tail + chunk, 0
        while (found := seen.find(self._delimiter, start)) != -1:
            problem = self._part(seen[start:found])
            if problem:
                return problem
            self.delimiters += 1
            if self.delimiters > most_parts + 1:
                return f"one upload holds at most {most_parts} files: send them in several uploads"
            self._headers, self._is_file, self._part_bytes = bytearray(), False, 0
            start = found + len(self._delimiter)
        kept = max(start, len(seen) - (len(self._delimiter) - 1))  # shorter than a delimiter: never counted twice
        self._tail = seen[kept:]
        return self._part(seen[start:kept])

    def _part(self, data: bytes) -> str | None:
        """Bytes of the current part: its headers first, then its content."""
        if self._headers is not None:
            self._headers.extend(data)
            end = self._headers.find(b"\r\n\r\n")
            if end == -1:
                return "the headers of a part are too long" if len(self._headers) > MAX_HEADER_BYTES else None
            self._is_file = b"filename=" in self._headers[:end].lower()
            data, self._headers = bytes(self._headers[end + 4 :]), None
        self._part_bytes += len(data)
        if not self._is_file and self._part_bytes > MAX_FIELD_BYTES:
            return f"a form field of more than {MAX_FIELD_BYTES // 1024} KB: only files are uploaded here"
        return None

    def closing(self) -> bytes:
        """What ends the body where it stands (the current part cut short): the closing delimiter."""
        return b"\r\n" + self._delimiter + b"--\r\n" if self._delimiter else b""


class _HeldAnswer:
    """The app's answer, kept until we know whether the upload stands (it is a short JSON list of paths)."""

    def __init__(self) -> None:
        self.start: Message | None = None
        self.body = bytearray()

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.start = message
        elif message["type"] == "http.response.body":
            self.body.extend(message.get("body", b""))

    @property
    def status(self) -> int:
        return self.start["status"] if self.start else 0

    def paths(self) -> list[str]:
        """The files the upload made (Gradio answers a JSON list of their paths)."""
        if self.status != 200:
            return []
        try:
            listed = json.loads(bytes(self.body))
        except ValueError:
            return []
        return [path for path in listed if isinstance(path, str)] if isinstance(listed, list) else []

    async def forward(self, send: Send) -> None:
        if self.start is not None:
            await send(self.start)
            await send({"type": "http.response.body", "body": bytes(self.body), "more_body": False})


async def receive_upload(app: ASGIApp, space: UploadSpace, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
    """Pass an upload on to Gradio, counting it as it streams; refuse it (413) past the space's limits."""
    headers = Headers(scope=scope)
    admitted = space.admit(_declared_length(headers))
    if isinstance(admitted, str):
        await _refuse(scope, receive, send, admitted)
        return
    arrival: Arrival = admitted
    parts = PartCounter(headers.get("content-type", ""))
    refusal: str | None = None
    status = 413

    async def counting_receive() -> Message:
        nonlocal refusal, status
        if refusal is not None:
            return {"type": "http.request", "body": b"", "more_body": False}
        try:
            message = await asyncio.wait_for(receive(), IDLE_S)
        except TimeoutError:  # a stalled upload would hold its bytes, and a connection, for good
            refusal, status = f"the upload stalled: nothing arrived for {IDLE_S:g} s; send it again", 408
            return {"type": "http.request", "body": parts.closing(), "more_body": False}
        if message["type"] != "http.request":
            return message
        body = message.get("body", b"")
        refusal = parts.feed(body, space.limits.files_per_upload) or arrival.receive(len(body))
        if refusal is None:
            return message
        return {"type": "http.request", "body": parts.closing(), "more_body": False}  # this chunk is dropped

    answer = _HeldAnswer()
    try:
        await app(scope, counting_receive, answer.send)
    except Exception:
        if refusal is None:
            raise  # not ours: a fault below
    finally:
        arrival.end()
    made = answer.paths()
    if refusal is None and made and not space.hold(made, arrival.received):
        refusal = space.files_full()
    if refusal is None:
        await answer.forward(send)
        return
    for path in made:
        if not space.is_held(path):  # the same bytes under the same name, held for another visitor, stay
            discard_upload(Path(path))
    await _refuse(scope, receive, send, refusal, status)


def _declared_length(headers: Headers) -> int | None:
    try:
        return max(int(headers["content-length"]), 0)
    except (KeyError, ValueError):
        return None


async def _refuse(scope: MutableMapping[str, Any], receive: Receive, send: Send, text: str, status: int = 413) -> None:
    log_refusal("an upload", text)
    await PlainTextResponse(text, status_code=status)(scope, receive, send)
