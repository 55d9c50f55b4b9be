"""Frozen, validated configuration: model sizes, LoRA, data, training, and the two presets."""

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal, get_args

from engine.errors import ConfigError

Pooling = Literal["last", "last_token"]
Padding = Literal["longest", "batch"]
Scaling = Literal["alpha", "alpha_over_rank"]
Parse = Literal["faithful", "book"]
Draws = Literal["book", "independent"]
# What the frozen base computes in: bf16 where the device does it natively, else fp32 (engine/device.py).
Precision = Literal["auto", "fp32", "bf16"]
ExportFormat = Literal["peft", "transformers"]  # what `export` writes: a PEFT adapter, or a whole transformers model
# What a run trains: LoRA's A and B (and the head); the last block, final norm and head (the book's chapter 6); or everything.
Method = Literal["lora", "last-block", "full"]

# The same choices as values, for menus and validation.
POOLINGS: tuple[str, ...] = get_args(Pooling)
PADDINGS: tuple[str, ...] = get_args(Padding)
SCALINGS: tuple[str, ...] = get_args(Scaling)
PARSES: tuple[str, ...] = get_args(Parse)
DRAWS: tuple[str, ...] = get_args(Draws)
PRECISIONS: tuple[str, ...] = get_args(Precision)
EXPORT_FORMATS: tuple[str, ...] = get_args(ExportFormat)
METHODS: tuple[str, ...] = get_args(Method)
# The classical baseline (`python -m engine baseline`): no GPT-2 at all; its run record says this method.
BASELINE_METHOD = "tfidf-logreg"

DEFAULT_SEED = 123  # the book's seed: its balancing, split, head and LoRA draws, batch order
DATA_CACHE = "data_cache"  # where downloaded data and the prepared splits go unless told otherwise
CALIBRATION_NAME = "calibration.json"  # in the data cache: how fast this machine trains each model shape (engine/calibration.py)

# Every Linear of the classifier, by module-name suffix; the book wraps all of them.
LORA_TARGETS: tuple[str, ...] = (
    "attn.q_proj",
    "attn.k_proj",
    "attn.v_proj",
    "attn.c_proj",
    "mlp.c_fc",
    "mlp.c_proj",
    "score",
)

# Layer sets offered by name (the grid, the app, `sweep --targets`); any tuple of LORA_TARGETS is accepted too.
TARGET_SETS: dict[str, tuple[str, ...]] = {
    "all": LORA_TARGETS,
    "attention": ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.c_proj"),
    "query-value": ("attn.q_proj", "attn.v_proj"),
    "mlp": ("mlp.c_fc", "mlp.c_proj"),
}

LABELS: tuple[str, ...] = ("ham", "spam")

DEFAULT_MODEL = "gpt2-small"  # the book's model: what the app and every command start with
RUNS_DIR = "runs"  # where runs are kept unless told otherwise

# The most classes a dataset or an adapter may have: far more than any message-classification demo
# needs, few enough that every table, plot and head stays small.
MAX_CLASSES = 50
# The longest class name (a label in the data, or in an adapter): a name, not a message.
MAX_LABEL_CHARS = 100

# The learning rates a run accepts. AdamW moves each weight by about the learning rate per step, so
# far above 0.1 training only diverges (a loss that is no longer finite stops the run anyway).
MIN_LR = 1e-7
MAX_LR = 0.1
LR_RANGE = f"{MIN_LR:g} to {MAX_LR:g}".replace("e-0", "e-")  # "1e-7 to 0.1", as messages and the widget say it

# The other numbers a run accepts: each is bounded where it enters (a widget, a script, the command
# line, queue.json), so nothing outside 64-bit or JSON-safe ranges ever reaches a worker, the queue or a
# page. The bounds are far beyond any sensible run; the seed's is what every generator it seeds takes.
MAX_RANK = 2048  # wider than any GPT-2 layer (gpt2-xl: 1600); a rank wider than its layer is refused later, by the model's shapes
MAX_ALPHA = 10_000.0
MAX_SEED = 2**32 - 1  # numpy's and pandas' limit (the data split); torch takes it too
MAX_EPOCHS = 1000
MAX_BATCH_SIZE = 4096
MAX_STEPS = 10_000_000
MAX_EVAL_FREQ = 10_000_000
MAX_EVAL_ITER = 10_000
MAX_WEIGHT_DECAY = 10.0
MAX_EARLY_STOP = 10_000  # loss estimates without improvement before a run stops early
MAX_OWNER_CHARS = 60  # the name shown beside a run


