"""The Model & LoRA tab: the model's weights and their sanity check, the training controls in plain
words (each with one sentence on what it does), and a picture of LoRA on one layer that follows them."""

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gradio as gr

from engine.adapted_linear import product_path
from engine.config import GPT2_SIZES, LORA_TARGETS, LR_RANGE, PRESETS, LoRAConfig, RunConfig, preset_values
from engine.device import pick_device
from engine.errors import LoRALabError, WeightsError
from engine.failure import one_line
from engine.model import generate_greedy
from engine.params import lora_shape
from engine.tokenizer import decode, encode
from engine.weights import cached, download_bytes, fetch, hub_offline, hub_reachable, load_model, resolve, weight_count
from ui.controls import PRESET_FIELDS, Controls, ControlWidgets, as_int
from ui.guards import engine_errors_as_toasts, user_error
from ui.lab import Lab
from ui.lora_picture import layer_label, lora_picture_html

SANITY_PROMPT = "Every effort moves you"
SANITY_TOKENS = 15
ON_THIS_MACHINE = "on this machine"
# The choices' labels; the values stay the engine's names (what the API and run.json use).
SCALING_CHOICES = [("alpha (the book)", "alpha"), ("alpha ÷ rank (Hu et al., PEFT)", "alpha_over_rank")]
POOLING_CHOICES = [("the last position, padding or not (last: the book)", "last"), ("the last real token (last_token)", "last_token")]
PADDING_CHOICES = [("to the longest training message (longest: the book)", "longest"), ("to the longest of each batch (batch)", "batch")]
TARGET_CHOICES = [(layer_label(target), target) for target in LORA_TARGETS]
METHOD_CHOICES = [
    ("LoRA: small add-on weights learn; the model itself stays as it is (the book's appendix E)", "lora"),
    ("Last block: the model's last layer block is retrained (the book's chapter 6)", "last-block"),
    ("Everything: every weight of the model is retrained (full fine-tuning)", "full"),
]
# The controls that only LoRA uses: greyed out for the other methods.
LORA_ONLY = ("rank", "alpha", "scaling", "targets", "train_head")
PRECISION_CHOICES = [("auto: bf16 on a graphics card that has it, else fp32", "auto"), ("fp32 (the book)", "fp32"), ("bf16", "bf16")]


def method_note(method: str) -> str:
    """What the chosen method means for the LoRA settings, in words for anyone (empty for LoRA)."""
    if method == "lora":
        return ""
    return (
        "*No LoRA with this method: the LoRA settings (rank, strength, scaling, layers, class head) are not used, so they are greyed out; "
        "the picture still shows what LoRA would do, for comparison.*"
    )


def method_effects(method: str) -> tuple[Any, ...]:
    """The note, and the LoRA-only controls usable for LoRA and greyed out for the other methods."""
    usable = method == "lora"
    return (method_note(method), *(gr.update(interactive=usable) for _ in LORA_ONLY))


def model_label(model: str) -> str:
    """A model as the list shows it: its size, and whether it is here already or how much it downloads."""
    try:
        source = resolve(model)
        here = cached(source) is not None
    except LoRALabError:
        return model  # choosing it explains the problem
    count = weight_count(source.config) / 1e6
    size = f"{count:,.0f}M parameters" if count >= 10 else f"{count:.1f}M parameters"
    if model not in GPT2_SIZES:
        return f"{Path(model).name} (your folder, {size}) · {ON_THIS_MACHINE}"
    return f"{model} ({size}) · " + (ON_THIS_MACHINE if here else f"downloads {download_bytes(source.config) / 1e6:,.0f} MB")


def model_choices(models: Sequence[str]) -> list[tuple[str, str]]:
    return [(model_label(model), model) for model in models]


def models_here(models: Sequence[str]) -> list[str]:
    """The models whose weights are on this machine already (no network asked)."""
    here = []
    for model in models:
        try:
            if cached(resolve(model)) is not None:
                here.append(model)
        except LoRALabError:
            continue
    return here


def nothing_here(why: str) -> str:
    """No model on this machine and none can be downloaded: the two ways out."""
    return (
        f"No model is on this machine yet, and {why}. Two ways out: connect this machine to the internet once "
        "(the download is kept for next time), or start LoRA Lab with --model FOLDER, a folder holding a GPT-2 "
        "checkpoint's config.json and model.safetensors (python app.py --model FOLDER)."
    )


