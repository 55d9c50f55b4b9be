"""Room mode: one LoRA Lab, a presenter and an audience (docs/room.md).

Off (a laptop, one person) everyone has every power, as always. On, each visitor is one browser:
a random secret kept in its local storage (so it survives reloads) and told to the app on each page
load, or, under --auth, the login name; a script (gradio_client) is one visitor per client. The
name typed beside a run is only its label. The presenter is whoever opened the presenter link, the
one carrying the room's secret (or a script sending it in the X-LoRA-Lab-Presenter header): they
may stop, cancel and move any run and change the room's limits. A visitor acts on their own runs
only and may have at most `max_waiting` runs waiting; waiting runs take turns across visitors
(engine.runs.queue.fair_place).

Visitors are known by opaque keys (a hash of the browser's secret): no page or answer ever shows
another visitor's key, so nobody can act as someone else.
"""

import collections
import hashlib
import hmac
import secrets
import threading
from dataclasses import dataclass

import gradio as gr

from engine.config import shown
from engine.runs.queue import MAX_WAITING, QueuedRun
from ui.views import plural

PRESENTER = "presenter"  # the presenter's key: every browser opened with the presenter link is the one presenter
DEFAULT_MAX_WAITING_PER_VISITOR = 3
MOST_WAITING_LIMIT = MAX_WAITING  # the highest limit per visitor: the queue's own
PRESENTER_PARAMETER = "presenter"  # the presenter link's query parameter
PRESENTER_HEADER = "x-lora-lab-presenter"  # a script's way to be the presenter
MAX_SESSIONS = 10_000  # page loads remembered (oldest forgotten first: that page then counts as a new visitor)
SECRET_CHARACTERS = set("0123456789abcdef")


@dataclass(frozen=True)
class Visitor:
    """Who sent a request: `key` owns runs ("" when the room is off), `presenter` may act on every run."""

    key: str
    presenter: bool

    def may_act_on(self, run: QueuedRun) -> bool:
        return self.presenter or run.visitor == self.key


EVERYONE = Visitor("", presenter=True)  # the room off: one person, every power


class Room:
    """Who is who, and the room's limits; one per app, shared by every session."""

    def __init__(self, on: bool, presenter_token: str | None = None, max_waiting: int = DEFAULT_MAX_WAITING_PER_VISITOR) -> None:
        self.on = on
        self.presenter_token = presenter_token or secrets.token_urlsafe(18)
        self.max_waiting = check_limit(max_waiting)
        self._sessions: collections.OrderedDict[str, str] = collections.OrderedDict()  # session hash -> visitor key
        self._lock = threading.Lock()

    def presenter_link(self, url: str) -> str:
        return f"{url.rstrip('/')}/?{PRESENTER_PARAMETER}={self.presenter_token}"

    def arrive(self, secret: object, request: gr.Request | None) -> str:
        """On page load: remember which visitor this page is; returns the browser's secret to keep (made now on a first visit)."""
        secret = secret if isinstance(secret, str) and len(secret) == 32 and set(secret) <= SECRET_CHARACTERS else secrets.token_hex(16)
        session = request.session_hash if request is not None else None
        if self.on and session:
            query = dict(getattr(request, "query_params", None) or {})
            key = PRESENTER if self._is_token(query.get(PRESENTER_PARAMETER)) else "browser-" + hashlib.sha256(secret.encode()).hexdigest()[:24]
            with self._lock:
                self._sessions[session] = key
                self._sessions.move_to_end(session)
                while len(self._sessions) > MAX_SESSIONS:
                    self._sessions.popitem(last=False)
        return secret

    def visitor(self, request: gr.Request | None) -> Visitor:
        """The visitor behind `request`; a call from this machine's own code (no request) has every power."""
        if not self.on or request is None:
            return EVERYONE
        headers = getattr(request, "headers", None) or {}
        query = getattr(request, "query_params", None) or {}  # every event of a page carries the page's address
        if self._is_token(headers.get(PRESENTER_HEADER)) or self._is_token(query.get(PRESENTER_PARAMETER)):
            return Visitor(PRESENTER, presenter=True)
        session = request.session_hash or ""
        with self._lock:
            key = self._sessions.get(session)
        if key == PRESENTER:
            return Visitor(PRESENTER, presenter=True)
        if request.username:
            return Visitor("login-" + hashlib.sha256(request.username.encode()).hexdigest()[:24], presenter=False)
        return Visitor(key or "session-" + hashlib.sha256(session.encode()).hexdigest()[:24], presenter=False)

    def limit_for(self, visitor: Visitor) -> int | None:
        """The most waiting runs `visitor` may have (None: no limit but the queue's)."""
        return None if visitor.presenter else self.max_waiting

    def set_limit(self, visitor: Visitor, value: object) -> int:
        """The presenter changes the most waiting runs per visitor.

        Raises:
            gr.Error: not the presenter, or not a whole number in range.
        """
        if not visitor.presenter:
            raise gr.Error("only the presenter can change the room's limits", duration=8)
        self.max_waiting = check_limit(value)
        return self.max_waiting

    def check(self, visitor: Visitor, run: QueuedRun, act: str) -> None:
        """Refuse `act` ("stop", "cancel", "move") on another visitor's run, saying whose it is and who may.

        Raises:
            gr.Error: the run is someone else's.
        """
        if not visitor.may_act_on(run):
            raise gr.Error(refusal(run, act), duration=8)

    def _is_token(self, value: object) -> bool:
        return isinstance(value, str) and hmac.compare_digest(value.encode(), self.presenter_token.encode())


def check_limit(value: object) -> int:
    """A limit of waiting runs per visitor: a whole number from 1 to the queue's own limit.

    Raises:
        gr.Error: anything else (its message names the range).
    """
    whole = int(value) if isinstance(value, float) and value.is_integer() else value  # a number box sends floats
    if not isinstance(whole, int) or isinstance(whole, bool) or not 1 <= whole <= MOST_WAITING_LIMIT:
        raise gr.Error(f"the most waiting runs per visitor must be a whole number from 1 to {MOST_WAITING_LIMIT}, got {shown(value)}", duration=8)
    return whole


def room_words(visitor: Visitor, max_waiting: int) -> str:
    """The line under the title in room mode: who this page is and what it may do."""
    if visitor.presenter:
        return (
            "**You are the presenter.** You can stop, cancel and move every run, and set the room's limits on the *Runs* tab. "
            "Visitors open the page without the presenter link."
        )
    return (
        f"**A shared LoRA Lab.** Your runs are yours: you can stop, cancel and move them, and have up to {plural(max_waiting, 'run')} "
        "waiting at once. Waiting runs take turns across visitors; the presenter manages the rest."
    )


def refusal(run: QueuedRun, act: str) -> str:
    """Why a visitor may not `act` on `run`, and who may."""
    whose = f"{run.config.owner}'s" if run.config.owner else ("the presenter's" if run.visitor == PRESENTER else "another visitor's")
    return f"run {run.id} is {whose}: only the visitor who started it, or the presenter, can {act} it"


def whose(run: QueuedRun, visitor: Visitor, room_on: bool) -> str:
    """Who a run belongs to, for the page of `visitor`: "you", "presenter", or nothing (someone else, or the room is off)."""
    if not room_on:
        return ""
    if run.visitor == visitor.key:
        return "you"
    return "presenter" if run.visitor == PRESENTER else ""
