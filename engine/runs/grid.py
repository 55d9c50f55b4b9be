"""A grid of runs: every combination of chosen values of a few settings, from one base run.

5 ranks x 2 alphas x 3 seeds is 30 runs; each is named by the values that vary
("rank4-alpha16-seed1"), which is also its folder inside the grid's folder. A preset, when it
varies, is applied first (it sets rank, alpha, scaling, learning rate, padding and reading), then
the other varied settings override it.
"""

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

from engine.config import TARGET_SETS, RunConfig, preset, target_set_name
from engine.errors import ConfigError

MAX_GRID_RUNS = 100  # a grid larger than this is refused: split it, or queue it in parts


@dataclass(frozen=True)
class Grid:
    """The values to try per setting; an empty tuple keeps the base run's value."""

    rank: tuple[int, ...] = ()
    alpha: tuple[float, ...] = ()
    scaling: tuple[str, ...] = ()
    lr: tuple[float, ...] = ()
    preset: tuple[str, ...] = ()
    targets: tuple[tuple[str, ...], ...] = ()
    seed: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        repeated = [f.name for f in fields(self) if len(set(getattr(self, f.name))) != len(getattr(self, f.name))]
        if repeated:
            raise ConfigError(f"the grid repeats a value of {', '.join(repeated)}: give each value once")

    @property
    def varied(self) -> tuple[str, ...]:
        """The settings with values to try, in the order runs are named by."""
        return tuple(f.name for f in fields(self) if getattr(self, f.name))

    @property
    def size(self) -> int:
        size = 1
        for name in self.varied:
            size *= len(getattr(self, name))
        return size

    def expand(self, base: RunConfig, max_runs: int = MAX_GRID_RUNS) -> list[tuple[str, RunConfig]]:
        """(label, config) of every run, in order; each config is validated as any run's.

        Raises:
            ConfigError: more than `max_runs` runs, no setting varies, or a combination is invalid.
        """
        if not self.varied:
            raise ConfigError("the grid varies no setting: choose at least one value to try")
        if self.size > max_runs:
            sizes = " x ".join(f"{len(getattr(self, name))} {name}" for name in self.varied)
            raise ConfigError(f"the grid makes {self.size} runs ({sizes}), more than the {max_runs} one grid may hold: choose fewer values")
        runs = []
        for values in itertools.product(*(getattr(self, name) for name in self.varied)):
            chosen = dict(zip(self.varied, values, strict=True))
            runs.append((run_label(chosen), configure(base, chosen)))
        return runs


def configure(base: RunConfig, chosen: dict[str, Any]) -> RunConfig:
    """`base` with the chosen values of one grid point."""
    cfg = base
    if "preset" in chosen:
        settings = preset(chosen["preset"])
        lora = replace(settings.lora, targets=cfg.lora.targets, train_head=cfg.lora.train_head)
        kept = {name: getattr(base.train, name) for name in ("seed", "max_steps", "epochs", "eval_freq", "live_metrics")}  # not the preset's to set
        # parse and draws None: the new preset's (see RunConfig)
        cfg = replace(cfg, preset=chosen["preset"], parse=None, draws=None, lora=lora, train=replace(settings.train, **kept))
    lora = {key: chosen[key] for key in ("rank", "alpha", "scaling", "targets") if key in chosen}
    train = {key: chosen[key] for key in ("lr", "seed") if key in chosen}
    return replace(cfg, lora=replace(cfg.lora, **lora), train=replace(cfg.train, **train))


def run_label(chosen: dict[str, Any]) -> str:
    """A folder-safe name from the chosen values: "rank4-alpha16-seed1"."""
    return "-".join(f"{name}{value_label(name, value)}" for name, value in chosen.items())


def value_label(name: str, value: Any) -> str:
    if name == "targets":
        return "-" + (target_set_name(value) or "+".join(layer.rsplit(".", 1)[-1].removesuffix("_proj") for layer in value))
    if name in ("scaling", "preset"):
        return f"-{value}"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def targets_named(names: Sequence[str]) -> tuple[tuple[str, ...], ...]:
    """Layer sets by their TARGET_SETS names.

    Raises:
        ConfigError: an unknown name.
    """
    unknown = [name for name in names if name not in TARGET_SETS]
    if unknown:
        raise ConfigError(f"unknown layer set {unknown[0]!r}: choose from {', '.join(TARGET_SETS)}")
    return tuple(TARGET_SETS[name] for name in names)