class ModelTab:
    """The Model & LoRA tab's handlers over the app's Lab."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab

    def load_weights(
        self,
        model: str,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 - Gradio finds its progress tracker by this default
    ) -> tuple[str, str]:
        """Download (if needed) and load the weights, then run the "Every effort moves you" check."""
        started = time.perf_counter()
        self.lab.check_model(model)
        device = pick_device(self.lab.settings.app_device)
        needs_download, megabytes = False, ""
        with engine_errors_as_toasts(str(device), f"loading {model}"):  # what is not our own error: out of memory, or a bug
            try:
                source = resolve(model)
                needs_download = cached(source) is None
                megabytes = f"{download_bytes(source.config) / 1e6:,.0f} MB"
                shown = f"downloading {model} ({megabytes})"
                path = fetch(source, lambda received, total: progress((received, total), desc=shown, unit="bytes"))
                progress(None, desc="loading the weights")
                loaded = load_model(model, device)
                text = decode(generate_greedy(loaded, encode(SANITY_PROMPT), SANITY_TOKENS))
            except LoRALabError as error:
                if needs_download and isinstance(error, WeightsError):
                    return unavailable(model, megabytes, error, models_here(self.lab.settings.models)), ""
                return f"Weights not available: {one_line(str(error))}", ""
        shape = f"{source.config.n_layer} layers, width {source.config.n_embd}"
        seconds = time.perf_counter() - started
        products = f"; frozen products through {product_path().describe()}" if device.type == "cpu" else ""
        return f"{model}: {shape}; weights {path.stat().st_size / 1e6:,.1f} MB at {path}; loaded on {device} in {seconds:.1f} s{products}", text

    def apply_preset(self, name: str) -> tuple[Any, ...]:
        """The preset's values for the controls it sets; targets, model and the rest stay as they are."""
        try:
            chosen = RunConfig.from_preset(name)
        except LoRALabError as error:
            raise user_error(error) from None
        return Controls.of(chosen).pick(PRESET_FIELDS)

    def controls(self) -> tuple[Any, ...]:
        """On page load: the settings of the current (or last) run of this app, so a reload loses none of them;
        a run of an earlier app (it has no progress here) does not count: the page starts from the model this app
        was started with (--model), not from what was trained last time."""
        newest = self.lab.followed(None)
        this_app = newest is not None and (newest.progress is not None or not newest.run.ended)
        cfg = newest.run.config if this_app else RunConfig.from_preset("recommended", model=self.lab.settings.model)
        return Controls.of(cfg).values()

    def weights_note(self) -> str:
        """On page load: say at once when no model is on this machine, and what to do about it (no network asked)."""
        if models_here(self.lab.settings.models):
            return ""
        if hub_offline():
            return nothing_here("this app was started offline (HF_HUB_OFFLINE=1)")
        return (
            f"No model is on this machine yet: {model_label(self.lab.settings.model)}, when you load it or start training. "
            "No internet here? Start LoRA Lab with --model FOLDER, a folder holding a GPT-2 checkpoint's config.json and model.safetensors."
        )

    def model_list(self) -> gr.Dropdown:
        """The models with what each needs now (on this machine, or a download), after a load or a reload."""
        return gr.Dropdown(choices=model_choices(self.lab.settings.models))

    def picture(self, model: str, rank: float, alpha: float, scaling: str, targets: Sequence[str] | None, shown: str) -> str:
        """LoRA on the layer chosen for the picture, at the chosen rank, alpha and scaling."""
        self.lab.check_model(model)
        prepared = self.lab.prepared
        classes = len(prepared.splits.labels) if prepared is not None else 2
        try:
            lora = LoRAConfig(rank=as_int(rank), alpha=alpha, scaling=scaling)
            shape = lora_shape(model, shown, lora.rank, classes)
        except LoRALabError as error:
            raise user_error(error) from None
        layers = 1 if shown == "score" else resolve(model).config.n_layer
        return lora_picture_html(shape, lora.scale, layers, Path(model).name, shown in (targets or ()))


