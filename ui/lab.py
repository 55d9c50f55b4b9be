"""The app's shared state: one per app, behind every tab's handlers and every visitor's session.

It holds the settings, the run scheduler (the queue every visitor adds to, and its workers), the
data prepared last, and the last loaded classifier (with the lock that Classify's handlers take),
and the checks several tabs make.
"""

import contextlib
import threading
from pathlib import Path

import gradio as gr

from engine.adapter import read_adapter
from engine.classifier import Classifier
from engine.data.prepared import PreparedData, load_summary
from engine.device import pick_device
from engine.runs.history import latest_adapter, settle_runs
from engine.runs.scheduler import RunView, Scheduler, workers_for
from ui.guards import deleted_if_refused, engine_errors_as_toasts, uploaded_path
from ui.settings import AppSettings


class Lab:
    """The app's shared state: the run scheduler, the data, the last classifier."""

    def __init__(self, settings: AppSettings, scheduler: Scheduler | None = None) -> None:
        self.settings = settings
        self.scheduler = scheduler or Scheduler(settings.out, workers_for(settings.workers, settings.device, settings.ray))
        self.prepared: PreparedData | None = None  # set by a download or an upload in this process
        self.download_stop = threading.Event()  # any visitor's Stop ends the download
        # Classify is its own concurrency group (limit 1); the lock also guards the cache and
        # compare_with_base's switching LoRA off and on should anyone raise that limit.
        self.classify_lock = threading.Lock()
        self._classifier: tuple[tuple[str, int, str], Classifier] | None = None  # (path, mtime, device) -> loaded
        settle_runs(settings.out)  # runs an earlier app left "running" when it was killed read as interrupted

    def close(self, timeout: float = 60.0) -> None:
        """Stop the running runs (each saves as stopped); queued runs stay queued for the next start."""
        self.scheduler.close(timeout)

    def followed(self, run_id: str | None) -> RunView | None:
        """The run a page follows: `run_id`, or the newest run to have started (else the newest queued)."""
        views = self.scheduler.views()
        if run_id:
            return next((view for view in views if view.run.id == run_id), None)
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

    def latest_adapter(self) -> Path | None:
        """The adapter of the newest complete run under the runs folder (by this app or an earlier one):
        never one of a failed or interrupted run, nor one holding NaN."""
        return latest_adapter(self.settings.out)

    def classifier_for(self, adapter_file: str | None) -> tuple[Path, Classifier]:
        """The adapter to use (an uploaded file, else the latest trained) and its loaded classifier; call under `classify_lock`."""
        if adapter_file:
            adapter = uploaded_path(adapter_file, "an adapter.safetensors file")
        else:
            adapter = self.latest_adapter()
            if adapter is None:
                raise gr.Error("No trained adapter yet: train one on the Train tab, or load an adapter.safetensors file above.")
        return adapter, self.classifier_at(adapter, uploaded=bool(adapter_file))

    def classifier_at(self, adapter: Path, uploaded: bool = False) -> Classifier:
        """The classifier of the adapter at `adapter` (a run's folder, or an `uploaded` file, deleted if refused),
        loaded once and kept until another is asked for; call under `classify_lock`."""
        device = pick_device(self.settings.device)
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
