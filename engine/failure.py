"""Why something failed, sorted into what the user can fix and what is a bug.

Only our own error types (`LoRALabError`) are bad input; running out of memory is the user's to
fix too (a smaller model or batch); anything else is a fault in LoRA Lab or below it, logged with
its traceback and reported as an internal error. The CLI's exit status, a worker's last word and
the app's messages all come from this one sorting.
"""

import logging
from dataclasses import dataclass
from typing import Literal

from engine.errors import LoRALabError

log = logging.getLogger(__name__)

FailureKind = Literal["bad input", "out of memory", "internal", "crashed"]  # crashed: a worker process ended without a word


@dataclass(frozen=True)
class Failure:
    kind: FailureKind
    message: str  # one line: what went wrong and what to do

    @property
    def users_to_fix(self) -> bool:
        return self.kind != "internal"


def failure_of(error: BaseException, device: str, doing: str) -> Failure:
    """Sort `error` (raised on `device` while `doing`, e.g. "training"); internal errors are logged with their traceback."""
    from engine.memory import is_out_of_memory, out_of_memory_message, release_memory  # torch: only once something failed

    if isinstance(error, LoRALabError):
        return Failure("bad input", one_line(str(error)))
    if is_out_of_memory(error):
        release_memory()
        return Failure("out of memory", out_of_memory_message(device, doing))
    log.error("internal error while %s", doing, exc_info=error)
    what = f"{type(error).__name__}: {one_line(str(error))[:300]}"
    return Failure("internal", f"internal error while {doing}: {what} (a fault in LoRA Lab; the log has the details)")


# A LoRA scale (alpha, or alpha / rank) above this makes alpha the likelier cause of a diverging run
# than the learning rate: the book's is 16, alpha / rank is usually 1 or 2.
LARGE_LORA_SCALE = 64.0


def divergence_cause(lr: float, lora_scale: float | None) -> str:
    """Why a run's loss stopped being a number, most likely, and what to change (`lora_scale`: None without LoRA)."""
    if lora_scale is not None and lora_scale > LARGE_LORA_SCALE:
        return (
            f"most likely because alpha is too large: it scales every LoRA update by {lora_scale:g} (1 to 16 is usual); "
            "train again with a smaller alpha"
        )
    return f"most likely because the learning rate ({lr:g}) is too high; train again with a lower one"


def one_line(text: str) -> str:
    return " ".join(text.split())
