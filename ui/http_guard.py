"""What the server answers before Gradio's own routes do.

Three things Gradio 6 allows and LoRA Lab needs none of:
- `/gradio_api/file=<http(s) URL>` makes the server fetch any public address and stream it back;
  here it is refused (403): LoRA Lab never shows remote files.
- With a login (`--auth`), the login page still embeds the whole API description (every endpoint,
  its parameters and defaults, among them the `--model` folder); here a visitor who has not logged
  in gets an empty one. `/gradio_api/info` and `/config` already ask for the login.
- Uploads are limited per file only; here a new upload is refused (413) while the files uploaded
  and not yet deleted fill the upload space.

It is plain ASGI middleware, given to the FastAPI app Gradio builds (`launch(app_kwargs=...)`).
"""

import re
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from gradio_client.utils import is_http_url_like
from starlette.requests import Request
from starlette.responses import PlainTextResponse

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

FILE_ROUTE = re.compile(r"/gradio_api/file[=/](.*)$", re.DOTALL)
UPLOAD_ROUTE = re.compile(r"/gradio_api/upload/?$")
API_INFO_SCRIPT = re.compile(rb"(<script>window\.gradio_api_info = ).*?(;</script>)", re.DOTALL)
EMPTY_API_INFO = rb'{"named_endpoints": {}, "unnamed_endpoints": {}}'


class HttpGuard:
    """ASGI middleware in front of Gradio's routes; `upload_space_bytes` bounds the uploads kept at once."""

    def __init__(self, app: ASGIApp, upload_space_bytes: int, upload_lifetime_s: int) -> None:
        self.app = app
        self.upload_space_bytes = upload_space_bytes
        self.upload_lifetime_s = upload_lifetime_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, method = scope.get("path", ""), scope.get("method", "GET")
        fetched = FILE_ROUTE.search(path)
        if fetched and is_http_url_like(fetched.group(1)):
            await _answer(scope, receive, send, 403, "LoRA Lab does not fetch URLs on a visitor's behalf: only its own files are served")
            return
        if method == "POST" and UPLOAD_ROUTE.search(path):
            refusal = self._upload_refusal(scope)
            if refusal:
                await _answer(scope, receive, send, 413, refusal)
                return
        if method == "GET" and _needs_login(scope):
            await self.app(scope, receive, _without_api_info(send))
            return
        await self.app(scope, receive, send)

    def _upload_refusal(self, scope: Scope) -> str | None:
        """Why this upload is refused (the upload space is full), or None."""
        blocks = _blocks(scope)
        if blocks is None:
            return None
        used = uploads_size(getattr(blocks, "upload_file_set", ()))
        incoming = int(Request(scope).headers.get("content-length") or 0)
        if used + incoming <= self.upload_space_bytes:
            return None
        mb = lambda n: f"{n / 1024**2:,.1f}".removesuffix(".0") + " MB"  # noqa: E731
        return (
            f"The server's space for uploads is full: this upload ({mb(incoming)}) and the {mb(used)} uploaded recently would pass "
            f"its {mb(self.upload_space_bytes)} limit. Uploads are deleted {self.upload_lifetime_s // 60} minutes after they arrive: try again later."
        )


def uploads_size(paths: Any) -> int:
    """The bytes the uploaded files still on disk take."""
    total = 0
    for path in list(paths):
        try:
            total += Path(path).stat().st_size
        except OSError:
            continue  # deleted since (refused, or past its lifetime)
    return total


def _blocks(scope: Scope) -> Any:
    app = scope.get("app")
    return app.get_blocks() if app is not None and getattr(app, "blocks", None) is not None else None


def _needs_login(scope: Scope) -> bool:
    """The app asks for a login and this request carries no valid one (Gradio's own cookie check)."""
    app = scope.get("app")
    if app is None or getattr(app, "auth", None) is None:
        return False
    cookies = Request(scope).cookies
    token = cookies.get(f"access-token-{app.cookie_id}") or cookies.get(f"access-token-unsecure-{app.cookie_id}")
    return app.tokens.get(token) is None


def _without_api_info(send: Send) -> Send:
    """A `send` that empties the API description embedded in an HTML page (the login page)."""
    start: Message | None = None
    body = bytearray()

    async def rewriting_send(message: Message) -> None:
        nonlocal start
        if message["type"] == "http.response.start":
            headers = dict(message.get("headers", []))
            if not headers.get(b"content-type", b"").startswith(b"text/html"):
                await send(message)
                return
            start = message
            return
        if start is None:
            await send(message)
            return
        body.extend(message.get("body", b""))
        if message.get("more_body", False):
            return
        page = API_INFO_SCRIPT.sub(lambda m: m.group(1) + EMPTY_API_INFO + m.group(2), bytes(body))
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        await send({**start, "headers": [*headers, (b"content-length", str(len(page)).encode())]})
        await send({"type": "http.response.body", "body": page, "more_body": False})

    return rewriting_send


async def _answer(scope: Scope, receive: Receive, send: Send, status: int, text: str) -> None:
    await PlainTextResponse(text, status_code=status)(scope, receive, send)
