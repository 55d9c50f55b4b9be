"""What the server answers before Gradio's own routes do.

What Gradio 6 allows and LoRA Lab needs none of:
- `/gradio_api/file=<http(s) URL>` makes the server fetch any public address and stream it back;
  here it is refused (403): LoRA Lab never shows remote files. `/gradio_api/process_recording`
  (screen recordings, another way to send files) is refused too: LoRA Lab records nothing.
- With a login (`--auth`), several routes answer without it (`/gradio_api/cancel`, `/reset`,
  heartbeats, streams...) and the login page embeds the whole API description (every endpoint, its
  parameters and defaults, among them the `--model` folder). Here every route but the login page and
  its assets asks for the login, the login page's description is emptied, and wrong passwords are
  throttled per address (ui.login_throttle).
- Uploads are limited per file only; here they are counted as they stream in against the upload
  space, files per upload and files held (ui.upload_space), and refused (413) past them.

Each refusal is one line in the server log. It is plain ASGI middleware, given to the FastAPI app
Gradio builds (`launch(app_kwargs=...)`).
"""

import math
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from gradio_client.utils import is_http_url_like
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse, PlainTextResponse, Response

from ui.login_throttle import LoginThrottle
from ui.server_log import log_refusal
from ui.settings import MAX_FILES_PER_UPLOAD, MAX_HELD_UPLOADS, UPLOAD_SWEEP_S
from ui.upload_space import SpaceLimits, UploadSpace
from ui.upload_stream import receive_upload

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

FILE_ROUTE = re.compile(r"/gradio_api/file[=/](.*)$", re.DOTALL)
UPLOAD_ROUTE = re.compile(r"/gradio_api/upload/?$")
RECORDING_ROUTE = re.compile(r"/gradio_api/process_recording/?$")
LOGIN_ROUTE = re.compile(r"/login/?$")
JOIN_ROUTE = re.compile(r"/gradio_api/queue/join/?$")
# What the login page needs before the login: the page, its scripts, styles, fonts and icons, and the login itself;
# and startup-events, which `launch` itself calls once (it starts the queue, and does nothing after).
OPEN_PATHS = frozenset(
    {"/", "/login", "/login/", "/logout", "/favicon.ico", "/theme.css", "/gradio_api/theme.css", "/manifest.json", "/robots.txt", "/pwa_icon"}
    | {"/gradio_api/startup-events"}
)
OPEN_PREFIXES = ("/assets/", "/static/", "/svelte/", "/pwa_icon/")
API_INFO_SCRIPT = re.compile(rb"(<script>window\.gradio_api_info = ).*?(;</script>)", re.DOTALL)
EMPTY_API_INFO = rb'{"named_endpoints": {}, "unnamed_endpoints": {}}'


class HttpGuard:
    """ASGI middleware in front of Gradio's routes; `upload_space_bytes` bounds the uploads kept at once."""

    def __init__(
        self,
        app: ASGIApp,
        upload_space_bytes: int,
        upload_lifetime_s: int,
        files_per_upload: int | None = None,
        files_held: int | None = None,
    ) -> None:
        self.app = app
        files_per_upload, files_held = files_per_upload or MAX_FILES_PER_UPLOAD, files_held or MAX_HELD_UPLOADS
        self.uploads = UploadSpace(SpaceLimits(upload_space_bytes, files_per_upload, files_held, upload_lifetime_s, UPLOAD_SWEEP_S))
        self.logins = LoginThrottle()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path, method = scope.get("path", ""), scope.get("method", "GET")
        if _needs_login(scope) and not _open_before_login(path):
            await self._refuse(scope, receive, send, 401, "log in first", "a page or route before the login")
            return
        if scope["type"] == "websocket":
            await self.app(scope, receive, send)
            return
        fetched = FILE_ROUTE.search(path)
        if fetched and is_http_url_like(fetched.group(1)):
            await self._refuse(scope, receive, send, 403, "LoRA Lab does not fetch URLs on a visitor's behalf: only its own files are served", "a URL to fetch")
        elif method == "POST" and RECORDING_ROUTE.search(path):
            await self._refuse(scope, receive, send, 403, "LoRA Lab takes no screen recordings", "a screen recording")
        elif method == "POST" and UPLOAD_ROUTE.search(path):
            await receive_upload(self.app, self.uploads, scope, receive, send)
        elif method == "POST" and LOGIN_ROUTE.search(path) and _asks_login(scope):
            await self._login(scope, receive, send)
        elif method == "POST" and JOIN_ROUTE.search(path):
            await self._join(scope, receive, send)
        elif method == "GET" and _needs_login(scope):
            await self.app(scope, receive, _without_api_info(send))
        else:
            await self.app(scope, receive, send)

    async def _login(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass a login attempt on unless its address must wait; a success clears the address's failures."""
        address = (scope.get("client") or ("unknown", 0))[0]
        wait_s = self.logins.attempt(address)
        if wait_s:
            seconds = max(1, math.ceil(wait_s))  # rounded up: a retry after the wait named is never refused again
            text = f"too many wrong logins: wait {seconds} s, then try again"
            await self._refuse(scope, receive, send, 429, text, "a login", {"Retry-After": str(seconds)})
            return
        status = 0

        async def noting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        await self.app(scope, receive, noting_send)
        if status == 200:
            self.logins.succeeded(address)

    async def _join(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass an event on to Gradio's queue; one naming no event of this app (Gradio fails it with a KeyError and a
        traceback) is refused (400) in one line. The event itself runs later, in the queue: its faults are not caught here."""
        started = False

        async def noting_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, noting_send)
        except (KeyError, IndexError, TypeError, ValueError) as error:
            if started:
                raise
            await self._refuse(scope, receive, send, 400, f"the request names no event of this app ({type(error).__name__}: {error})", "an event")

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, status: int, text: str, what: str, headers: dict[str, str] | None = None) -> None:
        log_refusal(what, f"{status} for {scope.get('path', '')[:200]}: {text}")
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        response: Response
        if status == 401:  # the shape Gradio's own routes answer with, which gradio_client reads
            response = JSONResponse({"detail": {"error": f"Not authenticated: {text}", "auth_message": None}}, status_code=status)
        else:
            response = PlainTextResponse(text, status_code=status, headers=headers)
        await response(scope, receive, send)


def _open_before_login(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def _asks_login(scope: Scope) -> bool:
    app = scope.get("app")
    return app is not None and getattr(app, "auth", None) is not None


def _needs_login(scope: Scope) -> bool:
    """The app asks for a login and this request carries no valid one (Gradio's own cookie check)."""
    if not _asks_login(scope):
        return False
    app = scope["app"]
    cookies = HTTPConnection(scope).cookies
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
