"""A run's states, named once: what the queue says of a run, and the part of it a run's own record says.

    queued ──► running ──► done | stopped | failed
       │          └──────► interrupted (the process running it went away before it could say)
       └──► cancelled (left the queue before it started)

A run's record (run.json) exists from the moment it starts, so it never says queued or cancelled.
"""

from typing import Literal, get_args

RunState = Literal["queued", "running", "done", "failed", "stopped", "cancelled", "interrupted"]
RecordState = Literal["running", "done", "stopped", "failed", "interrupted"]

RUN_STATES: tuple[str, ...] = get_args(RunState)
RECORD_STATES: tuple[str, ...] = get_args(RecordState)
ENDED: tuple[str, ...] = ("done", "failed", "stopped", "cancelled", "interrupted")
