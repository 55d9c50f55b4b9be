"""What the command line decides for the app; the UI never changes it."""

from dataclasses import dataclass
from pathlib import Path

from engine.config import DATA_CACHE, DEFAULT_MODEL, GPT2_SIZES, RUNS_DIR
from engine.data.prepared import SOURCES
from ui.room import DEFAULT_MAX_WAITING_PER_VISITOR

# Gradio refuses bigger uploads. The largest adapter the controls can make (gpt2-xl, rank 64, every
# layer) is 354 MB; the data files are held to the engine's own, smaller limit.
MAX_UPLOAD_MB = 400
# The uploads kept at once (all visitors together): a new upload that would pass this is refused.
# Uploads are deleted UPLOAD_LIFETIME_S after they arrive (checked every UPLOAD_SWEEP_S), refused
# ones at once, and all of them when the app stops.
UPLOAD_SPACE_MB = 1000
UPLOAD_LIFETIME_S = 3600
UPLOAD_SWEEP_S = 300
# Files too are bounded: per upload request (the page sends one), and held at once (all visitors together).
MAX_FILES_PER_UPLOAD = 10
MAX_HELD_UPLOADS = 1000


@dataclass(frozen=True)
class AppSettings:
    """What the command line decides; the UI never changes these."""

    model: str = DEFAULT_MODEL  # the model selected at start: a size name or a local folder
    device: str = "auto"
    out: Path = Path(RUNS_DIR)  # each run writes into out/<date-time>
    cache: Path = Path(DATA_CACHE)  # downloaded zip and the prepared train/validation/test CSVs
    data_urls: tuple[str, ...] = SOURCES  # where Download fetches the SMS data from, in order
    max_upload_mb: int = MAX_UPLOAD_MB  # Gradio refuses larger uploads
    workers: int | None = None  # runs at once; None: one per CUDA GPU, otherwise one (on Ray: see RayWorkers)
    ray: str | None = None  # a Ray cluster's address (or "auto") to run on instead of this machine
    upload_space_mb: int = UPLOAD_SPACE_MB  # the uploads kept at once, all visitors together
    app_device: str = "cpu"  # where the web process runs the model (Classify, the weights check): never a worker's GPU unless told
    room: bool = False  # room mode (ui.room): each visitor acts on their own runs, the presenter on all
    presenter_token: str | None = None  # the presenter link's secret (None: a random one per start)
    max_waiting_per_visitor: int = DEFAULT_MAX_WAITING_PER_VISITOR  # in a room; the presenter may change it from the page

    @property
    def models(self) -> tuple[str, ...]:
        """The models a visitor may choose: the four sizes, plus the folder given with --model."""
        return tuple(GPT2_SIZES) + (() if self.model in GPT2_SIZES else (self.model,))
