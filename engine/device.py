"""Device selection: CUDA, then Apple MPS, then CPU, unless the caller names one."""

import torch

from engine.errors import ConfigError


def pick_device(name: str = "auto") -> torch.device:
    """Resolve a device name ("auto", "cpu", "cuda", "cuda:1", "mps") to a usable torch.device.

    Raises:
        ConfigError: the named device is not available on this machine.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ConfigError(f"unknown device {name!r}: use auto, cpu, cuda or mps") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but no CUDA GPU is available: use --device auto or cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device 'mps' requested but Apple MPS is not available: use --device auto or cpu")
    return device
