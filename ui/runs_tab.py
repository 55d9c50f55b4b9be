"""The Runs tab: the queue every visitor adds to, grids of runs, what a grid found, and the history.

The queue table is live: waiting, running and finished runs, answers first. A waiting run can be
moved or cancelled, a running one stopped, any one watched on the Train tab; in a room a visitor
acts on their own runs only (moving them among their own), and the presenter, who acts on all, also
sets the room's limit of waiting runs per visitor here. A grid is the
Model & LoRA settings with some of them given several values (5 ranks x 2 alphas x 3 seeds is 30
runs, shown before it is queued). A finished grid shows as a heat map of test accuracy over two
chosen settings, and as accuracy against trainable parameters and time, with the seeds' spread.
"""

import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd
from matplotlib.figure import Figure

from engine.config import BASELINE_METHOD, PRESETS, SCALINGS, TARGET_SETS, RunConfig
from engine.errors import ConfigError, LoRALabError
from engine.runs.compare import BOOK_A100, GRID_SETTINGS, grid_points, methods_side_by_side, varied
from engine.runs.grid import MAX_GRID_RUNS, Grid, targets_named
from engine.runs.history import RunSummary, all_runs, list_runs
from engine.runs.queue import MAX_WAITING
from engine.runs.scheduler import RunView
from ui.anatomy_tab import AnatomyTab, build_run_entry
from ui.controls import Controls, ControlWidgets, data_settings, run_config
from ui.cost_view import CostView, build_grid_cost_line
from ui.grid_plots import SETTING_WORDS, accuracy_against_cost, heat_map
from ui.guards import engine_errors_as_toasts, user_error
from ui.lab import Lab
from ui.live_axes import WHOLE_NUMBERS
from ui.room import EVERYONE, Visitor, refusal, whose
from ui.run_words import format_seconds, layers_words, progress_words
from ui.views import TOAST_SECONDS, percent, plural, series_colors, text_last

RANK_CHOICES = (1, 2, 4, 8, 16, 32, 64)
DEFAULT_RANKS = (1, 2, 4, 8, 16)
POLL_SECONDS = 2.0
NUMBER = re.compile(r"[^\s,;]+")
MAX_RESUMABLE_CHOICES = 20  # newest ended runs that can resume, offered in the queue's pick list


QUEUE_COLUMNS = ["state", "test acc. (%)", "run", "who", "rank", "alpha", "learning rate", "seed", "preset", "layers", "time", "worker", "note"]


def queue_frame(views: Sequence[RunView], visitor: Visitor = EVERYONE, room_on: bool = False) -> pd.DataFrame | None:
    """Every run the queue knows, newest first; the answer columns come first, the long ones last. In a room,
    "who" marks the visitor's own runs and the presenter's."""
    if not views:
        return None
    rows = []
    for view in sorted(views, key=lambda v: v.run.queued_at, reverse=True):
        run, progress = view.run, view.progress
        final = (progress.final or {}) if progress else {}
        took = run.ended_at - run.started_at if run.started_at and run.ended_at else None
        cfg, known = run.config, run.settings_known  # settings refused when the queue was read are not shown
        mark = whose(run, visitor, room_on)
        rows.append(
            {
                "state": progress_words(view),
                "test acc. (%)": percent(final["test"].accuracy) if "test" in final else None,
                "run": run.id,
                "who": f"{cfg.owner} ({mark})" if cfg.owner and mark else cfg.owner or mark,
                "rank": cfg.lora.rank if known else None,
                "alpha": cfg.lora.alpha if known else None,
                "learning rate": cfg.train.lr if known else None,
                "seed": cfg.train.seed if known else None,
                "preset": cfg.preset or "" if known else "",
                "layers": layers_words(cfg.lora.targets) if known else "",
                "time": format_seconds(took) if took is not None else "",
                "worker": run.worker or "",
                "note": run.reason or "",
            }
        )
    return pd.DataFrame(rows, columns=QUEUE_COLUMNS)


