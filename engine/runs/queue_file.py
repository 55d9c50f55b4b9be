"""Reading queue.json without trusting it: each entry is checked on its own, and a bad one costs only itself.

The file is the queue's own, but anything may have written it (an older version, a hand edit, an
attack through a visitor's numbers before they were bounded). So an entry's folder is always its
id's place inside the runs folder (never the path the entry names), its settings are validated as a
new run's, its state must be known and its times finite; an entry that fails is kept as a failed run
saying why, and one without a usable id (or a repeated one) is left out and logged. Numbers too long
for 64 bits are read as infinite, so that the one setting they hold is refused, not the whole file.
"""

import json
import logging
import math
import re
from collections.abc import Callable
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from engine.config import RunConfig, shown
from engine.errors import ConfigError
from engine.runs.states import ENDED, RUN_STATES

log = logging.getLogger(__name__)

RUN_ID = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9._+-]{0,99}(/[A-Za-z0-9_+-][A-Za-z0-9._+-]{0,99})?")  # "<run>" or "<grid>/<run>", no dot first
MAX_TEXT = 1000  # a reason, a worker's name: longer is cut
LATEST_TIME = 1e11  # seconds since the epoch: the year 5138
LONGEST_INT = 20  # digits: 2**64 has 20

Rebase = Callable[[RunConfig], RunConfig]  # what the queue's owner sets on every run it will train (data, device); ConfigError refuses one


class QueueFileError(ValueError):
    """The file is not a queue at all (not JSON, no list of runs): it is set aside whole."""


def parse(text: str) -> list[Any]:
    """The entries of a queue file's text.

    Raises:
        QueueFileError: not JSON, or not {"runs": [...]}.
    """
    try:
        data = json.loads(text, parse_int=_bounded_int)
    except (ValueError, RecursionError) as error:
        raise QueueFileError(f"not JSON ({error})") from None
    runs = data.get("runs") if isinstance(data, dict) else None
    if not isinstance(runs, list):
        raise QueueFileError("no list of runs")
    return runs


def _bounded_int(text: str) -> int | float:
    """An integer of JSON; one too long for 64 bits (or for Python to parse) is infinite, which every check refuses."""
    return int(text) if len(text.lstrip("-")) <= LONGEST_INT else math.inf


def read_entries(entries: list[Any], root: Path, rebase: Rebase | None, run_type: type) -> list[Any]:
    """The queue's runs (`run_type` is QueuedRun): each entry checked, a bad one failed or left out."""
    runs, seen = [], set()
    for number, entry in enumerate(entries, start=1):
        run_id = entry.get("id") if isinstance(entry, dict) else None
        if not isinstance(run_id, str) or not RUN_ID.fullmatch(run_id) or ".." in run_id or run_id in seen:
            log.warning("queue.json: entry %d left out: its id %s is not a run folder's name, or repeats one", number, shown(run_id))
            continue
        seen.add(run_id)
        runs.append(read_entry(entry, run_id, root, rebase, run_type))
    return runs


def read_entry(entry: dict[str, Any], run_id: str, root: Path, rebase: Rebase | None, run_type: type) -> Any:
    """One entry as a run in its own folder; a failed run saying why when anything in it is refused."""
    folder = str(Path(root) / run_id)
    try:
        config = RunConfig.from_dict(entry.get("config"))
    except (ConfigError, RecursionError) as error:
        return _refused(run_type, run_id, folder, entry, f"its settings were refused ({error})", settings_known=False)
    config = replace(config, out_dir=folder)  # the id decides the folder, never the file
    values = {name: entry.get(name) for name in ("grid", "state", "reason", "worker", "visitor", "queued_at", "started_at", "ended_at")}
    problem = _problem(values)
    if not problem and entry.get("settings_known") is False and values["state"] not in ENDED:
        problem = "its settings were refused before"
    if problem:
        return _refused(run_type, run_id, folder, entry, problem, config=config, settings_known=entry.get("settings_known") is not False)
    if rebase is not None and values["state"] not in ENDED:
        try:
            config = rebase(config)
        except ConfigError as error:
            return _refused(run_type, run_id, folder, entry, f"it cannot run here ({error})", config=config)
    known = {f.name for f in fields(run_type)}
    kept = {key: value for key, value in values.items() if key in known and value is not None}
    return run_type(**kept, id=run_id, config=config, settings_known=entry.get("settings_known") is not False, resume=entry.get("resume") is True)


def _problem(values: dict[str, Any]) -> str | None:
    if values["state"] not in RUN_STATES:
        return f"its state {shown(values['state'])} is not one of {', '.join(RUN_STATES)}"
    for name in ("queued_at", "started_at", "ended_at"):
        value = values[name]
        if value is not None and not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= LATEST_TIME):
            return f"its {name.replace('_', ' ')} time {shown(value)} is not a time"
    for name in ("grid", "reason", "worker", "visitor"):
        value = values[name]
        if value is not None and not isinstance(value, str):
            return f"its {name} {shown(value)} is not text"
        if isinstance(value, str) and len(value) > MAX_TEXT:
            values[name] = value[:MAX_TEXT] + "…"
    if values["grid"] is not None and not RUN_ID.fullmatch(values["grid"]):
        return f"its grid {shown(values['grid'])} is not a folder's name"
    return None


def _refused(
    run_type: type, run_id: str, folder: str, entry: dict[str, Any], problem: str, config: RunConfig | None = None, settings_known: bool = True
) -> Any:
    log.warning("queue.json: run %s is marked failed: %s", run_id, problem)
    queued_at = entry.get("queued_at")
    return run_type(
        id=run_id,
        config=config or RunConfig(out_dir=folder),  # a stand-in: the table shows no settings for it
        state="failed",
        reason=f"refused when the queue was read: {problem}",
        queued_at=float(queued_at) if isinstance(queued_at, (int, float)) and not isinstance(queued_at, bool) and 0 <= queued_at <= LATEST_TIME else 0.0,
        settings_known=settings_known and config is not None,
    )
