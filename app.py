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
tokens), these on `--app-device` (never a GPU a worker trains on unless named there), and the exports of
Inside the adapter (`engine.export`: the base model loaded on the CPU once per export, one at a time).
Parameters builds the model on PyTorch's meta device (shapes, no numbers) to
count; Inside the adapter reads the adapter's small matrices (`engine.anatomy`). Training and everything
it evaluates run in the workers, and so does the cost estimate's one measurement per model shape (the
lines beside Start and under a grid's preview, `ui/cost_view.py`): a short `python -m engine.calibration`
subprocess, whose result is cached; the estimate itself is arithmetic.

What a visitor can reach is fenced: models are the four sizes plus the `--model` given at start,
uploads are read only from Gradio's own temporary copies (never a typed path or a URL), bounded in
size and deleted after an hour, served files are the runs folder's, no URL is fetched for a visitor,
the login page shows nothing of the app, and every bad input ends in a message naming the problem
and the fix.
"""

import argparse
import logging
import os
import signal
import sys
import webbrowser
from collections.abc import Sequence
from pathlib import Path

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # read when gradio is imported: no usage pings leave the machine

import gradio as gr  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402

from engine.config import DATA_CACHE, DEFAULT_MODEL, GPT2_SIZES, RUNS_DIR  # noqa: E402
from engine.data.prepared import SOURCES  # noqa: E402
from engine.device import check_device  # noqa: E402
from engine.errors import LoRALabError  # noqa: E402
from engine.runs.local_workers import app_device, check_worker_count  # noqa: E402
from engine.weights import resolve  # noqa: E402
from ui.anatomy_tab import AnatomyTab, build_anatomy_tab  # noqa: E402
from ui.classify_tab import ClassifyTab, build_classify_tab  # noqa: E402
from ui.command_line import OneLineErrorsParser, host_problem, listen_problem, port_problem  # noqa: E402
from ui.data_tab import DataTab, build_data_tab  # noqa: E402
from ui.evaluate_tab import EvaluateTab, build_evaluate_tab  # noqa: E402
from ui.guards import LOCAL_HOSTS, exposure_warnings, parse_auth  # noqa: E402
from ui.http_guard import HttpGuard  # noqa: E402
from ui.lab import Lab  # noqa: E402
from ui.model_tab import ModelTab, build_model_tab  # noqa: E402
from ui.parameters_tab import ParametersTab, build_parameters_tab  # noqa: E402
from ui.room import DEFAULT_MAX_WAITING_PER_VISITOR, MOST_WAITING_LIMIT, Room, room_words  # noqa: E402
from ui.runs_tab import RunsTab, build_runs_tab  # noqa: E402
from ui.server_log import log_user_errors_in_one_line  # noqa: E402
from ui.settings import MAX_UPLOAD_MB, UPLOAD_LIFETIME_S, UPLOAD_SPACE_MB, UPLOAD_SWEEP_S, AppSettings  # noqa: E402
from ui.train_tab import TrainTab, build_run_info, build_train_tab  # noqa: E402
from ui.views import APP_CSS, GRADIO_WORDS  # noqa: E402

log = logging.getLogger("lora_lab.app")

THEME = gr.themes.Soft()  # a built-in theme ships its fonts; GoogleFont themes fetch from the internet
ICON = Path(__file__).resolve().parent / "assets" / "lora-lab.png"  # the browser tab's, and the installed desktop app's


def build_ui(settings: AppSettings, lab: Lab | None = None) -> gr.Blocks:
    """The tabs, wired to one Lab; nothing heavy happens until an event fires."""
    lab = lab or Lab(settings)
    # Uploads (and Gradio's copies of shown files) are deleted an hour after they arrive, and all at exit.
    with gr.Blocks(title="LoRA Lab", delete_cache=(UPLOAD_SWEEP_S, UPLOAD_LIFETIME_S)) as demo:
        gr.Markdown("# LoRA Lab\nFine-tune GPT-2 with LoRA to tell spam from ham, and watch it learn.")
        room_line = gr.Markdown(elem_id="room-line") if lab.room.on else None  # who this visitor is and what they may do
        with gr.Tabs(overflow_behavior="wrap") as tabs:  # on a phone every tab stays in sight, on two rows
            build_data_tab(DataTab(lab), demo)
            controls = build_model_tab(ModelTab(lab), demo)  # Start, the grids and Parameters read these
            train = TrainTab(lab)
            train_timer, follow = build_train_tab(train, demo, controls)
            build_parameters_tab(ParametersTab(lab), demo, controls)
            answering_run, answering_adapter = build_classify_tab(ClassifyTab(lab), demo, train_timer)
            build_evaluate_tab(EvaluateTab(lab), answering_run, answering_adapter)
            build_anatomy_tab(AnatomyTab(lab))
            build_runs_tab(RunsTab(lab), demo, controls, follow, tabs)
        build_run_info(train)
        build_room(lab, demo, room_line)
    log_user_errors_in_one_line(demo)
    return demo


def build_room(lab: Lab, demo: gr.Blocks, room_line: gr.Markdown | None) -> None:
    """Room mode's page side: each page load tells the app which visitor (browser) it is, and the page says what they may do."""
    if room_line is None:  # the room is off
        return
    browser = gr.BrowserState("", storage_key="lora-lab-visitor")  # a random secret per browser: the visitor, across reloads

    def arrive(secret: str, request: gr.Request) -> tuple[str, str]:
        kept = lab.room.arrive(secret, request)
        return kept, room_words(lab.room.visitor(request), lab.room.max_waiting)

    demo.load(arrive, browser, [browser, room_line], api_visibility="private", show_progress="hidden", concurrency_limit=None)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = OneLineErrorsParser(description="LoRA Lab: fine-tune GPT-2 with LoRA to classify SMS spam, in your browser.")
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
    parser.add_argument("--force", action="store_true", help="start --workers beyond this machine's GPUs (or CPU cores) all the same")
    parser.add_argument(
        "--app-device",
        default="auto",
        help="where the app itself runs the model for Classify and the weights check: auto (a GPU no worker trains on, else the CPU), cpu, cuda:N, mps",
    )
    parser.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="train on a Ray cluster instead of this machine: its address, or auto for one started here with `ray start --head` "
        "(pip install -r requirements-ray.txt)",
    )
    room = parser.add_mutually_exclusive_group()
    room.add_argument(
        "--room",
        action="store_true",
        default=None,
        help="room mode, for a presenter and an audience (on by default when others can reach the app: --host other than this machine, "
        "or --share): each visitor acts on their own runs, runs take turns across visitors, and the presenter link (printed at start) "
        "manages all; see docs/room.md",
    )
    room.add_argument("--no-room", dest="room", action="store_false", help="one person, every power, wherever the app listens")
    parser.add_argument(
        "--max-waiting-per-visitor",
        type=int,
        default=DEFAULT_MAX_WAITING_PER_VISITOR,
        metavar="N",
        help=f"in room mode, the most runs one visitor may have waiting (a grid counts each of its runs; default {DEFAULT_MAX_WAITING_PER_VISITOR}); "
        "the presenter can change it from the page",
    )
    parser.add_argument(
        "--upload-space-mb",
        type=int,
        default=UPLOAD_SPACE_MB,
        help=f"most uploads kept at once, all visitors together, in MB (default {UPLOAD_SPACE_MB}); uploads are deleted after an hour",
    )
    args = parser.parse_args(argv)
    for problem in (host_problem(args.host), port_problem(args.port)):
        if problem:
            parser.error(problem)
    if args.max_upload_mb < 1:
        parser.error("--max-upload-mb must be at least 1")
    if args.workers is not None and args.workers < 1:
        parser.error("--workers must be at least 1")
    if not 1 <= args.max_waiting_per_visitor <= MOST_WAITING_LIMIT:
        parser.error(f"--max-waiting-per-visitor must be from 1 to {MOST_WAITING_LIMIT}")
    if args.room is None:  # reachable from other machines: a room
        args.room = args.share or args.host not in LOCAL_HOSTS
    if args.upload_space_mb < args.max_upload_mb:
        parser.error(f"--upload-space-mb ({args.upload_space_mb}) must be at least --max-upload-mb ({args.max_upload_mb})")
    try:
        resolve(args.model)
        check_device(args.device)
    except LoRALabError as error:
        parser.error(str(error))
    try:  # the machine's devices, asked of a probe: CUDA stays out of the web process unless --app-device puts the app on a GPU
        if not args.ray:
            check_worker_count(args.workers, args.device, args.force)
        args.app_device = app_device(args.app_device, args.device, args.workers, args.ray)
    except LoRALabError as error:
        parser.exit(2, f"lora-lab: error: {error}\n")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    args = parse_args(argv)
    problem = listen_problem(args.host, args.port)  # before anything loads: a port in use is said at once, in one line
    if problem:
        raise SystemExit(f"lora-lab: error: {problem}")
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
        app_device=args.app_device,
        room=args.room,
        presenter_token=os.environ.get("LORA_LAB_PRESENTER_TOKEN") or None,
        max_waiting_per_visitor=args.max_waiting_per_visitor,
    )
    try:
        lab = Lab(settings)
    except LoRALabError as error:  # e.g. Ray missing or unreachable, or another app owns the runs folder
        raise SystemExit(f"lora-lab: error: {error}") from None
    demo = build_ui(settings, lab)
    url = launch(demo, settings, args.host, args.port, args.share, auth=args.auth)
    print(banner(url, demo.share_url, args.share), flush=True)
    if lab.room.on:
        print(presenter_banner(lab.room, url, demo.share_url), flush=True)
    print(f"Runs train on {lab.scheduler.workers.describe()}; they and their queue are kept in {settings.out}.", flush=True)
    print(f"Classify and the weights check run in this process on {settings.app_device} (--app-device).", flush=True)
    if not args.no_browser and has_desktop():
        webbrowser.open(url)
    stop_on_sigterm()
    demo.block_thread()


def stop_on_sigterm() -> None:
    """SIGTERM (a service manager stopping the app, `kill`) stops it as Ctrl+C does: the server closes and
    deletes every upload and every file written for a visitor, where Python's default would just exit."""

    def interrupt(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the app at once, should the first hang
        raise KeyboardInterrupt  # what demo.block_thread() waits for

    signal.signal(signal.SIGTERM, interrupt)


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


def presenter_banner(room: Room, url: str, share_url: str | None = None) -> str:
    """Room mode's lines: what visitors may do, and the presenter link (keep it to yourself)."""
    lines = [
        f"Room mode: each visitor acts on their own runs, with at most {room.max_waiting} waiting at once; waiting runs take turns (docs/room.md).",
        f"Presenter link (it stops, cancels and moves any run; keep it to yourself): {room.presenter_link(url)}",
    ]
    if share_url:
        lines.append(f"The same through the public link: {room.presenter_link(share_url)}")
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
        i18n=gr.I18n(en=GRADIO_WORDS),
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
