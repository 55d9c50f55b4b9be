"""The Model & LoRA tab: the model's weights and their sanity check, and the training controls."""

import time
from typing import Any

import gradio as gr

from engine.adapted_linear import product_path
from engine.config import LORA_TARGETS, PADDINGS, POOLINGS, PRESETS, SCALINGS, RunConfig
from engine.device import pick_device
from engine.errors import LoRALabError
from engine.failure import failure_of
from engine.model import generate_greedy
from engine.tokenizer import decode, encode
from engine.weights import fetch, load_model, resolve
from ui.controls import PRESET_FIELDS, Controls, ControlWidgets
from ui.guards import user_error
from ui.lab import Lab

SANITY_PROMPT = "Every effort moves you"
SANITY_TOKENS = 15


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
        device = pick_device(self.lab.settings.device)
        try:
            source = resolve(model)
            path = fetch(source, lambda received, total: progress((received, total), desc="downloading model.safetensors", unit="bytes"))
            progress(None, desc="loading the weights")
            loaded = load_model(model, device)
            text = decode(generate_greedy(loaded, encode(SANITY_PROMPT), SANITY_TOKENS))
        except Exception as error:
            failure = failure_of(error, str(device), f"loading {model}")
            if not failure.users_to_fix:
                raise
            if failure.kind == "out of memory":
                raise gr.Error(failure.message, duration=None) from None
            gr.Warning(failure.message, duration=None)  # missing or unreachable weights: the status line says so too
            return f"Weights not available: {failure.message}", ""
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
        """On page load: the settings of the current (or last) run, so a reload loses none of them."""
        newest = self.lab.followed(None)
        cfg = newest.run.config if newest else RunConfig.from_preset("recommended", model=self.lab.settings.model)
        return Controls.of(cfg).values()


def build_model_tab(model_tab: ModelTab, demo: gr.Blocks) -> ControlWidgets:
    """The Model & LoRA tab, wired; its controls go to Start, the rank sweep and the Parameters tab."""
    settings = model_tab.lab.settings
    initial = Controls.of(RunConfig.from_preset("recommended", model=settings.model))
    with gr.Tab("Model & LoRA"):
        with gr.Row():
            model = gr.Dropdown(
                list(settings.models),
                value=initial.model,
                label="Model",
                info="a GPT-2 size (a local folder is chosen when starting the app: --model FOLDER)",
                elem_id="model",
            )
            load = gr.Button("Download / load weights and test them", elem_id="load-weights")
        weights_status = gr.Textbox(label="Weights", interactive=False, elem_id="weights-status")
        sanity = gr.Textbox(label=f'Sanity check: greedy continuation of "{SANITY_PROMPT}"', interactive=False, elem_id="sanity")
        preset_name = gr.Radio(
            list(PRESETS), value=initial.preset_name, label="Preset", info="book: the book's appendix E exactly; recommended: as accurate, much faster"
        )
        with gr.Row():
            rank = gr.Slider(1, 64, value=initial.rank, step=1, label="LoRA rank", elem_id="rank")
            alpha = gr.Number(initial.alpha, label="LoRA alpha", minimum=0, elem_id="alpha")
            scaling = gr.Radio(list(SCALINGS), value=initial.scaling, label="Scaling", info="alpha (book) or alpha / rank (Hu et al., PEFT)")
        with gr.Accordion("Advanced", open=False):
            targets = gr.CheckboxGroup(list(LORA_TARGETS), value=list(initial.targets), label="Layers LoRA adapts", elem_id="targets")
            train_head = gr.Checkbox(initial.train_head, label="Also train the class head's own weights")
            with gr.Row():
                pooling = gr.Radio(
                    list(POOLINGS),
                    value=initial.pooling,
                    label="Read the logits at",
                    info="last: the last position (book); last_token: the last real token",
                )
                padding = gr.Radio(
                    list(PADDINGS),
                    value=initial.padding,
                    label="Padding",
                    info="longest: every message to the longest training one (book); batch: per batch",
                )
            with gr.Row():
                lr = gr.Number(initial.lr, label="Learning rate", elem_id="lr")
                epochs = gr.Number(initial.epochs, label="Epochs", precision=0, minimum=1, elem_id="epochs")
                batch_size = gr.Number(initial.batch_size, label="Batch size", precision=0, minimum=1, elem_id="batch-size")
                max_steps = gr.Number(initial.max_steps, label="Stop after steps (0: all)", precision=0, minimum=0, elem_id="max-steps")
                eval_freq = gr.Number(initial.eval_freq, label="Estimate loss every N steps", precision=0, minimum=1, elem_id="eval-freq")
            live_metrics = gr.Checkbox(
                initial.live_metrics,
                label="At each estimate, score the full validation set (live confusion matrix on Train)",
                info="one pass over the validation set; its first batches still give the book's validation loss",
                elem_id="live-metrics",
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
    )

    load.click(model_tab.load_weights, model, [weights_status, sanity], api_name="load_weights")
    preset_name.input(model_tab.apply_preset, preset_name, controls.pick(PRESET_FIELDS), api_name="apply_preset")
    demo.load(model_tab.controls, None, controls.inputs(), api_name="controls", show_progress="hidden")
    return controls