def target_set_name(targets: tuple[str, ...] | list[str]) -> str | None:
    """The TARGET_SETS name of these layers, if they are one of the named sets."""
    return next((name for name, layers in TARGET_SETS.items() if tuple(layers) == tuple(targets)), None)


def shown(value: object) -> str:
    """A value as a message quotes it: its repr, cut short (a huge number's repr can even refuse to be made)."""
    try:
        text = repr(value)
    except ValueError:
        return "a number too long to show"
    return text if len(text) <= 40 else text[:37] + "..."


def whole_number_problem(name: str, value: object, low: int, high: int) -> str | None:
    """Why `value` is not a whole number from `low` to `high` (None when it is): the message names the range."""
    if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
        return None
    return f"{name} must be a whole number from {low:,} to {high:,}, got {shown(value)}"


def number_problem(name: str, value: object, low: float, high: float, above_low: bool = False) -> str | None:
    """Why `value` is not a finite number in its range (None when it is): above `low` (or from it) and at most `high`."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if number and (value > low if above_low else value >= low) and value <= high:  # type: ignore[operator]
        return None
    bounds = f"above {low:,g} and at most {high:,g}" if above_low else f"from {low:,g} to {high:,g}"
    return f"{name} must be a number {bounds}, got {shown(value)}"


def _raise_if(problems: list[str | None], what: str) -> None:
    problems = [problem for problem in problems if problem]
    if problems:
        raise ConfigError(f"invalid {what}: " + "; ".join(problems))


@dataclass(frozen=True)
class GPTConfig:
    """Shape of a GPT-2 model; the four published sizes are in GPT2_SIZES."""

    name: str = DEFAULT_MODEL  # size name, or a label for a local checkpoint
    vocab_size: int = 50257
    context_length: int = 1024  # learned position embeddings: the hard limit on tokens
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        problems = [
            f"{name} must be a positive integer, got {value!r}"
            for name, value in (
                ("vocab_size", self.vocab_size),
                ("context_length", self.context_length),
                ("n_embd", self.n_embd),
                ("n_layer", self.n_layer),
                ("n_head", self.n_head),
            )
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0
        ]
        if not problems and self.n_embd % self.n_head:
            problems.append(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        _raise_if(problems, "model config")

    def to_hf(self) -> dict[str, Any]:
        """The Hugging Face GPT-2 `config.json` dictionary of this shape (what `from_hf` reads)."""
        return {
            "model_type": "gpt2",
            "activation_function": "gelu_new",
            "vocab_size": self.vocab_size,
            "n_positions": self.context_length,
            "n_embd": self.n_embd,
            "n_layer": self.n_layer,
            "n_head": self.n_head,
            "layer_norm_epsilon": self.layer_norm_eps,
        }

    @classmethod
    def from_hf(cls, hf: dict[str, Any], name: str) -> "GPTConfig":
        """Read a Hugging Face GPT-2 `config.json` dictionary."""
        activation = hf.get("activation_function", "gelu_new")
        if hf.get("model_type", "gpt2") != "gpt2" or activation not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ConfigError(
                f"{name}: only GPT-2 checkpoints are supported (model_type gpt2, tanh GELU), "
                f"got model_type={hf.get('model_type')!r}, activation_function={activation!r}"
            )
        try:
            return cls(
                name=name,
                vocab_size=int(hf["vocab_size"]),
                context_length=int(hf["n_positions"]),
                n_embd=int(hf["n_embd"]),
                n_layer=int(hf["n_layer"]),
                n_head=int(hf["n_head"]),
                layer_norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
            )
        except KeyError as missing:
            raise ConfigError(f"{name}: config.json lacks the field {missing}") from None


GPT2_SIZES: dict[str, GPTConfig] = {
    "gpt2-small": GPTConfig("gpt2-small", n_embd=768, n_layer=12, n_head=12),
    "gpt2-medium": GPTConfig("gpt2-medium", n_embd=1024, n_layer=24, n_head=16),
    "gpt2-large": GPTConfig("gpt2-large", n_embd=1280, n_layer=36, n_head=20),
    "gpt2-xl": GPTConfig("gpt2-xl", n_embd=1600, n_layer=48, n_head=25),
}

# Hugging Face repositories holding each size's `model.safetensors`.
HF_REPOS: dict[str, str] = {
    "gpt2-small": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
}


@dataclass(frozen=True)
class LoRAConfig:
    """Where LoRA goes and how strong it is."""

    rank: int = 16
    alpha: float = 16.0
    scaling: Scaling = "alpha_over_rank"  # "alpha": the book; "alpha_over_rank": Hu et al., PEFT
    targets: tuple[str, ...] = LORA_TARGETS  # module-name suffixes, see LORA_TARGETS
    train_head: bool = False  # also train the 2-class head's own weights (else only its LoRA)

    def __post_init__(self) -> None:
        problems = [whole_number_problem("rank", self.rank, 1, MAX_RANK), number_problem("alpha", self.alpha, 0, MAX_ALPHA, above_low=True)]
        if self.scaling not in SCALINGS:
            problems.append(f"scaling must be one of {', '.join(SCALINGS)}, got {shown(self.scaling)}")
        unknown = [t for t in self.targets if t not in LORA_TARGETS]
        if unknown:
            problems.append(f"unknown targets {shown(unknown)}: choose from {', '.join(LORA_TARGETS)}")
        if not self.targets:
            problems.append("targets is empty: choose at least one of " + ", ".join(LORA_TARGETS))
        _raise_if(problems, "LoRA settings")

    @property
    def scale(self) -> float:
        """The factor applied to the low-rank update B·A."""
        return self.alpha if self.scaling == "alpha" else self.alpha / self.rank


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser, schedule, and how batches are formed and read."""

    lr: float = 8e-4
    weight_decay: float = 0.1
    epochs: int = 5
    batch_size: int = 8
    eval_freq: int = 50  # optimiser steps between train/validation loss estimates
    eval_iter: int = 5  # batches per loss/accuracy estimate during training
    seed: int = DEFAULT_SEED
    max_steps: int | None = None  # stop early after this many optimiser steps
    pooling: Pooling = "last_token"  # which position's logits classify the message
    padding: Padding = "batch"  # "longest": pad all to the longest training message
    group_by_length: bool = True  # batch messages of similar length (only with "batch" padding)
    # auto: the frozen base in bf16 on GPUs that compute in it (LoRA and the optimiser stay fp32), else fp32
    precision: Precision = "auto"
    # At each loss estimate, also the confusion matrix and precision/recall/F1 on the full validation
    # set (one pass over it; its first eval_iter batches still give the book's validation loss).
    live_metrics: bool = True
    # Stop once this many loss estimates in a row bring no lower validation loss (0: never, train to the end).
    early_stop: int = 0

    def __post_init__(self) -> None:
        problems: list[str | None] = []
        if not isinstance(self.lr, (int, float)) or isinstance(self.lr, bool) or not MIN_LR <= self.lr <= MAX_LR:
            problems.append(f"learning rate must be from {LR_RANGE}, got {shown(self.lr)}")
        problems += [
            number_problem("weight decay", self.weight_decay, 0, MAX_WEIGHT_DECAY),
            whole_number_problem("epochs", self.epochs, 1, MAX_EPOCHS),
            whole_number_problem("batch_size", self.batch_size, 1, MAX_BATCH_SIZE),
            whole_number_problem("eval_freq", self.eval_freq, 1, MAX_EVAL_FREQ),
            whole_number_problem("eval_iter", self.eval_iter, 1, MAX_EVAL_ITER),
            whole_number_problem("seed", self.seed, 0, MAX_SEED),
            whole_number_problem("early_stop", self.early_stop, 0, MAX_EARLY_STOP),
        ]
        if self.max_steps is not None:
            problems.append(whole_number_problem("max_steps", self.max_steps, 1, MAX_STEPS))
        if self.pooling not in POOLINGS:
            problems.append(f"pooling must be one of {', '.join(POOLINGS)}, got {shown(self.pooling)}")
        if self.padding not in PADDINGS:
            problems.append(f"padding must be one of {', '.join(PADDINGS)}, got {shown(self.padding)}")
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {', '.join(PRECISIONS)}, got {shown(self.precision)}")
        if not isinstance(self.live_metrics, bool):
            problems.append(f"live_metrics must be true or false, got {shown(self.live_metrics)}")
        _raise_if(problems, "training settings")