def unavailable(model: str, megabytes: str, error: WeightsError, here: Sequence[str]) -> str:
    """A size that is not here and could not be downloaded, in plain words with what to do (`here`: the models on this machine)."""
    if hub_offline():
        why = "this app was started offline (HF_HUB_OFFLINE=1)"
    elif error.unreachable or not hub_reachable():
        why = "the internet cannot be reached from this machine"
    else:
        why = f"the download failed ({one_line(str(error))[:300]})"
    if not here:
        return f"{model} needs a download of {megabytes}. " + nothing_here(why)
    return (
        f"{model} is not on this machine yet and needs a download of {megabytes}, but {why}. "
        f"To use it: connect to the internet and press the button again. Until then, choose a model marked “{ON_THIS_MACHINE}” "
        f"({', '.join(Path(name).name for name in here)})."
    )


def build_model_tab(model_tab: ModelTab, demo: gr.Blocks) -> ControlWidgets:
    """The Model & LoRA tab, wired; its controls go to Start, the rank sweep and the Parameters tab."""
    settings = model_tab.lab.settings
    initial = Controls.of(RunConfig.from_preset("recommended", model=settings.model))
    with gr.Tab("Model & LoRA"):
        with gr.Row():
            model = gr.Dropdown(
                model_choices(settings.models),
                value=initial.model,
                label="Model (GPT-2 size)",
                info="Larger sizes classify better but train slower and need more memory. A size not yet on this machine "
                "downloads when you load it or start training (a folder of your own is given when starting the app: --model FOLDER).",
                elem_id="model",
            )
            load = gr.Button("Load the weights and test them", elem_id="load-weights")
        weights_status = gr.Textbox(label="Weights", interactive=False, elem_id="weights-status")
        sanity = gr.Textbox(
            label=f'Sanity check: the model continues "{SANITY_PROMPT}" (sensible English means the weights loaded well)', interactive=False, elem_id="sanity"
        )
        preset_name = gr.Radio(
            list(PRESETS),
            value=initial.preset_name,
            label="Starting point (preset)",
            info="book: exactly the book's appendix E; recommended: as accurate and about 3 times faster. Choosing one sets the controls below.",
        )
        with gr.Row():
            with gr.Column(scale=1):
                method = gr.Radio(
                    METHOD_CHOICES,
                    value=initial.method,
                    label="What training changes (method)",
                    info="LoRA trains a small share of the weights and saves a small file. The other two change the model's own "
                    "weights: more to train and a larger file. Compare them on the Runs tab.",
                    elem_id="method",
                )
                lora_note = gr.Markdown(method_note(initial.method), elem_id="method-note")
                rank = gr.Slider(
                    1,
                    64,
                    value=initial.rank,
                    step=1,
                    label="LoRA rank (r)",
                    info="How many directions each adapted layer may learn: a higher rank trains more weights (see the picture), "
                    "rarely more accurately beyond 8 to 16.",
                    elem_id="rank",
                )
                alpha = gr.Number(
                    initial.alpha,
                    label="LoRA strength (alpha)",
                    info="How strongly what LoRA learns is added to the frozen model: higher learns faster but can overshoot.",
                    minimum=0,
                    elem_id="alpha",
                )
                scaling = gr.Radio(
                    SCALING_CHOICES,
                    value=initial.scaling,
                    label="How alpha is applied (scaling)",
                    info="alpha ÷ rank keeps the strength the same when you change the rank; the book multiplies by alpha itself.",
                    elem_id="scaling",
                )
            with gr.Column(scale=2):
                shown_layer = gr.Dropdown(
                    TARGET_CHOICES,
                    value="attn.q_proj",
                    label="LoRA on one layer (pick which)",
                    info="Every adapted layer works like this; the boxes keep the layer's proportions.",
                    elem_id="picture-layer",
                )
                picture = gr.HTML(elem_id="lora-picture")
        with gr.Accordion("Advanced", open=False):
            targets = gr.CheckboxGroup(
                TARGET_CHOICES,
                value=list(initial.targets),
                label="Layers LoRA adapts (targets)",
                info="Fewer layers train fewer weights and run a little faster; the book adapts all of them.",
                elem_id="targets",
            )
            train_head = gr.Checkbox(
                initial.train_head,
                label="Also train the class head's own weights (train_head)",
                info="Off, as in the book: the head learns only through its LoRA. On: its weights are trained directly too.",
                elem_id="train-head",
            )
            with gr.Row():
                pooling = gr.Radio(
                    POOLING_CHOICES,
                    value=initial.pooling,
                    label="Read the answer at (pooling)",
                    info="The class is read at one position of the message; the last real token ignores the padding after it.",
                    elem_id="pooling",
                )
                padding = gr.Radio(
                    PADDING_CHOICES,
                    value=initial.padding,
                    label="Pad short messages (padding)",
                    info="Messages of a batch are padded to one length; padding per batch wastes far less work, so training is faster.",
                    elem_id="padding",
                )
            with gr.Row():
                lr = gr.Number(
                    initial.lr,
                    label=f"Learning rate (lr; {LR_RANGE})",  # said here, checked by the engine, whose message names the field
                    info=f"The size of each training step: too high jumps around, too low barely moves ({preset_values('train', 'lr')}).",
                    elem_id="lr",
                )
                epochs = gr.Number(
                    initial.epochs,
                    label="Epochs",
                    info="How many times training reads every training message; more can overfit.",
                    precision=0,
                    minimum=1,
                    elem_id="epochs",
                )
                batch_size = gr.Number(
                    initial.batch_size,
                    label="Batch size",
                    info="Messages per training step: larger batches give smoother steps and need more memory.",
                    precision=0,
                    minimum=1,
                    elem_id="batch-size",
                )
            with gr.Row():
                max_steps = gr.Number(
                    initial.max_steps,
                    label="Stop after this many steps (max_steps; 0: no limit)",
                    info="Ends training early, for a quick demo; 0 trains every epoch to the end.",
                    precision=0,
                    minimum=0,
                    elem_id="max-steps",
                )
                eval_freq = gr.Number(
                    initial.eval_freq,
                    label="Estimate the loss every N steps (eval_freq)",
                    info="How often the loss curves get a new point: smaller shows more detail, and each estimate takes time.",
                    precision=0,
                    minimum=1,
                    elem_id="eval-freq",
                )
                early_stop = gr.Number(
                    initial.early_stop,
                    label="Stop early after N estimates without improvement (early_stop; 0: never)",
                    info="Ends training once the validation loss has not gone down for this many loss estimates in a row, before the model "
                    "learns its training messages by heart. Either way, the run keeps its best adapter (lowest validation loss).",
                    precision=0,
                    minimum=0,
                    elem_id="early-stop",
                )
            live_metrics = gr.Checkbox(
                initial.live_metrics,
                label="Score the whole validation set at each estimate (live_metrics)",
                info="Shows a live confusion matrix on the Train tab; costs one pass over the validation set per estimate.",
                elem_id="live-metrics",
            )
            precision = gr.Radio(
                PRECISION_CHOICES,
                value=initial.precision,
                label="Number precision of the frozen model (precision)",
                info="bf16 keeps the frozen model in half the memory and trains faster on graphics cards; LoRA itself always learns in fp32. "
                "Most processors (CPUs) compute bf16 slowly, so auto keeps fp32 there; the book uses fp32.",
                elem_id="precision",
            )
    controls = ControlWidgets(
        model=model,
        preset_name=preset_name,
        rank=rank,
        alpha=alpha,
        scaling=scaling,
        targets=targets,
        train_head=train_head,
        pooling=pooling,
        padding=padding,
        lr=lr,
        epochs=epochs,
        batch_size=batch_size,
        max_steps=max_steps,
        eval_freq=eval_freq,
        live_metrics=live_metrics,
        precision=precision,
        method=method,
        early_stop=early_stop,
    )
    lora_widgets = controls.pick(LORA_ONLY)
    method.change(method_effects, method, [lora_note, *lora_widgets], show_progress="hidden", api_visibility="private")

    load.click(model_tab.load_weights, model, [weights_status, sanity], api_name="load_weights").then(
        model_tab.model_list, None, model, show_progress="hidden", api_visibility="private"
    )
    preset_name.input(model_tab.apply_preset, preset_name, controls.pick(PRESET_FIELDS), api_name="apply_preset")
    demo.load(model_tab.controls, None, controls.inputs(), api_name="controls", show_progress="hidden")
    demo.load(model_tab.weights_note, None, weights_status, api_name="weights_note", show_progress="hidden")
    picture_inputs = [model, rank, alpha, scaling, targets, shown_layer]
    gr.on(
        [demo.load] + [widget.change for widget in picture_inputs],
        model_tab.picture,
        picture_inputs,
        picture,
        api_name="lora_picture",
        show_progress="hidden",
        trigger_mode="always_last",
    )
    return controls
