"""LoRA Lab's web app: `python app.py` (or `lora-lab` once installed) serves http://127.0.0.1:7860 and
opens it in the browser on a desktop.

Eight tabs over `engine`: Data, Model & LoRA, Train, Parameters, Classify, Evaluate, Inside the adapter,
Runs, each in its own module of `ui/`. Runs are queued in the app's Scheduler, not in a browser session,
and train in worker processes (or on a Ray cluster): a reloaded page or a second visitor re-attaches
through the Train tab's timer. Every event has an api_name, so `gradio_client` can script it, except the
clicks on a confusion matrix's cell or a listed message, which carry what was clicked from the page.
Nothing loads at import: `build_ui()` builds, `main()` launches.

Neither this file nor `ui/` does tensor math or imports torch (tests/test_layers.py holds them to it).
The web process still runs the model, through engine functions, in exactly four places, because a
visitor waits for each answer and a worker process per request would cost seconds where the answer
takes milliseconds: Classify and every "Why this answer?" (Classify's, and a listed message's on
Evaluate and Train: `engine.classifier`, `engine.explain`, one model kept loaded in `ui/lab.py`),
Model & LoRA's weights check (`engine.weights.load_model`, `engine.model.generate_greedy`: a few greedy
tokens), and the exports of Inside the adapter (`engine.export`: the base model loaded once per export,
one export at a time). Parameters builds the model on PyTorch's meta device (shapes, no numbers) to
count; Inside the adapter reads the adapter's small matrices (`engine.anatomy`). Training and everything
it evaluates run in the workers.

What a visitor can reach is fenced: models are the four sizes plus the `--model` given at start,
uploads are read only from Gradio's own temporary copies (never a typed path or a URL), bounded in
size and deleted after an hour, served files are the runs folder's, no URL is fetched for a visitor,
the login page shows nothing of the app, and every bad input ends in a message naming the problem
and the fix.
"""

import argparse
import logging
import os
import sys
import webbrowser
from collections.abc import Sequence
from pathlib import Path

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # read when gradio is imported: no usage pings leave the machine

import gradio as gr  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402

from engine.config import DATA_CACHE, DEFAULT_MODEL, GPT2_SIZES, RUNS_DIR  # noqa: E402
from engine.data.prepared import SOURCES  # noqa: E402
from engine.device import pick_device  # noqa: E402
from engine.errors import LoRALabError  # noqa: E402
from engine.weights import resolve  # noqa: E402
from ui.anatomy_tab import AnatomyTab, build_anatomy_tab  # noqa: E402
from ui.classify_tab import ClassifyTab, build_classify_tab  # noqa: E402
from ui.data_tab import DataTab, build_data_tab  # noqa: E402
from ui.evaluate_tab import EvaluateTab, build_evaluate_tab  # noqa: E402
from ui.guards import exposure_warnings, parse_auth  # noqa: E402
from ui.http_guard import HttpGuard  # noqa: E402
from ui.lab import Lab  # noqa: E402
from ui.model_tab import ModelTab, build_model_tab  # noqa: E402
from ui.parameters_tab import ParametersTab, build_parameters_tab  # noqa: E402
from ui.runs_tab import RunsTab, build_runs_tab  # noqa: E402
from ui.server_log import log_user_errors_in_one_line  # noqa: E402
from ui.settings import MAX_UPLOAD_MB, UPLOAD_LIFETIME_S, UPLOAD_SPACE_MB, UPLOAD_SWEEP_S, AppSettings  # noqa: E402
from ui.train_tab import TrainTab, build_train_tab  # noqa: E402
from ui.views import APP_CSS  # noqa: E402

log = logging.getLogger("lora_lab.app")

THEME = gr.themes.Soft()  # a built-in theme ships its fonts; GoogleFont themes fetch from the internet
ICON = Path(__file__).resolve().parent / "assets" / "lora-lab.png"  # the browser tab's, and the installed desktop app's