@dataclass(frozen=True)
class Preset:
    lora: LoRAConfig
    train: TrainConfig
    parse: Parse = "faithful"  # how the SMS file is read (see RunConfig.parse)
    draws: Draws = "independent"  # the order of the run's random draws (see RunConfig.draws)


PRESET_CONFIGS: dict[str, Preset] = {
    # The book's appendix E exactly: alpha scaling, small lr, everything padded to 120, last position.
    "book": Preset(
        LoRAConfig(rank=16, alpha=16, scaling="alpha"),
        TrainConfig(lr=5e-5, weight_decay=0.1, epochs=5, batch_size=8, pooling="last", padding="longest", group_by_length=False, precision="fp32"),
        parse="book",
        draws="book",
    ),
    # The reference repository's later settings plus reading the last real token and
    # length-grouped batches: same accuracy, a fraction of the compute.
    "recommended": Preset(
        LoRAConfig(rank=16, alpha=16, scaling="alpha_over_rank"),
        TrainConfig(lr=8e-4, weight_decay=0.1, epochs=5, batch_size=8, pooling="last_token", padding="batch", group_by_length=True),
    ),
}


PRESETS: tuple[str, ...] = tuple(PRESET_CONFIGS)


def preset_values(part: str, name: str) -> str:
    """A setting's value in each preset, for help texts, so that they never restate a preset: preset_values("train", "lr")
    is "book 5e-05, recommended 0.0008"."""
    shown = lambda value: f"{value:g}" if isinstance(value, float) else str(value)
    return ", ".join(f"{label} {shown(getattr(getattr(chosen, part), name))}" for label, chosen in PRESET_CONFIGS.items())