HISTORY_COLUMNS = [
    "test acc. (%)",
    "validation acc. (%)",
    "state",
    "run",
    "method",
    "rank",
    "alpha",
    "trainable",
    "steps",
    "train time (s)",
    "size on disk (MB)",
    "model",
    "preset",
    "device",
    "created",
]  # the answers first: a narrow window still shows how each run did


def history_frame(runs: Sequence[tuple[str, RunSummary]]) -> pd.DataFrame | None:
    if not runs:
        return None
    rows = [
        {
            "test acc. (%)": percent(run.test_accuracy),
            "validation acc. (%)": percent(run.validation_accuracy),
            "state": run.state,  # done, stopped, failed, interrupted (killed), or running
            "run": name,
            "method": METHOD_LABELS.get(run.method, run.method),
            "rank": run.rank if run.method == "lora" else "",  # the other methods have no LoRA
            "alpha": run.alpha if run.method == "lora" else "",
            "trainable": f"{run.trainable:,}" if run.trainable else "",
            "steps": run.steps,
            "train time (s)": round(run.train_seconds, 1),
            "size on disk (MB)": megabytes(run.size_bytes),
            "model": Path(run.model).name,
            "preset": run.preset or "",
            "device": run.device,
            "created": run.created.replace("T", " ").split("+")[0],
        }
        for name, run in runs
    ]
    return pd.DataFrame(rows, columns=HISTORY_COLUMNS)


METHOD_LABELS = {
    "lora": "LoRA",
    "last-block": "last block",
    "full": "full fine-tuning",
    BASELINE_METHOD: "TF-IDF baseline (no LLM)",
}
METHOD_COLUMNS = ["method", "test acc. (%)", "validation acc. (%)", "trainable", "train time (s)", "size on disk (MB)", "run"]


def megabytes(size: int | None) -> str:
    """A size in MB to three figures (a baseline's 0.6, a full model's 498); empty when nothing was saved."""
    return f"{size / 1e6:,.3g}" if size is not None else ""


def methods_frame(runs: Sequence[tuple[str, RunSummary]]) -> pd.DataFrame | None:
    """The newest finished run of each method, side by side: what each costs and what it gets."""
    rows = [
        {
            "method": METHOD_LABELS.get(run.method, run.method),
            "test acc. (%)": percent(run.test_accuracy),
            "validation acc. (%)": percent(run.validation_accuracy),
            "trainable": f"{run.trainable:,}" if run.trainable else "",
            "train time (s)": round(run.train_seconds, 1),
            "size on disk (MB)": megabytes(run.size_bytes),
            "run": name,
        }
        for name, run in methods_side_by_side(runs)
    ]
    return pd.DataFrame(rows, columns=METHOD_COLUMNS) if rows else None


def overlay_frame(runs: Sequence[tuple[str, RunSummary]], chosen: Sequence[str]) -> pd.DataFrame | None:
    """Long format for one LinePlot: train and validation loss of every chosen run, against steps."""
    picked = [(name, run) for name, run in runs if name in chosen]
    short = [name.rsplit("/", 1)[-1] for name, _ in picked]  # "rank4", not "grid-.../rank4": legends cut long names
    labels = short if len(set(short)) == len(short) else [name for name, _ in picked]
    rows = []
    for label, (_, run) in zip(labels, picked, strict=True):
        for point in run.losses:
            step = int(point["step"]) + 1  # the book counts evaluations from step 0; the Train tab counts steps taken
            rows.append({"step": step, "loss": float(point["train_loss"]), "run": f"{label} · train"})
            rows.append({"step": step, "loss": float(point["validation_loss"]), "run": f"{label} · validation"})
    return pd.DataFrame(rows) if rows else None


EMPTY_OVERLAY = pd.DataFrame({"step": pd.Series(dtype="int64"), "loss": pd.Series(dtype="float64"), "run": pd.Series(dtype="object")})


def parse_values(text: str | None, kind: type, what: str) -> tuple:
    """ "8, 16 32" -> (8.0, 16.0, 32.0): numbers separated by commas or spaces; nothing: ()."""
    if not isinstance(text, str):
        raise ConfigError(f"{what}: type numbers separated by commas")
    try:
        return tuple(kind(token) for token in NUMBER.findall(text))
    except ValueError:
        raise ConfigError(f"{what}: {text.strip()[:40]!r} is not a list of {'whole ' if kind is int else ''}numbers; type e.g. 1, 2, 3") from None


