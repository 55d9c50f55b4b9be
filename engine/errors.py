"""Error types: each message names the problem and what the user can do about it."""


class LoRALabError(Exception):
    """Base class for problems a user can fix (bad input, missing files, unreachable servers)."""


class ConfigError(LoRALabError, ValueError):
    """A setting is out of range or inconsistent with another."""


class DataError(LoRALabError, ValueError):
    """A dataset file cannot be read or does not hold what the pipeline needs."""


class DownloadError(LoRALabError, ConnectionError):
    """Every source of a download failed."""


class WeightsError(LoRALabError, ValueError):
    """A checkpoint is missing, unsafe to load, corrupt, or does not fit the model."""

    def __init__(self, message: str, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable  # the download server could not be reached: known here, so no caller probes it again


class AdapterError(LoRALabError, ValueError):
    """A saved adapter is unreadable or belongs to another base model."""


class InputError(LoRALabError, ValueError):
    """A message to classify is unusable (empty, not text)."""


class Cancelled(LoRALabError):
    """The user stopped a long operation (a download, a run); nothing half-done was kept."""


class DiskFullError(LoRALabError, OSError):
    """A save ran out of disk space; whatever it was writing was removed."""

    def __init__(self, folder: object, option: str | None = None) -> None:
        self.folder = folder
        self.option = option
        choice = f"choose another {option}" if option else "choose another folder"
        super().__init__(f"the disk is full at {folder}: free space or {choice}")


class TrainingDiverged(LoRALabError):
    """The training loss became NaN or infinite: the run cannot go on."""