def preset(name: str) -> Preset:
    try:
        return PRESET_CONFIGS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}: choose {' or '.join(PRESETS)}") from None


@dataclass(frozen=True)
class RunConfig:
    """Everything one fine-tuning run needs; what the CLI and the app build from their inputs."""

    model: str = DEFAULT_MODEL  # size name, or a folder with config.json + model.safetensors
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: str | None = None  # prepared folder, URL, zip or TSV; None downloads into data_cache
    data_urls: tuple[str, ...] | None = None  # where None downloads from (default: UCI, then its backup)
    deduplicate: bool = False  # drop repeated messages before balancing and splitting
    data_cache: str = DATA_CACHE
    out_dir: str = f"{RUNS_DIR}/latest"
    device: str = "auto"
    preset: str | None = None  # name of the preset this run started from, for the record
    owner: str = ""  # who queued the run, or what it is for (free text): shown beside it, kept in its record
    # How the SMS file's lines are read: "faithful" (each line one message, as written: 5,574) or
    # "book" (pandas' default CSV quoting, as the book reads it: 5,572). None: the preset's.
    parse: Parse | None = None
    # "book": the book notebook's random draws in its order, from the run's own generator, and its
    # full-set loss (the mean of batch means); "independent": the head and LoRA from one seeded
    # generator, the training order from another. None: the preset's.
    draws: Draws | None = None
    # What trains (see Method); the baseline's record says BASELINE_METHOD, which `train` refuses.
    method: str = "lora"

    def __post_init__(self) -> None:
        chosen = PRESET_CONFIGS.get(self.preset or "")
        if self.parse is None:
            object.__setattr__(self, "parse", chosen.parse if chosen else "faithful")
        if self.draws is None:
            object.__setattr__(self, "draws", chosen.draws if chosen else "independent")
        problems = []
        if self.parse not in PARSES:
            problems.append(f"parse must be one of {', '.join(PARSES)}, got {shown(self.parse)}")
        if self.draws not in DRAWS:
            problems.append(f"draws must be one of {', '.join(DRAWS)}, got {shown(self.draws)}")
        if self.method not in (*METHODS, BASELINE_METHOD):
            problems.append(f"method must be one of {', '.join(METHODS)}, got {shown(self.method)}")
        if not isinstance(self.owner, str) or len(self.owner) > MAX_OWNER_CHARS:
            problems.append(f"owner must be text of at most {MAX_OWNER_CHARS} characters, got {shown(self.owner)}")
        _raise_if(problems, "run settings")

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "RunConfig":
        base = preset(name)
        return cls(lora=base.lora, train=base.train, preset=name, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> "RunConfig":
        """The config `to_dict` wrote (a run record's, a queue entry's), validated as a new one would be.

        Raises:
            ConfigError: not such a config, or a value out of range.
        """
        try:
            known = {f.name for f in fields(cls)}
            values = {key: value for key, value in data.items() if key in known}
            lora = dict(data["lora"])
            values["lora"] = LoRAConfig(**{**lora, "targets": tuple(lora.get("targets", LORA_TARGETS))})
            values["train"] = TrainConfig(**_current_train_fields(dict(data["train"])))
            if values.get("data_urls") is not None:
                values["data_urls"] = tuple(values["data_urls"])
            return cls(**values)
        except (KeyError, TypeError, AttributeError) as error:
            raise ConfigError(f"not a run configuration ({type(error).__name__}: {error})") from None

    def with_train(self, **changes: Any) -> "RunConfig":
        return replace(self, train=replace(self.train, **changes))


def _current_train_fields(train: dict[str, Any]) -> dict[str, Any]:
    """Training settings as an earlier version wrote them, in today's fields: `bf16_autocast` (true:
    bf16 where the GPU has it, false: fp32) became `precision`."""
    if "bf16_autocast" in train:
        autocast = train.pop("bf16_autocast")
        train.setdefault("precision", "auto" if autocast else "fp32")
    return train