def whole_numbers(values: Sequence[Any] | None, what: str) -> tuple[int, ...]:
    """Ticked whole numbers (sent as numbers or text); anything else is refused by name, never an internal fault."""
    try:
        return tuple(int(value) for value in values or ())
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{what}: choose from {', '.join(map(str, RANK_CHOICES))}") from None


def grid_of(ranks: Sequence[Any], alphas: str, scalings: Sequence[str], lrs: str, presets: Sequence[str], layers: Sequence[str], seeds: str) -> Grid:
    """The grid the Runs tab's fields describe (an empty field keeps the Model & LoRA value)."""
    return Grid(
        rank=whole_numbers(ranks, "ranks"),
        alpha=parse_values(alphas, float, "alphas"),
        scaling=tuple(scalings or ()),
        lr=parse_values(lrs, float, "learning rates"),
        preset=tuple(presets or ()),
        targets=targets_named(layers or ()),
        seed=parse_values(seeds, int, "seeds"),
    )


def grid_preview(grid: Grid) -> str:
    if not grid.varied:
        return "Choose at least one value to try (for instance a few ranks)."
    sizes = " × ".join(plural(len(getattr(grid, name)), SETTING_WORDS[name]) for name in grid.varied)
    too_many = f" That is more than the {MAX_GRID_RUNS} a grid may hold: choose fewer values." if grid.size > MAX_GRID_RUNS else ""
    return f"**{sizes} = {plural(grid.size, 'run')}**, each with the other settings of *Model & LoRA*.{too_many}"


def grid_names(root: Path, views: Sequence[RunView]) -> list[str]:
    """Grid folders, newest first: from the queue and from the runs folder (grids and older sweeps)."""
    names = {view.run.grid for view in views if view.run.grid}
    if root.is_dir():
        names |= {folder.name for folder in root.iterdir() if folder.is_dir() and folder.name.startswith(("grid-", "sweep-"))}
    return sorted(names, reverse=True)


def pick_axes(x: str | None, y: str | None, changing: Sequence[str]) -> tuple[str, str]:
    """The heat map's two settings: those chosen, else the first settings the grid varied."""
    axes = list(dict.fromkeys(name for name in (x, y) if name in GRID_SETTINGS))
    for name in (*changing, *GRID_SETTINGS):
        if len(axes) == 2:
            break
        if name not in axes:
            axes.append(name)
    return axes[0], axes[1]


