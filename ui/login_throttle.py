"""Failed logins, throttled per address: a few tries free, then a wait that doubles with each failure.

Every attempt counts as a failure the moment it arrives (a success clears the count), so a flood of
attempts sent at once is throttled as surely as one sent in turn. The addresses remembered are
bounded: the oldest are forgotten first.
"""

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

FREE_TRIES = 5  # wrong passwords allowed in a row before any wait
FIRST_WAIT_S = 1.0  # the wait after the free tries, doubled with each further failure...
LONGEST_WAIT_S = 300.0  # ...up to this
REMEMBERED_ADDRESSES = 10_000


@dataclass
class _Tries:
    failures: int = 0
    blocked_until: float = 0.0


class LoginThrottle:
    """Counts the login attempts of each address; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tries: OrderedDict[str, _Tries] = OrderedDict()

    def attempt(self, address: str) -> float:
        """An attempt from `address` arrives: 0 if it may be checked (counted as failed until `succeeded`), else the seconds to wait."""
        now = time.monotonic()
        with self._lock:
            tries = self._tries.pop(address, None) or _Tries()
            self._tries[address] = tries  # most recent last
            while len(self._tries) > REMEMBERED_ADDRESSES:
                self._tries.popitem(last=False)
            if now < tries.blocked_until:
                return tries.blocked_until - now
            tries.failures += 1
            if tries.failures >= FREE_TRIES:
                tries.blocked_until = now + min(FIRST_WAIT_S * 2 ** (tries.failures - FREE_TRIES), LONGEST_WAIT_S)
            return 0.0

    def succeeded(self, address: str) -> None:
        with self._lock:
            self._tries.pop(address, None)
