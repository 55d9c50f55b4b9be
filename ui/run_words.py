"""Runs in words: what a visitor reads about a run in the Train and Runs tabs.

The engine reports states, phases and numbers; every sentence about them is written here, once.
"""

import math
import time
from collections.abc import Sequence
from pathlib import Path

from engine.config import RunConfig, target_set_name
from engine.runs.recorder import PHASE_WORDS, RunProgress
from engine.runs.scheduler import RunView
from ui.views import plural

STATES = {
    "queued": "waiting in the queue",
    "running": "running",
    "done": "finished",
    "stopped": "stopped",
    "failed": "failed",
    "cancelled": "cancelled before it started",
    "interrupted": "interrupted (the app stopped while it ran)",
}


def format_seconds(seconds: float) -> str:
    """0:42, 12:05, 1:02:05."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def layers_words(targets: Sequence[str]) -> str:
    named = target_set_name(targets)
    return f"{named} layers" if named else ", ".join(targets)


def settings_line(cfg: RunConfig) -> str:
    """The settings an audience wants to see, in one line."""
    lora, train = cfg.lora, cfg.train
    scale = "alpha / rank" if lora.scaling == "alpha_over_rank" else "alpha"
    steps = f", at most {train.max_steps:,} steps" if train.max_steps else ""
    steps += f", stopping early after {plural(train.early_stop, 'estimate')} without improvement" if train.early_stop else ""
    return (
        f"{Path(cfg.model).name} · preset {cfg.preset or 'custom'} · rank {lora.rank} · alpha {lora.alpha:g} (scaled by {scale}) · "
        f"{layers_words(lora.targets)} · learning rate {train.lr:g} · {plural(train.epochs, 'epoch')}{steps} · "
        f"batch {train.batch_size} · seed {train.seed}"
    )


def run_header(view: RunView | None) -> str:
    """Markdown naming the run a page follows: its folder, who queued it, its settings."""
    if view is None:
        return "**No run yet.** Choose the settings on *Model & LoRA*, then press *Start training*."
    cfg = view.run.config
    who = f" · queued by **{cfg.owner}**" if cfg.owner else ""
    return f"**Run {view.run.id}**{who}  \n{settings_line(cfg)}"


def status_line(view: RunView | None, now: float | None = None) -> str:
    """One line: the run's state, and while it runs what it is doing."""
    if view is None:
        return "Ready: no run yet."
    run, progress = view.run, view.progress
    now = now or time.time()
    if run.state == "queued":
        ahead = (view.position or 1) - 1
        return f"Waiting in the queue: {plural(ahead, 'run')} ahead of it." if ahead else "Next in the queue: it starts when a worker is free."
    if run.state == "running":
        return "Running: " + running_details(progress, now - (run.started_at or now))
    took = f" in {format_seconds(run.ended_at - run.started_at)}" if run.started_at and run.ended_at else ""
    where = f"; saved in {run.config.out_dir}" if run.state in ("done", "stopped") else ""
    reached = f" after step {progress.step:,} of {progress.total_steps:,}" if progress and progress.total_steps and run.state != "done" else ""
    reason = f": {run.reason}" if run.reason else ""
    return f"{STATES[run.state].capitalize()}{reached}{took}{where}{reason}{best_words(progress)}"


def best_words(progress: RunProgress | None) -> str:
    """How training ended and where its best adapter is, once it has ended: ". Stopped early at step 21: ...; best at step 11 ..."."""
    if progress is None or progress.best is None:
        return ""
    best = progress.best
    if progress.early_stopped:
        said = f". It {progress.early_stopped} (lowest validation loss, {best.validation_loss:.3f})"
    else:
        said = f". Best at step {best.step:,} of {progress.step:,} (lowest validation loss, {best.validation_loss:.3f})"
    also = ": its last adapter is its best" if best.step == progress.step else ": Classify and Evaluate use that adapter unless told otherwise"
    return f"{said}{also}."


def running_details(progress: RunProgress | None, elapsed: float) -> str:
    if progress is None or progress.phase == "starting":
        return f"starting its worker ({format_seconds(elapsed)})"
    if progress.phase == "preparing data" and progress.download is not None:
        return f"downloading the data from {progress.download.url} ({progress.download.received / 1e6:.1f} MB)"
    if not progress.total_steps or progress.phase != "training":
        return PHASE_WORDS[progress.phase] + (f" (step {progress.step:,} of {progress.total_steps:,} done)" if progress.step else "")
    details = [f"step {progress.step:,} of {progress.total_steps:,}", f"epoch {max(progress.epoch, 1)} of {progress.epochs}"]
    if progress.loss is not None:
        details.append(f"loss {progress.loss:.3f}")
    if progress.eta_s is not None:
        details.append(f"about {format_seconds(progress.eta_s)} left")
    return " · ".join(details)


def progress_words(view: RunView | None) -> str:
    """Short, for a table cell: "step 12/130", "queued (3rd)", "done"."""
    if view is None:
        return ""
    run, progress = view.run, view.progress
    if run.state == "queued":
        return f"queued, {ordinal(view.position or 1)} in line"
    if run.state == "running":
        if progress is None or not progress.total_steps:
            return PHASE_WORDS[progress.phase] if progress else "starting"
        return f"step {progress.step:,}/{progress.total_steps:,}"
    return run.state


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def queued_words(run_id: str, position: int, running: int, wait_s: float | None) -> str:
    """A waiting run's place and expected wait: "Run X is 3rd in line (2 runs running, 2 waiting ahead of it): it should start in about 4 min."."""
    ahead = f"{plural(running, 'run')} running, {plural(position - 1, 'run')} waiting ahead of it"
    if wait_s is None:
        when = "no run has finished on this machine yet, so its wait cannot be estimated"
    elif wait_s < 60:
        when = "it should start within a minute"
    else:
        when = f"it should start in about {math.ceil(wait_s / 60)} min"
    return f"Run {run_id} is {ordinal(position)} in line ({ahead}): {when}. This page follows it."