class RunsTab:
    """The Runs tab's handlers over the app's Lab."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab

    @property
    def out(self) -> Path:
        return Path(self.lab.settings.out)

    # --- the queue ----------------------------------------------------------------------------

    def queue(self, last: tuple | None = None, request: gr.Request | None = None) -> tuple[Any, ...]:
        """The queue table, the pick list of runs that can still be acted on, and how many runs have ended
        (the comparison redraws when it changes); nothing when unchanged since `last`."""
        lab = self.lab
        visitor = lab.room.visitor(request)
        views = lab.scheduler.views()
        key = tuple((v.run.id, v.run.state, v.position, progress_words(v)) for v in views)
        if last is not None and key == last:
            return gr.skip(), gr.skip(), last, gr.skip()
        newest_first = [v.run for v in sorted(views, key=lambda v: v.run.queued_at, reverse=True)]
        open_runs = [run for run in newest_first if not run.ended]
        resumable = [run for run in newest_first if run.ended and lab.can_resume(run, visitor)][:MAX_RESUMABLE_CHOICES]
        choices = [(" · ".join(filter(None, (run.id, run.config.owner, whose(run, visitor, lab.room.on)))), run.id) for run in open_runs]
        choices += [(" · ".join(filter(None, (run.id, run.config.owner, f"{run.state}, can resume"))), run.id) for run in resumable]
        return queue_frame(views, visitor, lab.room.on), gr.Dropdown(choices=choices), key, sum(v.run.ended for v in views)

    def controls_for(self, run_id: str | None, request: gr.Request | None = None) -> tuple[Any, ...]:
        """The queue's buttons for the picked run: disabled, with the reason, when it is someone else's (in a room)."""
        lab = self.lab
        run = next((view.run for view in lab.scheduler.views() if view.run.id == run_id), None) if run_id else None
        visitor = lab.room.visitor(request)
        allowed = run is None or visitor.may_act_on(run)
        note = "" if allowed else f"*{refusal(run, 'move, cancel, stop or resume')}.*"
        waiting_or_running = allowed and (run is None or not run.ended)
        return (*[gr.Button(interactive=waiting_or_running)] * 4, gr.Button(interactive=run is not None and lab.can_resume(run, visitor)), note)

    def buttons_for(self, run_id: str | None, request: gr.Request | None = None) -> tuple[Any, ...]:
        """`controls_for`'s buttons alone: for a pick the queue's refresh changed, which must not wipe the note an action left."""
        return self.controls_for(run_id, request)[:5]

    def move_up(self, run_id: str | None, request: gr.Request | None = None) -> str:
        self._move(run_id, 1, request)
        return f"Moved {run_id} one place up."

    def move_down(self, run_id: str | None, request: gr.Request | None = None) -> str:
        self._move(run_id, -1, request)
        return f"Moved {run_id} one place down."

    def _move(self, run_id: str | None, places: int, request: gr.Request | None) -> None:
        """In a room a visitor moves a run among their own waiting runs only: nobody jumps ahead of another visitor."""
        visitor = self.lab.room.visitor(request)
        among_own = self.lab.room.on and not visitor.presenter
        self._act(run_id, "move", visitor, lambda chosen: self.lab.scheduler.move(chosen, places, among_own))

    def cancel(self, run_id: str | None, request: gr.Request | None = None) -> str:
        self._act(run_id, "cancel", self.lab.room.visitor(request), self.lab.scheduler.cancel)
        return f"Cancelled {run_id}: it left the queue."

    def stop(self, run_id: str | None, request: gr.Request | None = None) -> str:
        run = self._act(run_id, "stop", self.lab.room.visitor(request), self.lab.scheduler.stop)
        return f"Stopping {run_id} after its current step." if run.state == "running" else f"Cancelled {run_id}: it left the queue."

    def resume(self, run_id: str | None, request: gr.Request | None = None) -> str:
        run = self.lab.resume(run_id, self.lab.room.visitor(request))
        return f"Run {run.id} is queued to resume from its last checkpoint, in its own folder; Watch shows it on the Train tab."

    def watch(self, run_id: str | None) -> tuple[Any, gr.Tabs]:
        """Point the Train tab at the picked run and open it (anyone may watch any run)."""
        if not run_id or not isinstance(run_id, str):
            raise gr.Error("pick a run first", duration=5)
        return run_id, gr.Tabs(selected="train")

    def _act(self, run_id: str | None, act: str, visitor: Visitor, do: Any) -> Any:
        """Do `do(run_id)` if `visitor` may `act` on that run (any run id of the queue is accepted: scripts send them)."""
        if not run_id or not isinstance(run_id, str):
            raise gr.Error("pick a run first: the list holds the waiting and running runs", duration=5)
        try:
            self.lab.room.check(visitor, self.lab.scheduler.queue.get(run_id), act)
            return do(run_id)
        except LoRALabError as error:
            raise user_error(error) from None

    # --- the room (presenter only) ---------------------------------------------------------------

    def room_panel(self, request: gr.Request | None = None) -> tuple[Any, Any]:
        """The room's settings: shown to the presenter only."""
        presenter = self.lab.room.on and self.lab.room.visitor(request).presenter
        return gr.Accordion(visible=presenter), gr.Number(value=self.lab.room.max_waiting)

    def set_room_limit(self, most_waiting: float | None, request: gr.Request | None = None) -> str:
        """The presenter sets the most waiting runs per visitor (a grid counts each of its runs)."""
        limit = self.lab.room.set_limit(self.lab.room.visitor(request), most_waiting)
        return f"Each visitor may now have at most {limit} waiting {'run' if limit == 1 else 'runs'} (the presenter has no limit)."

    # --- adding runs ----------------------------------------------------------------------------

    def preview(self, ranks: Sequence[Any], alphas: str, scalings: Sequence[str], lrs: str, presets: Sequence[str], layers: Sequence[str], seeds: str) -> str:
        try:
            return grid_preview(grid_of(ranks, alphas, scalings, lrs, presets, layers, seeds))
        except LoRALabError as error:
            return f"**Not a grid yet:** {error}"

    def add_grid(
        self,
        ranks: Sequence[Any],
        alphas: str,
        scalings: Sequence[str],
        lrs: str,
        presets: Sequence[str],
        layers: Sequence[str],
        seeds: str,
        owner: str = "",
        request: gr.Request | None = None,
        **controls: Any,
    ) -> str:
        """Queue every combination of the chosen values over the Model & LoRA settings, for the visitor (each run counts towards their limit)."""
        settings = Controls(**controls)  # Gradio sends the controls by name: they name the API's parameters
        self.lab.check_model(settings.model)
        visitor = self.lab.room.visitor(request)
        try:
            base = run_config(self.lab.settings, settings, owner)
            runs = grid_of(ranks, alphas, scalings, lrs, presets, layers, seeds).expand(base)
            self.lab.check_batch_size(base.train.batch_size)
            limit = self.lab.room.limit_for(visitor)
            queued = self.lab.scheduler.submit([cfg for _, cfg in runs], [label for label, _ in runs], visitor.key, limit)
        except LoRALabError as error:
            raise user_error(error) from None
        gr.Info(f"{len(queued)} runs queued in {queued[0].grid}: watch them here, and each one on the Train tab.", duration=TOAST_SECONDS)
        return f"Queued {len(queued)} runs in {queued[0].grid}."

    # --- comparing a grid ---------------------------------------------------------------------

    def grids(self) -> gr.Dropdown:
        names = grid_names(self.out, self.lab.scheduler.views())
        return gr.Dropdown(choices=names, value=names[0] if names else None)

    def compare(self, grid: str | None, x: str | None, y: str | None) -> tuple[str, Figure | None, Figure | None]:
        """The grid's heat map over `x` and `y` (defaults: its first two varied settings) and accuracy against cost."""
        if not grid:
            return "No grid yet: add one above; its results show here as its runs finish.", None, None
        if not isinstance(grid, str) or "/" in grid or grid.startswith("."):
            raise gr.Error("choose a grid from the list", duration=5)
        points = grid_points(list_runs(self.out / grid))
        if not points:
            return f"No run of {grid} has finished yet: the pictures come as runs end.", None, None
        changing = varied(points)
        x, y = pick_axes(x, y, changing)
        by = [name for name in changing if name != "seed"]  # seeds are what the spread is over
        total = sum(1 for view in self.lab.scheduler.views() if view.run.grid == grid) or len(points)
        note = f"{len(points)} of {total} runs of {grid} finished with a test accuracy. Varied: {', '.join(SETTING_WORDS[n] for n in changing) or 'nothing'}."
        return note, heat_map(points, x, y), accuracy_against_cost(points, by)

    # --- the history ---------------------------------------------------------------------------

    def history(self) -> pd.DataFrame | None:
        return history_frame(all_runs(self.out))

    def methods(self) -> pd.DataFrame | None:
        return methods_frame(all_runs(self.out))

    def fit_baseline(self, preset_name: str) -> tuple[str, pd.DataFrame | None]:
        """Fit the classical baseline on the splits this app's runs read (as `preset_name` reads the file), into a new run folder."""
        from engine.runs.baseline_run import new_baseline_folder, run_baseline  # scikit-learn loads when asked, not at every start

        with engine_errors_as_toasts("cpu", "fitting the baseline"):
            cfg = RunConfig.from_preset(preset_name, **data_settings(self.lab.settings))  # an unknown preset is refused before a folder is made
            result, _ = run_baseline(replace(cfg, out_dir=str(new_baseline_folder(self.out))))
        test = result.final["test"].accuracy
        said = f"The classical baseline (no language model) got **{100 * test:.2f} %** of the test messages right; its cost is in the table."
        return said, self.methods()

    def overlay_choices(self) -> gr.Dropdown:
        """Runs with loss curves; the newest two chosen (the picker's choices, so not a plain value)."""
        names = [name for name, run in all_runs(self.out) if run.losses]
        return gr.Dropdown(choices=names, value=names[:2], multiselect=True, allow_custom_value=True)

    def overlay(self, chosen: Sequence[str] | None) -> pd.DataFrame:
        """The chosen runs' loss curves; an empty frame (not None) when none is chosen.

        A plot that goes back to None after drawing leaves the browser erring as it is taken down,
        so the page always gets a frame, and a colour map after it (`overlay_colors`).
        """
        if chosen is not None and not isinstance(chosen, list | tuple):
            raise gr.Error("choose runs from the list")
        frame = overlay_frame(all_runs(self.out), list(chosen or ()))
        return EMPTY_OVERLAY if frame is None else frame

    def overlay_colors(self, chosen: Sequence[str] | None) -> gr.LinePlot:
        """A colour per series of the chosen runs, sent after their frame: a new colour map makes the plot
        draw itself afresh with the frame it holds, so its legend follows the runs (see PALETTE's note)."""
        return gr.LinePlot(color_map=series_colors(self.overlay(chosen)["run"]))


