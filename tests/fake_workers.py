"""Workers that start nothing: a launched run waits until the test ends it (for queue, scheduler and room tests)."""

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engine.config import RunConfig
from engine.runs.jobs import WorkerEnded


@dataclass(frozen=True)
class Slot:
    name: str


class Held:
    """A launched run: stopping it ends it at once, as stopped."""

    def __init__(self, on_end: Callable[[WorkerEnded], None]) -> None:
        self._on_end = on_end

    def stop(self) -> None:
        self._on_end(WorkerEnded("stopped"))


class FakeWorkers:
    """`slots` slots; `ends` and `events` hold each launched run's callbacks by its folder's name; `refuse` makes launches fail."""

    def __init__(self, slots: int = 1) -> None:
        self.slots = tuple(Slot(f"slot {n}") for n in range(slots))
        self.ends: dict[str, Callable[[WorkerEnded], None]] = {}
        self.events: dict[str, Callable[[object], None]] = {}
        self.refuse = False
        self.resumed: set[str] = set()  # the runs launched to resume
        self._lock = threading.Lock()

    def describe(self) -> str:
        return f"{len(self.slots)} fake workers"

    def launch(self, config: RunConfig, slot: Slot, on_event: Callable[[object], None], on_end: Callable[[WorkerEnded], None], resume: bool = False) -> Held:
        if self.refuse:
            raise RuntimeError("no such interpreter")
        with self._lock:
            run_id = Path(config.out_dir).name
            self.ends[run_id], self.events[run_id] = on_end, on_event
            if resume:
                self.resumed.add(run_id)
        return Held(on_end)
