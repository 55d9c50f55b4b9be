"""Out-of-memory failures: recognise them (device or host) and say what to change.

PyTorch reports a full GPU as `torch.OutOfMemoryError`, other backends as a RuntimeError whose
message says "out of memory", and the host as MemoryError; all three mean the same to a user.
"""

import gc

import torch

ADVICE = "choose a smaller model size or a smaller batch size (or fewer LoRA layers), or use a device with more memory"


def is_out_of_memory(error: BaseException) -> bool:
    """True for torch.OutOfMemoryError, MemoryError and RuntimeErrors that say "out of memory"."""
    if isinstance(error, (MemoryError, torch.OutOfMemoryError)):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def out_of_memory_message(device: str, doing: str) -> str:
    """e.g. "out of memory on cuda while training: choose a smaller model size ..."."""
    return f"out of memory on {device} while {doing}: {ADVICE}"


def release_memory() -> None:
    """Return what a failed step left behind, so the next action has the memory again."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
