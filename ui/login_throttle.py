"""Failed logins, throttled: a few tries free, then a wait that doubles with each failure.

Per address, and for all addresses together (an address can be made up: behind a proxy, or in an
X-Forwarded-For header from this machine), each with its own allowance. Every attempt counts as a
failure the moment it arrives (a success clears the count), so a flood sent at once is throttled as
surely as one sent in turn. The addresses remembered are bounded: the oldest are forgotten first.
"""

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

FREE_TRIES = 5  # wrong passwords allowed in a row from one address before any wait
FIRST_WAIT_S = 1.0  # the wait after the free tries, doubled with each further failure...
LONGEST_WAIT_S = 300.0  # ...up to this
FREE_TRIES_ALL = 30  # wrong passwords in a row from all addresses together...
LONGEST_WAIT_ALL_S = 60.0  # ...then everyone waits, but never long: the right password may be on its way
REMEMBERED_ADDRESSES = 10_000
EVERYONE = ""  # the key of the count over all addresses


@dataclass
class _Tries:
    failures: int = 0
    blocked_until: float = 0.0


class LoginThrottle:
    """Counts the login attempts of each address and of all together; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tries: OrderedDict[str, _Tries] = OrderedDict()

    def attempt(self, address: str) -> float:
        """An attempt from `address` arrives: 0 if it may be checked (counted as failed until `succeeded`), else the seconds to wait."""
        now = time.monotonic()
        with self._lock:
            mine, everyone = self._entry(address), self._entry(EVERYONE)
            wait_s = max(mine.blocked_until, everyone.blocked_until) - now
            if wait_s > 0:
                return wait_s
            _fail(mine, now, FREE_TRIES, LONGEST_WAIT_S)
            _fail(everyone, now, FREE_TRIES_ALL, LONGEST_WAIT_ALL_S)
            return 0.0

    def succeeded(self, address: str) -> None:
        with self._lock:
            self._tries.pop(address, None)
            self._tries.pop(EVERYONE, None)

    def _entry(self, key: str) -> _Tries:
        tries = self._tries.pop(key, None) or _Tries()
        self._tries[key] = tries  # most recent last
        while len(self._tries) > REMEMBERED_ADDRESSES:
            self._tries.popitem(last=False)
        return tries


def _fail(tries: _Tries, now: float, free: int, longest_s: float) -> None:
    tries.failures += 1
    if tries.failures >= free:
        tries.blocked_until = now + min(FIRST_WAIT_S * 2 ** min(tries.failures - free, 20), longest_s)
