"""LoRA Lab's web app: `python app.py` opens http://127.0.0.1:7860.

Seven tabs over `engine`: Data, Model & LoRA, Train, Parameters, Classify, Evaluate, Runs, each in its
own module of `ui/`. Runs are queued in the app's Scheduler, not in a browser session, and train in
worker processes (or on a Ray cluster): a reloaded page or a second visitor re-attaches through the Train
tab's timer. The app does no tensor math;
every event has an api_name, so `gradio_client` can script it. Nothing loads at import: `build_ui()`
builds, `main()` launches.

What a visitor can reach is fenced: models are the four sizes plus the `--model` given at start,
uploads are read only from Gradio's own temporary copies (never a typed path or a URL), served files
are the runs folder's, and every bad input ends in a message naming the problem and the fix.
"""

import argparse
import logging
import os
from collections.abc import Sequence
from pathlib import Path

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # read when gradio is imported: no usage pings leave the machine

import gradio as gr  # noqa: E402

from engine.config import DATA_CACHE, GPT2_SIZES  # noqa: E402
from engine.data import SOURCES  # noqa: E402
from engine.device import pick_device  # noqa: E402
from engine.errors import LoRALabError  # noqa: E402
from engine.weights import resolve  # noqa: E402
from ui.classify_tab import ClassifyTab, build_classify_tab  # noqa: E402
from ui.data_tab import DataTab, build_data_tab  # noqa: E402
from ui.evaluate_tab import EvaluateTab, build_evaluate_tab  # noqa: E402
from ui.guards import exposure_warnings, parse_auth  # noqa: E402
from ui.lab import Lab  # noqa: E402
from ui.model_tab import ModelTab, build_model_tab  # noqa: E402
from ui.parameters_tab import ParametersTab, build_parameters_tab  # noqa: E402
from ui.runs_tab import RunsTab, build_runs_tab  # noqa: E402
from ui.settings import MAX_UPLOAD_MB, AppSettings  # noqa: E402
from ui.train_tab import TrainTab, build_train_tab  # noqa: E402

log = logging.getLogger("lora_lab.app")

THEME = gr.themes.Soft()  # a built-in theme ships its fonts; GoogleFont themes fetch from the internet


def build_ui(settings: AppSettings, lab: Lab | None = None) -> gr.Blocks:
    """The tabs, wired to one Lab; nothing heavy happens until an event fires."""
    lab = lab or Lab(settings)
    with gr.Blocks(title="LoRA Lab") as demo:
        gr.Markdown("# LoRA Lab\nFine-tune GPT-2 with LoRA to tell spam from ham, and watch it learn.")
        with gr.Tabs() as tabs:
            build_data_tab(DataTab(lab), demo)
            controls = build_model_tab(ModelTab(lab), demo)  # Start, the grids and Parameters read these
            train_timer, follow = build_train_tab(TrainTab(lab), demo, controls)
            build_parameters_tab(ParametersTab(lab), demo, controls)
            build_classify_tab(ClassifyTab(lab), demo, train_timer)
            build_evaluate_tab(EvaluateTab(lab))
            build_runs_tab(RunsTab(lab), demo, controls, follow, tabs)
    return demo


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python app.py", description="LoRA Lab: fine-tune GPT-2 with LoRA to classify SMS spam, in your browser.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 exposes it to your network)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--share", action="store_true", help="also publish a public gradio.live link (off by default: sends traffic through Gradio's servers)")
    parser.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, mps")
    parser.add_argument("--model", default="gpt2-small", help=f"{', '.join(GPT2_SIZES)}, or a folder with config.json + model.safetensors (default gpt2-small)")
    parser.add_argument("--out", type=Path, default=Path("runs"), help="folder for training runs (default runs)")
    parser.add_argument("--cache", type=Path, default=Path(DATA_CACHE), help=f"folder for the downloaded data (default {DATA_CACHE})")
    parser.add_argument(
        "--data-urls",
        nargs="+",
        default=list(SOURCES),
        metavar="URL",
        help="where Download fetches the SMS zip from, tried in order (default: UCI, then the book's backup)",
    )
    parser.add_argument(
        "--auth",
        type=parse_auth,
        default=os.environ.get("LORA_LAB_AUTH") or None,
        metavar="USER:PASSWORD",
        help="ask for this login before showing the app (Gradio's auth), for shared machines; "
        "LORA_LAB_AUTH=USER:PASSWORD does the same without showing the password in the process list",
    )
    parser.add_argument("--max-upload-mb", type=int, default=MAX_UPLOAD_MB, help=f"largest file a visitor may upload, in MB (default {MAX_UPLOAD_MB})")
    parser.add_argument("--workers", type=int, help="runs trained at once, each in its own process (default: one per CUDA GPU, otherwise one)")
    parser.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="train on a Ray cluster instead of this machine: its address, or auto for one started here with `ray start --head` "
        "(pip install -r requirements-ray.txt)",
    )
    args = parser.parse_args(argv)
    if args.max_upload_mb < 1:
        parser.error("--max-upload-mb must be at least 1")
    if args.workers is not None and args.workers < 1:
        parser.error("--workers must be at least 1")
    try:
        resolve(args.model)
        pick_device(args.device)
    except LoRALabError as error:
        parser.error(str(error))
    return args


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    args = parse_args(argv)
    for warning in exposure_warnings(args.host, args.share, args.auth):
        log.warning(warning)
    settings = AppSettings(
        model=args.model,
        device=args.device,
        out=args.out,
        cache=args.cache,
        data_urls=tuple(args.data_urls),
        max_upload_mb=args.max_upload_mb,
        workers=args.workers,
        ray=args.ray,
    )
    try:
        lab = Lab(settings)
    except LoRALabError as error:  # e.g. Ray missing or unreachable
        raise SystemExit(f"python app.py: error: {error}") from None
    print(f"LoRA Lab trains on {lab.scheduler.workers.describe()}; runs and their queue are kept in {settings.out}", flush=True)
    launch(build_ui(settings, lab), settings, args.host, args.port, args.share, auth=args.auth)


def launch(
    demo: gr.Blocks,
    settings: AppSettings,
    host: str,
    port: int,
    share: bool = False,
    block: bool = True,
    auth: tuple[str, str] | None = None,
) -> str:
    """Queue and serve `demo`; returns its local URL (at once when `block` is False, as tests want)."""
    _, url, _ = demo.queue(max_size=64).launch(
        server_name=host,
        server_port=port,
        share=share,
        auth=auth,
        theme=THEME,
        allowed_paths=[str(settings.out)],  # the only files served besides Gradio's own copies: the runs
        max_file_size=settings.max_upload_mb * 1024 * 1024,
        footer_links=["api", "settings"],  # no link to gradio.app
        prevent_thread_lock=not block,
        quiet=not block,
    )
    return url


if __name__ == "__main__":
    main()
