"""Devices and precision: which accelerators this machine has, which one a name means, and the
precision a run computes its frozen products in.

The facts (how many CUDA GPUs, whether they and Apple's MPS do bf16) come two ways: `local_facts`
asks PyTorch in this process, which a run's own process does anyway; `probed_facts` asks a short
subprocess (`python -m engine.device`) once, so that a process that only hands work out (the web
app, the scheduler) never initialises CUDA itself, and never holds memory on a GPU a worker trains
on. PyTorch is imported only inside the functions that need it.

Precision: "fp32" computes everything in float32 (TF32 for matrix products on CUDA, see
`prepare_device`); "bf16" stores the frozen base's Linear weights in bfloat16 once and computes
their products in it, while LoRA's parameters, their gradients and the optimiser state stay float32;
"auto" is bf16 where the device does it natively (CUDA GPUs with bf16, Apple MPS where it works) and
fp32 elsewhere: on a CPU without bf16 instructions it is slower, not faster.
"""

import functools
import json
import os
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from engine.config import PRECISIONS
from engine.errors import ConfigError

if TYPE_CHECKING:
    import torch

Resolved = Literal["fp32", "bf16"]
PROBE_TIMEOUT_S = 120.0  # importing PyTorch and asking the driver: seconds, on a loaded machine tens
PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)  # where the probe imports `engine` from


@dataclass(frozen=True)
class DeviceFacts:
    """What accelerators this machine offers PyTorch."""

    cuda_count: int = 0
    cuda_bf16: bool = False  # the first visible CUDA GPU does bf16 (Ampere and later); a worker sees only its own
    cuda_names: tuple[str, ...] = ()
    mps: bool = False
    mps_bf16: bool = False

    @property
    def gpus(self) -> int:
        """Accelerators a worker can have to itself: the CUDA GPUs, or Apple's one MPS device."""
        return self.cuda_count or int(self.mps)


def _ask_pytorch() -> DeviceFacts:
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    mps = torch.backends.mps.is_available()
    return DeviceFacts(
        cuda_count=count,
        cuda_bf16=count > 0 and torch.cuda.is_bf16_supported(including_emulation=False),
        cuda_names=tuple(torch.cuda.get_device_name(i) for i in range(count)),
        mps=mps,
        mps_bf16=mps and _mps_does_bf16(),
    )


def _mps_does_bf16() -> bool:
    """bf16 on MPS needs a recent macOS: one tiny product says whether it works here."""
    import torch

    try:
        ones = torch.ones(2, 2, device="mps", dtype=torch.bfloat16)
        return bool((ones @ ones).float().sum().item() == 8.0)
    except (RuntimeError, TypeError):
        return False


@functools.cache
def local_facts() -> DeviceFacts:
    """The devices as PyTorch sees them from this process (which initialises CUDA here, if there is one)."""
    return _ask_pytorch()


@functools.cache
def probed_facts() -> DeviceFacts:
    """The devices as a short subprocess sees them, asked once: this process neither imports PyTorch
    nor initialises CUDA. A probe that fails reports no accelerator (runs then go to the CPU)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [PACKAGE_ROOT, os.environ.get("PYTHONPATH")]))}
    try:
        done = subprocess.run([sys.executable, "-m", "engine.device"], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, check=True, env=env)
        facts = json.loads(done.stdout.strip().splitlines()[-1])
        return DeviceFacts(**{**facts, "cuda_names": tuple(facts.get("cuda_names", ()))})
    except (OSError, subprocess.SubprocessError, ValueError, IndexError, TypeError):
        return DeviceFacts()


def device_kind(name: str, facts: DeviceFacts) -> str:
    """The device a name means on a machine with `facts`: "auto" becomes CUDA, then MPS, then the CPU;
    a named one ("cpu", "cuda", "cuda:1", "mps") comes back as given once it is known to be there.

    Raises:
        ConfigError: an unknown name, or a device this machine lacks.
    """
    if name == "auto":
        return "cuda" if facts.cuda_count else "mps" if facts.mps else "cpu"
    kind, _, index = str(name).partition(":")
    if kind not in ("cpu", "cuda", "mps") or (index and (kind != "cuda" or not index.isdigit())):
        raise ConfigError(f"unknown device {name!r}: use auto, cpu, cuda (or cuda:N) or mps")
    if kind == "cuda" and not facts.cuda_count:
        raise ConfigError(f"device {name!r} requested but no CUDA GPU is available: use --device auto or cpu")
    if kind == "cuda" and index and int(index) >= facts.cuda_count:
        raise ConfigError(f"device {name!r} requested but this machine has {facts.cuda_count} CUDA GPU(s), cuda:0 to cuda:{facts.cuda_count - 1}")
    if kind == "mps" and not facts.mps:
        raise ConfigError(f"device {name!r} requested but Apple MPS is not available: use --device auto or cpu")
    return name


def check_device(name: str) -> str:
    """`device_kind` from the probe: for processes that hand the work to others (see `probed_facts`)."""
    return device_kind(name, probed_facts())


def pick_device(name: str = "auto") -> "torch.device":
    """Resolve a device name ("auto", "cpu", "cuda", "cuda:1", "mps") to a usable torch.device.

    Raises:
        ConfigError: the named device is not available on this machine.
    """
    import torch

    if name == "cpu":  # asks nothing of CUDA: a process kept to the CPU never initialises it
        return torch.device("cpu")
    return torch.device(device_kind(name, local_facts()))


def resolve_precision(requested: str, device: str, facts: DeviceFacts) -> Resolved:
    """The precision a run on `device` (a resolved name: "cpu", "cuda:1", ...) computes in.

    Raises:
        ConfigError: an unknown precision, or bf16 asked of a GPU without it.
    """
    if requested not in PRECISIONS:
        raise ConfigError(f"unknown precision {requested!r}: use {', '.join(PRECISIONS)}")
    kind = str(device).partition(":")[0]
    native = (kind == "cuda" and facts.cuda_bf16) or (kind == "mps" and facts.mps_bf16)
    if requested == "auto":
        return "bf16" if native else "fp32"
    if requested == "bf16" and kind in ("cuda", "mps") and not native:
        raise ConfigError(f"this {kind.upper()} device does not compute in bf16: use --precision fp32 (or auto)")
    return requested  # type: ignore[return-value]


def precision_for(requested: str, device: "torch.device") -> Resolved:
    """`resolve_precision` for a device of this process."""
    return resolve_precision(requested, str(device), local_facts() if device.type != "cpu" else DeviceFacts())


def dtype_of(precision: Resolved) -> "torch.dtype":
    """The dtype the frozen products are stored and computed in."""
    import torch

    return torch.bfloat16 if precision == "bf16" else torch.float32


def prepare_device(device: "torch.device") -> None:
    """Process-wide settings for computing on `device`: on CUDA, float32 matrix products through
    TF32 tensor cores (10-bit mantissa inputs, float32 accumulation; what fp32 means on a GPU)."""
    import torch

    if device.type == "cuda":
        torch.backends.cuda.matmul.fp32_precision = "tf32"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f", {os.cpu_count()} cores"
    except OSError:
        pass
    return (platform.processor() or "cpu") + f", {os.cpu_count()} cores"


def main() -> int:
    """`python -m engine.device`: this machine's devices as one JSON line (what `probed_facts` reads)."""
    print(json.dumps(asdict(_ask_pytorch())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
