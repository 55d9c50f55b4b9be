"""The training controls of the Model & LoRA tab as one typed value, and the one function that turns
it into a RunConfig.

Start (Train tab), the rank sweep (Runs tab) and a reloaded page (which gets the last run's settings
back) all pass the same `Controls`; the widgets that hold them are a `ControlWidgets`, built on the
Model & LoRA tab and handed to the tabs that read them. Adding a control: a field in both (with `of`
and `run_config`), and its widget.
"""

from collections.abc import Sequence
from dataclasses import astuple, dataclass, fields
from typing import Any

import gradio as gr
from gradio.components import Component

from engine.config import MAX_OWNER_CHARS, LoRAConfig, RunConfig, TrainConfig, preset
from engine.data.table import clean_label
from engine.reproduce import app_controls
from ui.settings import AppSettings

# What choosing a preset sets; the model, targets and the rest stay as they are.
PRESET_FIELDS = ("rank", "alpha", "scaling", "pooling", "padding", "lr", "epochs", "batch_size", "precision")


@dataclass(frozen=True)
class Controls:
    """The Model & LoRA widgets' values, as the widgets send them (whole numbers may come as floats).

    The field order is the order of the widgets as event inputs and outputs.
    """

    model: str
    preset_name: str
    rank: float
    alpha: float
    scaling: str
    targets: Sequence[str]
    train_head: bool
    pooling: str
    padding: str
    lr: float
    epochs: float
    batch_size: float
    max_steps: float | None  # 0 or empty: no limit
    eval_freq: float
    live_metrics: bool = True
    precision: str = "auto"  # what the frozen model computes in (engine.device): auto, fp32 or bf16
    method: str = "lora"  # what trains (engine.config.METHODS); the LoRA settings apply to lora only
    early_stop: float | None = 0  # loss estimates without a lower validation loss before training ends; 0 or empty: never

    @classmethod
    def of(cls, cfg: RunConfig) -> "Controls":
        """What the widgets show for `cfg`: a reloaded page gets the current (or last) run's settings back."""
        return cls(**app_controls(cfg))  # the engine says them once: a run's record quotes them as its gradio_client call

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(field.name for field in fields(cls))

    def values(self) -> tuple[Any, ...]:
        """The values in widget order; a widget takes a list where the config holds a tuple."""
        return tuple(list(value) if isinstance(value, tuple) else value for value in astuple(self))

    def pick(self, names: Sequence[str]) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in names)


@dataclass(frozen=True)
class ControlWidgets:
    """The widgets that hold `Controls`, one per field of the same name (checked by `inputs`)."""

    model: gr.Dropdown
    preset_name: gr.Radio
    rank: gr.Slider
    alpha: gr.Number
    scaling: gr.Radio
    targets: gr.CheckboxGroup
    train_head: gr.Checkbox
    pooling: gr.Radio
    padding: gr.Radio
    lr: gr.Number
    epochs: gr.Number
    batch_size: gr.Number
    max_steps: gr.Number
    eval_freq: gr.Number
    live_metrics: gr.Checkbox
    precision: gr.Radio
    method: gr.Radio
    early_stop: gr.Number

    def pick(self, names: Sequence[str]) -> list[Component]:
        return [getattr(self, name) for name in names]

    def inputs(self) -> list[Component]:
        """Every control, in `Controls`' field order: as positional inputs, and as the outputs of a reload."""
        return self.pick(Controls.names())

    def by_name(self) -> dict[str, Component]:
        """Every control under its `Controls` field name: keyword inputs, which name the API's parameters."""
        return dict(zip(Controls.names(), self.inputs(), strict=True))


def as_int(value: Any) -> Any:
    """Widgets send whole numbers as floats; pass anything else on so the engine's validation names it."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def run_config(settings: AppSettings, controls: Controls, owner: str = "") -> RunConfig:
    """Turn the widgets' values into a validated RunConfig (ConfigError names the bad field).

    Its folder is the runs folder: the queue gives each run a folder of its own inside it.
    """
    c = controls
    base = preset(c.preset_name)
    lora = LoRAConfig(rank=as_int(c.rank), alpha=c.alpha, scaling=c.scaling, targets=tuple(c.targets or ()), train_head=bool(c.train_head))
    train = TrainConfig(
        lr=c.lr,
        weight_decay=base.train.weight_decay,
        epochs=as_int(c.epochs),
        batch_size=as_int(c.batch_size),
        eval_freq=as_int(c.eval_freq),
        eval_iter=base.train.eval_iter,
        seed=base.train.seed,
        max_steps=as_int(c.max_steps) or None,  # 0 or empty: train every epoch to the end
        pooling=c.pooling,
        padding=c.padding,
        group_by_length=c.padding == "batch",
        precision=c.precision,
        live_metrics=bool(c.live_metrics),
        early_stop=as_int(c.early_stop) or 0,  # 0 or empty: train to the end
    )
    return RunConfig(
        model=c.model,
        lora=lora,
        train=train,
        **data_settings(settings),
        out_dir=str(settings.out),
        device=settings.device,
        preset=c.preset_name,
        owner=owner_name(owner),
        method=c.method,
    )


def data_settings(settings: AppSettings) -> dict[str, Any]:
    """Where this app's runs read their data: the prepared splits in the data cache, else downloaded first into it."""
    prepared = (settings.cache / "train.csv").is_file()
    return {"data": str(settings.cache) if prepared else None, "data_urls": settings.data_urls, "data_cache": str(settings.cache)}


def owner_name(owner: object) -> str:
    """A visitor's name for their runs: plain text, one line, at most MAX_OWNER_CHARS characters, cleaned as a
    label is (no byte-order mark or zero-width space); a long one is cut before any work on it."""
    if not isinstance(owner, str):
        return ""
    return clean_label(owner[: 4 * MAX_OWNER_CHARS])[:MAX_OWNER_CHARS].rstrip()
