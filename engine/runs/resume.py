"""Which runs can go on from their checkpoint, and the config that takes them on.

A run stopped, interrupted, ended by its step limit or out of memory resumes from its last
checkpoint (engine/checkpoint.py) in its own folder; one that diverged would diverge again, one
still running is not ours to take, and one without a checkpoint has nothing to go on from.
"""

from dataclasses import replace
from pathlib import Path

from engine.checkpoint import CHECKPOINT_FILE, Checkpoint
from engine.config import RunConfig
from engine.errors import ConfigError
from engine.runs.record import read_record, record_state
from engine.train import TrainStarted


def resume_problem(folder: Path, further: bool = False) -> str | None:
    """Why the run in `folder` cannot resume, in a sentence; None when it can: to its configured end, or
    (`further`: more epochs or steps are asked for) past it."""
    record = read_record(Path(folder))
    if record is None:
        return f"{folder} has no run record (run.json): it is not a run folder"
    state = record_state(record)
    if state == "running":
        return f"the run in {folder} is still running: stop it first"
    if state == "done" and not further and not _ended_by_step_limit(record):
        return f"the run in {folder} is complete: to train it further, resume it with more --epochs or --max-steps"
    if state == "failed" and not record.get("out_of_memory"):
        return f"the run in {folder} failed ({record.get('error')}); resuming would fail again: start a new run with other settings"
    if not (Path(folder) / CHECKPOINT_FILE).is_file():
        return f"the run in {folder} has no checkpoint (it ended before its first loss estimate, or before checkpoints were kept): start it again"
    return None


def resumed_config(folder: Path, max_steps: int | None = None, epochs: int | None = None) -> RunConfig:
    """The config of the run in `folder`, to go on to `max_steps` steps or `epochs` epochs (neither: its
    own end; a run that stopped at its step limit then goes on to its epochs).

    Raises:
        ConfigError: the run cannot resume (why, and what to do), or the new limits are invalid.
    """
    problem = resume_problem(folder, further=max_steps is not None or epochs is not None)
    if problem:
        raise ConfigError(problem)
    record = read_record(Path(folder)) or {}
    cfg = replace(RunConfig.from_dict(record.get("config") or {}), out_dir=str(folder))
    steps = record.get("steps") or 0
    if epochs is not None:
        return cfg.with_train(epochs=epochs, max_steps=max_steps)
    if max_steps is not None:
        return cfg.with_train(max_steps=max_steps)
    if cfg.train.max_steps is not None and steps >= cfg.train.max_steps:
        return cfg.with_train(max_steps=None)
    return cfg


def _ended_by_step_limit(record: dict) -> bool:
    limit = ((record.get("config") or {}).get("train") or {}).get("max_steps")
    return isinstance(limit, int) and record.get("steps") == limit


def check_resumable(cfg: RunConfig, checkpoint: Checkpoint) -> None:
    """Raise ConfigError unless `cfg` leaves steps to take after `checkpoint` (of a run `resume_problem` allows)."""
    per_epoch = next((event.steps_per_epoch for event in checkpoint.events if isinstance(event, TrainStarted)), None)
    reached = checkpoint.position.step
    if per_epoch is None:
        raise ConfigError(f"the checkpoint in {cfg.out_dir} names no training: start the run again")
    total = per_epoch * cfg.train.epochs if cfg.train.max_steps is None else min(cfg.train.max_steps, per_epoch * cfg.train.epochs)
    if total <= reached:
        raise ConfigError(f"the run in {cfg.out_dir} is already at step {reached} of the {total} asked: resume it with more --max-steps or --epochs")