def build_runs_tab(runs: RunsTab, demo: gr.Blocks, controls: ControlWidgets, follow: gr.Dropdown, tabs: gr.Tabs) -> None:
    """The Runs tab, wired: grids queue the `controls`; Watch points the Train tab's `follow` list at a run."""
    setting_choices = [(words, name) for name, words in SETTING_WORDS.items()]
    with gr.Tab("Runs", id="runs") as tab:
        gr.Markdown("### The queue\nEvery run anyone added, newest first. Runs start in queue order as workers come free; a failed run never stops the others.")
        queue_table = gr.Dataframe(
            headers=QUEUE_COLUMNS,
            label="Runs waiting, running and finished",
            interactive=False,
            wrap=True,
            max_height=380,
            column_widths=text_last(len(QUEUE_COLUMNS), "240px"),  # a failed run's reason wraps in its note
            elem_id="queue",
        )
        with gr.Row(equal_height=True):
            # Any run id of the queue is accepted (scripts send them); the handlers check it.
            picked = gr.Dropdown(
                [], label="Run", info="a waiting or running run, or one that stopped and can resume", allow_custom_value=True, elem_id="queue-pick", scale=3
            )
            up = gr.Button("Move up", size="sm", elem_id="queue-up")
            down = gr.Button("Move down", size="sm", elem_id="queue-down")
            cancel = gr.Button("Cancel", size="sm", elem_id="queue-cancel")
            stop = gr.Button("Stop", variant="stop", size="sm", elem_id="queue-stop")
            resume = gr.Button("Resume", size="sm", elem_id="queue-resume")
            watch = gr.Button("Watch on the Train tab", size="sm", elem_id="queue-watch")
        queue_note = gr.Markdown(elem_id="queue-note")
        with gr.Accordion("The room (presenter only)", open=True, visible=False, elem_id="room-settings") as room_settings, gr.Row(equal_height=True):
            most_waiting = gr.Number(
                runs.lab.room.max_waiting,
                label="Most waiting runs per visitor",
                info="a grid counts each of its runs; the presenter has no limit",
                precision=0,
                minimum=1,
                maximum=MAX_WAITING,
                elem_id="room-most-waiting",
                scale=2,
            )
            apply_limit = gr.Button("Apply", size="sm", elem_id="room-apply", scale=1)

        gr.Markdown(
            "### Add a grid of runs\nEvery combination of the values ticked or typed below, each with the other settings of *Model & LoRA*. "
            "Leave a field empty to keep its *Model & LoRA* value. Several seeds show how much a result varies by chance."
        )
        with gr.Row():
            ranks = gr.CheckboxGroup(list(RANK_CHOICES), value=list(DEFAULT_RANKS), label="Ranks", elem_id="grid-ranks", scale=3)
            alphas = gr.Textbox("", label="Alphas", placeholder="e.g. 8, 16", max_lines=1, elem_id="grid-alphas", scale=1)
            seeds = gr.Textbox("", label="Seeds", placeholder="e.g. 1, 2, 3", max_lines=1, elem_id="grid-seeds", scale=1)
        with gr.Accordion("More settings to vary", open=False), gr.Row():
            scalings = gr.CheckboxGroup(list(SCALINGS), label="Scaling", elem_id="grid-scalings")
            presets = gr.CheckboxGroup(list(PRESETS), label="Presets (applied first)", elem_id="grid-presets")
            layers = gr.CheckboxGroup(list(TARGET_SETS), label="Layers LoRA adapts", elem_id="grid-layers")
            lrs = gr.Textbox("", label="Learning rates", placeholder="e.g. 0.0004, 0.0008", max_lines=1, elem_id="grid-lrs")
        with gr.Row(equal_height=True):
            owner = gr.Textbox("", label="Your name (optional)", placeholder="shown beside your runs", max_lines=1, elem_id="grid-owner", scale=1)
            preview = gr.Markdown(grid_preview(Grid(rank=DEFAULT_RANKS)), elem_id="grid-preview")
            add = gr.Button("Add the grid to the queue", variant="primary", elem_id="grid-add", scale=1)
        grid_cost = gr.Markdown(elem_id="grid-cost")  # what the grid will cost: ui/cost_view.py

        gr.Markdown("### What a grid found")
        with gr.Row():
            grid = gr.Dropdown([], label="Grid", elem_id="compare-grid", scale=2)
            x_axis = gr.Dropdown(setting_choices, value=None, label="Heat map across", info="default: what the grid varied", elem_id="compare-x", scale=1)
            y_axis = gr.Dropdown(setting_choices, value=None, label="and", elem_id="compare-y", scale=1)
        compare_note = gr.Markdown(elem_id="compare-note")
        with gr.Row():
            heat = gr.Plot(label="Test accuracy by setting", show_label=False, elem_id="compare-heat", scale=2)
            cost = gr.Plot(label="Accuracy against cost", show_label=False, elem_id="compare-cost", scale=3)

        gr.Markdown("### History")
        refresh = gr.Button("Refresh", size="sm", elem_id="runs-refresh")
        methods = gr.Dataframe(
            headers=METHOD_COLUMNS,
            label="Is the language model worth it? The newest finished run of each method, side by side",
            interactive=False,
            wrap=True,
            elem_id="methods-compared",
        )
        with gr.Row():
            gr.Markdown(
                "Choose the method on *Model & LoRA*. The classical baseline reads the same messages with no language model at all: "
                "word counts and logistic regression (also `python -m engine baseline`). "
                f"The book's figures on an A100 graphics card, for reference: {BOOK_A100}.",
                elem_id="methods-note",
            )
            baseline = gr.Button("Fit the classical baseline (under a minute)", size="sm", elem_id="fit-baseline", scale=0)
        baseline_note = gr.Markdown(elem_id="baseline-note")
        history = gr.Dataframe(
            headers=HISTORY_COLUMNS,
            label="Every run's record, as of the last refresh (each run's folder is under the runs folder)",
            interactive=False,
            max_height=300,
            elem_id="run-history",
        )
        build_run_entry(AnatomyTab(runs.lab), history, HISTORY_COLUMNS.index("run"))
        chosen = gr.Dropdown([], multiselect=True, label="Runs to compare", allow_custom_value=True, elem_id="overlay-runs")  # choices come on refresh
        overlay = gr.LinePlot(
            x="step",
            y="loss",
            color="run",
            title="Loss of the chosen runs",  # short: a title wider than a phone is cut
            x_title="step (loss estimated every N steps)",
            x_axis_format=WHOLE_NUMBERS,
            height=300,
            elem_id="overlay",
        )
        last_queue, ended = gr.State(None), gr.State(0)
        timer = gr.Timer(POLL_SECONDS, active=True)

    grid_fields = [ranks, alphas, scalings, lrs, presets, layers, seeds]
    gr.on([field.change for field in grid_fields], runs.preview, grid_fields, preview, api_name="grid_preview", show_progress="hidden", concurrency_limit=None)
    build_grid_cost_line(CostView(runs.lab), demo, controls, grid_fields, grid_cost)
    add_inputs = dict(zip(("ranks", "alphas", "scalings", "lrs", "presets", "layers", "seeds"), grid_fields, strict=True))
    queue_view = [queue_table, picked, last_queue, ended]
    add.click(runs.add_grid, inputs_kwargs={**add_inputs, "owner": owner, **controls.by_name()}, outputs=queue_note, api_name="add_grid").then(
        runs.queue, None, queue_view, api_name="queue_after_add", show_progress="hidden", api_visibility="private"
    ).then(runs.grids, None, grid, api_name="grids_after_add", show_progress="hidden", api_visibility="private").then(
        runs.compare, [grid, x_axis, y_axis], [compare_note, heat, cost], api_name="compare_after_add", show_progress="hidden", api_visibility="private"
    )  # follow-ups named apart: Gradio would name them after their functions, taking /queue, /grids and /compare from the events below

    timer.tick(runs.queue, last_queue, queue_view, api_name="queue", show_progress="hidden", concurrency_limit=None)
    gr.on([demo.load, tab.select], runs.queue, None, queue_view, api_name="queue_now", show_progress="hidden", concurrency_limit=None)
    queue_buttons = [up, down, cancel, stop, resume, queue_note]
    # A visitor's pick sets the buttons and the note (why a run is not theirs); a pick the queue's refresh changed (a run
    # that ended, or became resumable) sets the buttons only, leaving the note of what was just done ("Stopping ...").
    picked.input(runs.controls_for, picked, queue_buttons, api_name="queue_controls", show_progress="hidden", concurrency_limit=None)
    picked.change(
        runs.buttons_for, picked, queue_buttons[:5], api_name="queue_buttons", show_progress="hidden", api_visibility="private", concurrency_limit=None
    )
    demo.load(runs.room_panel, None, [room_settings, most_waiting], api_name="room_panel", show_progress="hidden", concurrency_limit=None)
    apply_limit.click(runs.set_room_limit, most_waiting, queue_note, api_name="set_room_limit", concurrency_limit=None)
    up.click(runs.move_up, picked, queue_note, api_name="move_up", concurrency_limit=None)
    down.click(runs.move_down, picked, queue_note, api_name="move_down", concurrency_limit=None)
    cancel.click(runs.cancel, picked, queue_note, api_name="cancel_run", concurrency_limit=None)
    stop.click(runs.stop, picked, queue_note, api_name="stop_run", concurrency_limit=None)
    resume.click(runs.resume, picked, queue_note, api_name="resume_run", concurrency_limit=None).then(
        runs.queue, None, queue_view, api_name="queue_after_resume", show_progress="hidden", api_visibility="private"
    )
    watch.click(runs.watch, picked, [follow, tabs], api_name="watch_run", concurrency_limit=None)

    compare_inputs = [grid, x_axis, y_axis]
    gr.on([tab.select, refresh.click], runs.grids, None, grid, api_name="grids", show_progress="hidden").then(
        runs.compare, compare_inputs, [compare_note, heat, cost], api_name="compare_after_grids", show_progress="hidden", api_visibility="private"
    )
    gr.on(
        [grid.input, x_axis.input, y_axis.input, ended.change],
        runs.compare,
        compare_inputs,
        [compare_note, heat, cost],
        api_name="compare",
        show_progress="hidden",
    )
    gr.on([tab.select, refresh.click], runs.methods, None, methods, api_name="methods_compared", show_progress="hidden")
    fitted = baseline.click(runs.fit_baseline, controls.preset_name, [baseline_note, methods], api_name="fit_baseline", concurrency_limit=1)
    fitted.then(runs.history, None, history, api_name="history_after_baseline", show_progress="hidden", api_visibility="private")
    gr.on([tab.select, refresh.click], runs.history, None, history, api_name="run_history", show_progress="hidden").then(
        runs.overlay_choices, None, chosen, api_name="overlay_runs", show_progress="hidden"
    )
    chosen.change(runs.overlay, chosen, overlay, api_name="overlay", show_progress="hidden").then(
        runs.overlay_colors, chosen, overlay, api_name="overlay_colors", show_progress="hidden"
    )
