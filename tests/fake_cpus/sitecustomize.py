"""Pretend this machine has LORA_LAB_FAKE_CPUS cores, to check that tests hold on bigger machines.

    PYTHONPATH=tests/fake_cpus LORA_LAB_FAKE_CPUS=8 python -m pytest -m "not slow"

Python imports `sitecustomize` at start-up from the path, so every process of the run (pytest, and
the worker processes it starts, which inherit PYTHONPATH) sees the same cores: `os.cpu_count`,
`os.sched_getaffinity` and `os.process_cpu_count` report the fake ones, and pinning to a fake core
pins to the real core it folds onto, so nothing fails for want of the core.
"""

import os

_FAKE = int(os.environ.get("LORA_LAB_FAKE_CPUS") or 0)

if _FAKE > 0 and hasattr(os, "sched_getaffinity"):
    _real_count = len(os.sched_getaffinity(0))
    _real_setaffinity = os.sched_setaffinity
    os.cpu_count = lambda: _FAKE
    os.process_cpu_count = lambda: _FAKE
    os.sched_getaffinity = lambda pid: set(range(_FAKE))
    os.sched_setaffinity = lambda pid, cores: _real_setaffinity(pid, {core % _real_count for core in cores})
