"""The app's shared state: one per app, behind every tab's handlers and every visitor's session.

It holds the settings, the room (who is who: ui.room), the run scheduler (the queue every visitor
adds to, and its workers; it owns the runs folder while the app runs), the data prepared last, and
the last loaded classifier (with the lock that Classify's handlers take), and the checks several
tabs make.
"""

import contextlib
import threading
from dataclasses import replace
from pathlib import Path

import gradio as gr

from engine.adapter import read_adapter
from engine.classifier import Classifier
from engine.config import RunConfig
from engine.data.prepared import PreparedData, load_summary
from engine.device import pick_device
from engine.errors import ConfigError, LoRALabError
from engine.runs.adapters import kept_adapter
from engine.runs.history import settle_runs
from engine.runs.queue import QueuedRun
from engine.runs.resume import resume_problem, resumed_config
from engine.runs.scheduler import RunView, Scheduler, workers_for
from engine.runs.wait import expected_wait_s, planned_steps
from ui.answering import FinishedRun, default_run, finished_runs
from ui.controls import data_settings
from ui.guards import deleted_if_refused, engine_errors_as_toasts, uploaded_path, user_error
from ui.room import Room, Visitor
from ui.settings import AppSettings


class Lab:
    """The app's shared state: the room, the run scheduler, the data, the last classifier."""

    def __init__(self, settings: AppSettings, scheduler: Scheduler | None = None) -> None:
        """Raises FolderInUse when another LoRA Lab owns the runs folder (nothing of it is touched then)."""
        self.settings = settings
        self.room = Room(settings.room, settings.presenter_token, settings.max_waiting_per_visitor)
        self.scheduler = scheduler or Scheduler(settings.out, workers_for(settings.workers, settings.device, settings.ray), rebase=self.rebase)
        self.prepared: PreparedData | None = None  # set by a download or an upload in this process
        self.download_stops: set[threading.Event] = set()  # one per Download running: any visitor's Stop ends them all
        # Downloads run side by side (none waits behind another's slow source); writing the data cache is one at a time.
        self.data_lock = threading.Lock()
        # Classify is its own concurrency group (limit 1); the lock also guards the cache and
        # compare_with_base's switching LoRA off and on should anyone raise that limit.
        self.classify_lock = threading.Lock()
        self._classifier: tuple[tuple[str, int, str], Classifier] | None = None  # (path, mtime, device) -> loaded
        settle_runs(settings.out)  # runs an earlier app left "running" when it was killed read as interrupted

    def close(self, timeout: float = 60.0) -> None:
        """Stop the running runs (each saves as stopped); queued runs stay queued for the next start."""
        self.scheduler.close(timeout)

    def rebase(self, cfg: RunConfig) -> RunConfig:
        """A waiting run read back from queue.json, set to train as this app trains runs (its data, its device);
        whatever the file said of folders, URLs or devices is not used.

        Raises:
            ConfigError: a model this app does not offer.
        """
        if cfg.model not in self.settings.models:
            raise ConfigError(f"its model {cfg.model[:80]!r} is not one this app offers ({', '.join(self.settings.models)})")
        return replace(cfg, **data_settings(self.settings), device=self.settings.device)

    def can_resume(self, run: QueuedRun, visitor: Visitor) -> bool:
        """Whether `visitor` may resume `run` now: it ended, it has a checkpoint to go on from, and it is theirs (in a room)."""
        return run.ended and visitor.may_act_on(run) and resume_problem(Path(run.config.out_dir)) is None

    def resume(self, run_id: str | None, visitor: Visitor) -> QueuedRun:
        """Queue the ended run `run_id` again to go on from its checkpoint (in a room, only its visitor or the presenter may).

        Raises:
            gr.Error: no run picked, someone else's, or it cannot resume (why, and what to do).
        """
        if not run_id or not isinstance(run_id, str):
            raise gr.Error("pick a run first", duration=5)
        try:
            run = self.scheduler.queue.get(run_id)
            self.room.check(visitor, run, "resume")
            return self.scheduler.resume(run_id, resumed_config(Path(run.config.out_dir)), visitor.key, self.room.limit_for(visitor))
        except LoRALabError as error:
            raise user_error(error) from None

    def followed(self, run_id: str | None, visitor: Visitor | None = None) -> RunView | None:
        """The run a page follows: `run_id`; else in a room the visitor's own latest run; else the newest run to
        have started (else the newest queued)."""
        views = self.scheduler.views()
        if run_id:
            return next((view for view in views if view.run.id == run_id), None)
        if visitor is not None and self.room.on:
            own = [view for view in views if view.run.visitor == visitor.key]
            if own:
                return max(own, key=lambda view: view.run.queued_at)
        started = [view for view in views if view.run.started_at is not None]
        if started:
            return max(started, key=lambda view: view.run.started_at)
        queued = [view for view in views if view.run.state == "queued"]
        return queued[-1] if queued else None

    def check_model(self, model: str) -> str:
        """`model` if the app offers it; a typed folder or anything else is refused (no path from a visitor reaches the disk)."""
        if model not in self.settings.models:
            raise gr.Error(
                f"unknown model {str(model)[:80]!r}: choose one of {', '.join(self.settings.models)}. "
                "A local model folder is chosen when starting the app: python app.py --model FOLDER",
                duration=None,
            )
        return model

    def check_batch_size(self, batch_size: int) -> None:
        """Refuse a batch larger than the training split, when the data is known already (else the run says so)."""
        summary = self.prepared.summary if self.prepared else load_summary(self.settings.cache)
        if summary is not None and batch_size > summary.train:
            raise gr.Error(f"batch size {batch_size} is larger than the {summary.train} training messages: choose at most {summary.train}", duration=None)

    def expected_wait_s(self, run_id: str) -> float | None:
        """Seconds until the waiting run `run_id` starts, at this machine's measured speed; None before anything was measured."""
        summary = self.prepared.summary if self.prepared else load_summary(self.settings.cache)
        training = summary.train if summary is not None else None
        views = self.scheduler.views()
        return expected_wait_s(views, run_id, len(self.scheduler.workers.slots), lambda cfg: planned_steps(cfg, training))

    def finished_runs(self) -> list[FinishedRun]:
        """The runs Classify and Evaluate offer, newest first (ui.answering)."""
        return finished_runs(self.settings.out, self.scheduler.queue.runs())

    def answering_run(self, chosen: str | None, visitor: Visitor) -> FinishedRun | None:
        """The finished run `chosen` (a name from the list), or the visitor's default when nothing is chosen.

        Raises:
            gr.Error: `chosen` is not a finished run.
        """
        runs = self.finished_runs()
        if not chosen:
            return default_run(runs, visitor, self.room.on)
        found = next((run for run in runs if run.name == chosen), None) if isinstance(chosen, str) else None
        if found is None:
            raise gr.Error(f"no finished run called {str(chosen)[:80]!r} in {self.settings.out}: choose one from the list (press Refresh)", duration=None)
        return found

    def classifier_for(
        self, adapter_file: str | None, chosen: str | None = None, visitor: Visitor | None = None, which: str = "best"
    ) -> tuple[str, Classifier]:
        """What answers, in words ("run X; best adapter, step 60 of 130 ...", "the uploaded adapter NAME"), and its loaded
        classifier; call under `classify_lock`.

        An uploaded adapter answers when there is one, else the run `chosen` from the list, else the visitor's default run:
        its `which` adapter, best (the default) or last (engine.runs.adapters).
        """
        if adapter_file:
            adapter = uploaded_path(adapter_file, "an adapter.safetensors file")
            answering = f"the uploaded adapter {adapter.name}"
        else:
            run = self.answering_run(chosen, visitor or self.room.visitor(None))
            if run is None:
                raise gr.Error(no_run_words(self.room.on, bool(self.finished_runs())), duration=None)
            kept = kept_adapter(run.summary, which)
            adapter, answering = kept.folder, f"run {run.name}; {kept.words()}"
        return answering, self.classifier_at(adapter, uploaded=bool(adapter_file))

    def classifier_at(self, adapter: Path, uploaded: bool = False) -> Classifier:
        """The classifier of the adapter at `adapter` (a run's folder, or an `uploaded` file, deleted if refused),
        loaded once and kept until another is asked for; call under `classify_lock`."""
        device = pick_device(self.settings.app_device)
        tensors = adapter / "adapter.safetensors" if adapter.is_dir() else adapter
        key = (str(tensors.resolve()), tensors.stat().st_mtime_ns if tensors.exists() else 0, str(device))
        if self._classifier is None or self._classifier[0] != key:
            self._classifier = None  # free the previous model before loading the next
            refused_upload_deleted = deleted_if_refused(adapter) if uploaded else contextlib.nullcontext()
            with refused_upload_deleted, engine_errors_as_toasts(str(device), "loading the classifier"):
                # The adapter names its base model; only a model this app offers is loaded (an uploaded
                # adapter must not point the app at an arbitrary folder or download).
                config, _ = read_adapter(adapter)
                if config.base_model not in self.settings.models:
                    raise gr.Error(
                        f"this adapter was trained on {config.base_model[:120]!r}, which this app does not offer "
                        f"({', '.join(self.settings.models)}): start LoRA Lab with --model pointing at that model",
                        duration=None,
                    )
                self._classifier = key, Classifier.load(adapter, device, model=config.base_model)
        return self._classifier[1]


def no_run_words(room_on: bool, any_finished: bool) -> str:
    """Why no model answers yet (none is chosen silently: ui.answering), and the ways out."""
    if not any_finished:
        return "No finished run yet: train one on the Train tab, or upload an adapter.safetensors file."
    which = "None of the finished runs is yours or the presenter's" if room_on else "Only runs of grids have finished"
    return f"{which}: choose one from the list, train one on the Train tab, or upload an adapter.safetensors file."