def build_ui(settings: AppSettings, lab: Lab | None = None) -> gr.Blocks:
    """The tabs, wired to one Lab; nothing heavy happens until an event fires."""
    lab = lab or Lab(settings)
    # Uploads (and Gradio's copies of shown files) are deleted an hour after they arrive, and all at exit.
    with gr.Blocks(title="LoRA Lab", delete_cache=(UPLOAD_SWEEP_S, UPLOAD_LIFETIME_S)) as demo:
        gr.Markdown("# LoRA Lab\nFine-tune GPT-2 with LoRA to tell spam from ham, and watch it learn.")
        with gr.Tabs() as tabs:
            build_data_tab(DataTab(lab), demo)
            controls = build_model_tab(ModelTab(lab), demo)  # Start, the grids and Parameters read these
            train_timer, follow = build_train_tab(TrainTab(lab), demo, controls)
            build_parameters_tab(ParametersTab(lab), demo, controls)
            build_classify_tab(ClassifyTab(lab), demo, train_timer)
            build_evaluate_tab(EvaluateTab(lab))
            build_anatomy_tab(AnatomyTab(lab))
            build_runs_tab(RunsTab(lab), demo, controls, follow, tabs)
    log_user_errors_in_one_line(demo)
    return demo


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="LoRA Lab: fine-tune GPT-2 with LoRA to classify SMS spam, in your browser.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 exposes it to your network)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--share", action="store_true", help="also publish a public gradio.live link (off by default: sends traffic through Gradio's servers)")
    parser.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, mps")
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"{', '.join(GPT2_SIZES)}, or a folder with config.json + model.safetensors (default {DEFAULT_MODEL})"
    )
    parser.add_argument("--out", type=Path, default=Path(RUNS_DIR), help=f"folder for training runs (default {RUNS_DIR})")
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
    parser.add_argument("--no-browser", action="store_true", help="do not open the app in a browser at start (by default it opens on a desktop)")
    parser.add_argument("--max-upload-mb", type=int, default=MAX_UPLOAD_MB, help=f"largest file a visitor may upload, in MB (default {MAX_UPLOAD_MB})")
    parser.add_argument("--workers", type=int, help="runs trained at once, each in its own process (default: one per CUDA GPU, otherwise one)")
    parser.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="train on a Ray cluster instead of this machine: its address, or auto for one started here with `ray start --head` "
        "(pip install -r requirements-ray.txt)",
    )
    parser.add_argument(
        "--upload-space-mb",
        type=int,
        default=UPLOAD_SPACE_MB,
        help=f"most uploads kept at once, all visitors together, in MB (default {UPLOAD_SPACE_MB}); uploads are deleted after an hour",
    )
    args = parser.parse_args(argv)
    if args.max_upload_mb < 1:
        parser.error("--max-upload-mb must be at least 1")
    if args.workers is not None and args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.upload_space_mb < args.max_upload_mb:
        parser.error(f"--upload-space-mb ({args.upload_space_mb}) must be at least --max-upload-mb ({args.max_upload_mb})")
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
        upload_space_mb=args.upload_space_mb,
    )
    try:
        lab = Lab(settings)
    except LoRALabError as error:  # e.g. Ray missing or unreachable
        raise SystemExit(f"lora-lab: error: {error}") from None
    demo = build_ui(settings, lab)
    url = launch(demo, settings, args.host, args.port, args.share, auth=args.auth)
    print(banner(url, demo.share_url, args.share), flush=True)
    print(f"Runs train on {lab.scheduler.workers.describe()}; they and their queue are kept in {settings.out}.", flush=True)
    if not args.no_browser and has_desktop():
        webbrowser.open(url)
    demo.block_thread()


def banner(url: str, share_url: str | None, shared: bool) -> str:
    """What the terminal says once the app is up: where it is, and how to show it to others."""
    lines = [f"LoRA Lab is running at {url} (Ctrl+C stops it)."]
    if shared and share_url:
        lines.append(f"Public link, for anyone who has it: {share_url}")
    elif shared:
        lines.append("The public link could not be made (see the message above): the app runs on this machine only.")
    else:
        lines.append("To show it to others over the internet, start it with --share (a public gradio.live link); --help lists every option.")
    return "\n".join(lines)


def has_desktop() -> bool:
    """Whether a browser window can open here: always on macOS and Windows, elsewhere in a graphical session."""
    return sys.platform in ("darwin", "win32") or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def launch(
    demo: gr.Blocks,
    settings: AppSettings,
    host: str,
    port: int,
    share: bool = False,
    auth: tuple[str, str] | None = None,
) -> str:
    """Queue and serve `demo` in the background; returns its local URL at once (`demo.block_thread()` then serves until stopped)."""
    _, url, _ = demo.queue(max_size=64).launch(
        server_name=host,
        server_port=port,
        share=share,
        auth=auth,
        theme=THEME,
        css=APP_CSS,
        allowed_paths=[str(settings.out)],  # the only files served besides Gradio's own copies: the runs
        max_file_size=settings.max_upload_mb * 1024 * 1024,
        footer_links=["api", "settings"],  # no link to gradio.app
        # In front of Gradio's routes: no URL fetched for a visitor, no API list before the login, bounded uploads.
        app_kwargs={"middleware": [Middleware(HttpGuard, upload_space_bytes=settings.upload_space_mb * 1024 * 1024, upload_lifetime_s=UPLOAD_LIFETIME_S)]},
        favicon_path=str(ICON),
        pwa=True,  # the browser offers to install LoRA Lab as a desktop app, with this icon
        prevent_thread_lock=True,
        quiet=True,  # `main` prints its own banner: Gradio's speaks of share=True in launch()
    )
    return url


if __name__ == "__main__":
    main()
