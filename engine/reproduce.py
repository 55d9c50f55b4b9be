"""How to run a run again: its `python -m engine train` command line, and the same settings queued
through the app's API with gradio_client.

Both are written into the run's record when it starts (engine/runs/record.py). The command line says
every setting that differs from its preset with the options of `train` (engine/cli.py), so parsing
it back gives the same RunConfig (tests/test_reproduce.py holds that). The app's Start takes the
settings of the Model & LoRA tab by name (`app_controls`, which ui/controls.py reads too); its data,
folder and device are the app's own.
"""

import shlex
from typing import Any

from engine.config import BASELINE_METHOD, DATA_CACHE, PRESET_CONFIGS, RunConfig
from engine.data.prepared import SOURCES
from engine.errors import ConfigError

TRAIN = ("python", "-m", "engine", "train")
BASELINE = ("python", "-m", "engine", "baseline")
APP_URL = "http://127.0.0.1:7860/"  # the app's own default address; the call names it so it can be changed


def app_controls(cfg: RunConfig) -> dict[str, Any]:
    """The Model & LoRA controls that give `cfg`'s settings, by the names the app's Start takes."""
    lora, train = cfg.lora, cfg.train
    return {
        "model": cfg.model,
        "preset_name": cfg.preset or "recommended",
        "rank": lora.rank,
        "alpha": float(lora.alpha),
        "scaling": lora.scaling,
        "targets": list(lora.targets),
        "train_head": lora.train_head,
        "pooling": train.pooling,
        "padding": train.padding,
        "lr": train.lr,
        "epochs": train.epochs,
        "batch_size": train.batch_size,
        "max_steps": train.max_steps or 0,  # 0: no limit
        "eval_freq": train.eval_freq,
        "early_stop": train.early_stop,
        "live_metrics": train.live_metrics,
        "precision": train.precision,
        "method": cfg.method,
    }


def _unsayable(cfg: RunConfig) -> list[str]:
    """The settings of `cfg` that neither `train`'s options nor its preset give (none, for a run the CLI or the app made)."""
    chosen = PRESET_CONFIGS.get(cfg.preset or "")
    if chosen is None:
        return [f"preset {cfg.preset!r}"]
    problems = [
        f"{name} {getattr(cfg.train, name)!r}"
        for name in ("weight_decay", "eval_iter")
        if getattr(cfg.train, name) != getattr(chosen.train, name)
    ]
    if cfg.train.group_by_length != (cfg.train.padding == "batch"):
        problems.append(f"group_by_length {cfg.train.group_by_length!r} with padding {cfg.train.padding!r}")
    problems += [f"{name} {getattr(cfg, name)!r}" for name in ("parse", "draws") if getattr(cfg, name) != getattr(chosen, name)]
    return problems


def train_arguments(cfg: RunConfig) -> list[str]:
    """The arguments of `python -m engine train` that run `cfg`: the preset, then each setting that differs from it.

    Raises:
        ConfigError: a setting `train` has no option for (named).
    """
    problems = _unsayable(cfg)
    if problems:
        raise ConfigError("no command line gives this run: `train` has no option for " + ", ".join(problems))
    preset = PRESET_CONFIGS[cfg.preset]  # type: ignore[index]
    lora, train = cfg.lora, cfg.train
    args = ["--preset", str(cfg.preset), "--model", cfg.model]
    if cfg.data is not None:
        args += ["--data", cfg.data]
    elif cfg.data_urls not in (None, SOURCES):  # the default sources are where `train` downloads from anyway
        args += ["--data-urls", *cfg.data_urls]
    if cfg.data_cache != DATA_CACHE:
        args += ["--cache", cfg.data_cache]
    if cfg.deduplicate:
        args.append("--dedupe")
    if cfg.method != "lora":
        args += ["--method", cfg.method]
    for option, value, default in (
        ("--rank", lora.rank, preset.lora.rank),
        ("--alpha", lora.alpha, preset.lora.alpha),
        ("--scaling", lora.scaling, preset.lora.scaling),
        ("--lr", train.lr, preset.train.lr),
        ("--epochs", train.epochs, preset.train.epochs),
        ("--batch-size", train.batch_size, preset.train.batch_size),
        ("--eval-freq", train.eval_freq, preset.train.eval_freq),
        ("--early-stop", train.early_stop, preset.train.early_stop),
        ("--seed", train.seed, preset.train.seed),
        ("--pooling", train.pooling, preset.train.pooling),
        ("--padding", train.padding, preset.train.padding),
        ("--precision", train.precision, preset.train.precision),
    ):
        if value != default:
            args += [option, f"{value:g}" if isinstance(value, float) else str(value)]
    if lora.targets != preset.lora.targets:
        args += ["--targets", *lora.targets]
    if lora.train_head:
        args.append("--train-head")
    if train.max_steps is not None:
        args += ["--max-steps", str(train.max_steps)]
    if not train.live_metrics:
        args.append("--no-live-metrics")
    if cfg.device != "auto":
        args += ["--device", cfg.device]
    if cfg.owner:
        args += ["--owner", cfg.owner]
    return args + ["--out", cfg.out_dir]


def train_command(cfg: RunConfig) -> str:
    """The shell command that runs `cfg` again (quoted for a POSIX shell)."""
    return shlex.join([*TRAIN, *train_arguments(cfg)])


def client_call(cfg: RunConfig, url: str = APP_URL) -> str:
    """Python that queues `cfg`'s settings in a running LoRA Lab app through its API (the Train tab's Start;
    a seed other than the preset's goes through the Runs tab's grid, as a grid of one run)."""
    controls = app_controls(cfg)
    arguments = "".join(f"    {name}={value!r},\n" for name, value in controls.items())
    owner = f"    owner={cfg.owner!r},\n" if cfg.owner else ""
    preset = PRESET_CONFIGS.get(cfg.preset or "")
    if preset is not None and cfg.train.seed != preset.train.seed:
        grid = f"    ranks=[], alphas='', scalings=[], lrs='', presets=[], layers=[], seeds={str(cfg.train.seed)!r},\n"
        call = f"client.predict(\n{grid}{arguments}{owner}    api_name='/add_grid',\n)"
    else:
        call = f"client.predict(\n{arguments}{owner}    api_name='/start',\n)"
    return f"from gradio_client import Client\n\nclient = Client({url!r})\n{call}\n"


def baseline_command(cfg: RunConfig) -> str:
    """The shell command that fits the classical baseline of `cfg` again, into a new folder beside its own."""
    args = ["--preset", str(cfg.preset or "recommended")]
    if cfg.data is not None:
        args += ["--data", cfg.data]
    elif cfg.data_urls not in (None, SOURCES):
        args += ["--data-urls", *cfg.data_urls]
    if cfg.data_cache != DATA_CACHE:
        args += ["--cache", cfg.data_cache]
    if cfg.deduplicate:
        args.append("--dedupe")
    parent = cfg.out_dir.rstrip("/").rpartition("/")[0] or "."
    return shlex.join([*BASELINE, *args, "--out", parent])


def reproduction(cfg: RunConfig) -> dict[str, str | None]:
    """What a run's record keeps: its command line (or why there is none) and its gradio_client call (none for the baseline)."""
    if cfg.method == BASELINE_METHOD:
        return {"command": baseline_command(cfg), "command_problem": None, "client": None}
    try:
        command, reason = train_command(cfg), None
    except ConfigError as error:
        command, reason = None, str(error)
    return {"command": command, "command_problem": reason, "client": client_call(cfg)}
