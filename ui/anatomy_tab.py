"""The "Inside the adapter" tab: what a run's LoRA learned, how to run it again, and how to take it away.

For a run with a saved adapter: one sentence on its updates, a heat map of layers × kinds (at the end,
or at any loss estimate the run recorded), each layer's spectrum, how the updates grew during training,
the run's command line and gradio_client call, and Download buttons for the PEFT and transformers
exports (written into the run's folder, which the app serves, and zipped).
"""

import functools
import shlex
import shutil
from pathlib import Path
from typing import Any

import gradio as gr
from matplotlib.figure import Figure

from engine.adapter import TENSORS_FILE
from engine.anatomy import Anatomy, inspect_adapter, layers_of_point, no_lora_adapter, summary
from engine.config import EXPORT_FORMATS, RunConfig
from engine.errors import ConfigError
from engine.export import export_adapter, zipped
from engine.methods import METHOD_WORDS
from engine.reproduce import reproduction
from engine.runs.adapters import KeptAdapter, kept_adapter
from engine.runs.history import RunSummary, all_runs
from engine.runs.record import ADAPTER_DIR, adapter_record, read_record
from ui.anatomy_view import BEST, GROWTH_Y, KIND_COLORS, MEASURES, SAVED, growth_frame, heat_map_html, moment_choices, spectra_figure
from ui.guards import engine_errors_as_toasts
from ui.lab import Lab
from ui.live_axes import WHOLE_NUMBERS

EXPORTS_DIR = "exports"  # inside a run's folder: the exports and their zips
FORMAT_WORDS = {"peft": "a PEFT adapter", "transformers": "a whole transformers model"}
assert set(FORMAT_WORDS) == set(EXPORT_FORMATS)
NO_RUN = "No run with a saved adapter yet: train one on the Train tab, then come back."


@functools.lru_cache(maxsize=16)
def _inspected(tensors: str, mtime_ns: int) -> Anatomy:  # the file's version is part of the key
    return inspect_adapter(Path(tensors).parent)


class AnatomyTab:
    """The tab's handlers over the app's Lab (its runs folder)."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab

    @property
    def out(self) -> Path:
        return Path(self.lab.settings.out)

    def runs_with_adapters(self) -> list[str]:
        """Runs whose folder holds an adapter (a finished run's, or a running one's last checkpoint), newest first."""
        return [name for name, run in all_runs(self.out) if (run.folder / ADAPTER_DIR / TENSORS_FILE).is_file()]

    def choices(self) -> gr.Dropdown:
        names = self.runs_with_adapters()
        return gr.Dropdown(choices=names, value=names[0] if names else None, allow_custom_value=True)

    def run_summary(self, run: str | None) -> RunSummary:
        """A run from the list (a name from anywhere else is refused: no typed path reaches the disk)."""
        if not run:
            raise gr.Error(NO_RUN, duration=5)
        found = dict(all_runs(self.out)).get(run) if isinstance(run, str) else None
        if found is None or not (found.folder / ADAPTER_DIR / TENSORS_FILE).is_file():
            raise gr.Error(f"no run called {str(run)[:80]!r} with a saved adapter: press Refresh and choose one from the list", duration=5)
        return found

    def anatomy(self, adapter: Path) -> Anatomy:
        tensors = adapter / TENSORS_FILE
        with engine_errors_as_toasts(self.lab.settings.device, "reading the adapter"):
            return _inspected(str(tensors.resolve()), tensors.stat().st_mtime_ns)

    def run_views(self, run: str | None) -> tuple[Any, ...]:
        """A chosen run's moments to look at (first the adapter Classify answers with), its growth, and how to run it again."""
        if not run:
            return gr.Dropdown(choices=[], value=None), None, "", ""
        found = self.run_summary(run)
        folder, best = found.folder, best_apart(found)
        record = read_record(folder) or {}
        points = record.get("anatomy") or []
        choices = moment_choices(points, record.get("checkpoint_step") or record.get("steps"), best.step if best else None)
        moments = gr.Dropdown(choices=choices, value=BEST if best else SAVED)
        command, client = reproduce_texts(record)
        return moments, growth_frame(points), command, client

    def show(self, run: str | None, measure: str, moment: str | None) -> tuple[str, str, Figure | None]:
        """The sentence, the heat map and the spectra of the adapter as saved, or at a recorded moment."""
        if not run:
            return NO_RUN, "", None
        if measure not in MEASURES:
            raise gr.Error("choose what the colours show from the list", duration=5)
        found = self.run_summary(run)
        folder, record = found.folder, read_record(found.folder) or {}
        method = record.get("config", {}).get("method", "lora")
        if method in METHOD_WORDS and method != "lora":
            said = no_lora_adapter(method)
            return f"**{said[0].upper()}{said[1:]}.**", "", None
        best = best_apart(found) if moment == BEST else None
        anatomy = self.anatomy(best.folder if best else folder / ADAPTER_DIR)
        n_blocks = _blocks(anatomy)
        if moment in (None, "", SAVED, BEST):
            layers, complete, when = anatomy.layers, True, f"Best adapter (step {best.step})" if best else "As saved"
        else:
            point = next((p for p in record.get("anatomy") or [] if str(p.get("steps")) == str(moment)), None)
            if point is None:
                raise gr.Error("this run recorded no such moment: choose one from the list", duration=5)
            layers, complete, when = layers_of_point(point["layers"]), False, f"After step {moment}"
        said = summary(Anatomy(anatomy.base_model, anatomy.rank, anatomy.scale, layers))
        sentence = f"**{when}: {said[0].upper()}{said[1:]}**"
        return sentence, heat_map_html(layers, measure, n_blocks), spectra_figure(layers, n_blocks, complete)

    def download(self, run: str | None, fmt: str, moment: str | None = SAVED) -> str:
        """Export the run's adapter (its best for the moment BEST, else its last) as `fmt` into its folder and zip it
        (once per adapter version); the zip's path."""
        if fmt not in EXPORT_FORMATS:
            raise gr.Error(f"unknown format {str(fmt)[:20]!r}: choose {' or '.join(EXPORT_FORMATS)}", duration=5)
        found = self.run_summary(run)
        folder, best = found.folder, best_apart(found) if moment == BEST else None
        adapter, which = (best.folder, "-best") if best else (folder / ADAPTER_DIR, "")
        target = folder / EXPORTS_DIR / f"{folder.name}{which}-{fmt}.zip"
        if target.is_file() and target.stat().st_mtime_ns >= (adapter / TENSORS_FILE).stat().st_mtime_ns:
            return str(target)  # made from this very adapter already
        with engine_errors_as_toasts("cpu", f"exporting {FORMAT_WORDS[fmt]}"):
            record = adapter_record(read_record(folder), adapter.name)
            exported = export_adapter(adapter, folder / EXPORTS_DIR / f"{fmt}{which}", fmt, record=record)
            try:
                return str(zipped(exported.folder, target))
            finally:
                shutil.rmtree(exported.folder, ignore_errors=True)  # the zip holds it: a whole model is not kept twice

    def reproduce(self, run: object) -> tuple[str, str, str]:
        """A run of the history's: which, its command line and its gradio_client call."""
        found = dict(all_runs(self.out)).get(run) if isinstance(run, str) else None
        if found is None:
            raise gr.Error("choose a run in the table (press Refresh if it is new)", duration=5)
        command, client = reproduce_texts(read_record(found.folder) or {})
        return f"**{run}**: how to run it again. Its adapter's anatomy and downloads are on *Inside the adapter*.", command, client

    def download_peft(self, run: str | None, moment: str | None = SAVED) -> str:
        return self.download(run, "peft", moment)

    def download_transformers(self, run: str | None, moment: str | None = SAVED) -> str:
        return self.download(run, "transformers", moment)


def best_apart(run: RunSummary) -> KeptAdapter | None:
    """The run's best adapter where it is kept apart from its last (the one Classify answers with by default)."""
    kept = kept_adapter(run, "best")
    return kept if kept.which == "best" and kept.adapter != ADAPTER_DIR else None


def _blocks(anatomy: Anatomy) -> int:
    blocks = [layer.block for layer in anatomy.layers if layer.block is not None]
    return max(blocks) + 1 if blocks else 0


def reproduce_texts(record: dict[str, Any]) -> tuple[str, str]:
    """The run's command line and gradio_client call: from its record, or worked out from its config (older runs)."""
    said = record.get("reproduce")
    if said is None:
        try:
            said = reproduction(RunConfig.from_dict(record.get("config") or {}))
        except ConfigError:
            return "# this run's record holds no readable settings", ""
    command = said.get("command")
    shown = shell_lines(command) if command else f"# {said.get('command_problem') or 'no command line gives this run'}"
    return shown, said.get("client") or ""


def shell_lines(command: str) -> str:
    """A long command one option a line (continued with backslashes): readable on a phone, the same command in a shell."""
    words = shlex.split(command)
    lines, line = [], []
    for word in words:
        if word.startswith("--") and line:
            lines.append(shlex.join(line))
            line = []
        line.append(word)
    lines.append(shlex.join(line))
    return " \\\n  ".join(lines)


def build_anatomy_tab(anatomy: AnatomyTab) -> None:
    """The tab, wired; opening it (or Refresh) lists the runs with an adapter and shows the newest."""
    with gr.Tab("Inside the adapter", id="anatomy") as tab:
        gr.Markdown(
            "What LoRA learned, layer by layer. Each adapted layer keeps its weights **W** frozen and learns a change "
            "**ΔW = scale · A·B** of low rank: at most *rank* directions. How big is each change, and how many directions does it really use?"
        )
        with gr.Row():
            run = gr.Dropdown([], label="Run", info="runs with a saved adapter, newest first", allow_custom_value=True, elem_id="anatomy-run", scale=3)
            refresh = gr.Button("Refresh", size="sm", elem_id="anatomy-refresh", scale=0)
        sentence = gr.Markdown(elem_id="anatomy-summary")
        with gr.Row():
            measure = gr.Radio(
                [(words, name) for name, words in MEASURES.items()], value="relative", label="Colour by", elem_id="anatomy-measure", scale=3, min_width=300
            )
            moment = gr.Dropdown(
                [],
                label="Which adapter, or when",
                info="the best or last adapter (the downloads take the one shown), or at a loss estimate",
                allow_custom_value=True,
                elem_id="anatomy-moment",
                scale=1,
                min_width=220,
            )
        heat = gr.HTML(elem_id="anatomy-heat")
        spectra = gr.Plot(label="Each layer's spectrum", show_label=False, elem_id="anatomy-spectra")
        growth = gr.LinePlot(
            x="step",
            y=GROWTH_Y,
            color="layers",
            color_map=KIND_COLORS,
            title="How the changes grew",  # short: a title wider than a phone is cut
            x_axis_format=WHOLE_NUMBERS,
            height=300,
            elem_id="anatomy-growth",
        )
        gr.Markdown("### Reproduce this run")
        command = gr.Code(language="shell", label="Command line (LoRA Lab's engine)", interactive=False, elem_id="reproduce-command")
        client = gr.Code(
            language="python", label="The same settings queued in a running LoRA Lab, with gradio_client", interactive=False, elem_id="reproduce-client"
        )
        gr.Markdown(
            "### Take it with you\n**PEFT adapter**: a few MB, for `PeftModel.from_pretrained` on transformers' GPT-2 classifier. "
            '**Whole model**: the base with every change merged in, for `pipeline("text-classification")`, with a model card. '
            "Both give LoRA Lab's answers; runs that read the book's way (the last padded position) cannot be exported."
        )
        with gr.Row():
            peft = gr.Button("Download as a PEFT adapter", elem_id="export-peft")
            whole = gr.Button("Download as a whole transformers model", elem_id="export-transformers")
        exported = gr.File(label="Your download (zip)", interactive=False, height=90, elem_id="export-file")

    views = [sentence, heat, spectra]
    shown = [run, measure, moment]
    run_outputs = [moment, growth, command, client]
    gr.on([tab.select, refresh.click], anatomy.choices, None, run, api_name="anatomy_runs", show_progress="hidden").then(
        anatomy.run_views, run, run_outputs, api_name="anatomy_run", show_progress="hidden"
    ).then(anatomy.show, shown, views, api_name="anatomy_refreshed", show_progress="hidden")
    run.input(anatomy.run_views, run, run_outputs, api_name="anatomy_run_chosen", show_progress="hidden").then(
        anatomy.show, shown, views, api_name="anatomy_chosen", show_progress="hidden"
    )
    # always_last: a pick made while the last one still draws is drawn next (Gradio's default drops it, leaving the box and the view apart).
    gr.on([measure.input, moment.input], anatomy.show, shown, views, api_name="anatomy", show_progress="hidden", trigger_mode="always_last")
    peft.click(anatomy.download_peft, [run, moment], exported, api_name="export_peft", concurrency_id="export", concurrency_limit=1)
    whole.click(anatomy.download_transformers, [run, moment], exported, api_name="export_transformers", concurrency_id="export", concurrency_limit=1)


def build_run_entry(anatomy: AnatomyTab, history: gr.Dataframe, run_column: int) -> None:
    """Below the Runs tab's history: a clicked run's command line and gradio_client call (column `run_column` names the run)."""
    with gr.Accordion("Reproduce a run: click it in the table", open=False, elem_id="run-entry") as entry:
        which = gr.Markdown(elem_id="run-entry-name")
        command = gr.Code(language="shell", label="Command line", interactive=False, elem_id="run-entry-command")
        client = gr.Code(language="python", label="gradio_client", interactive=False, elem_id="run-entry-client")

    def chosen(evt: gr.SelectData) -> tuple[Any, ...]:
        row = evt.row_value or []
        return (*anatomy.reproduce(row[run_column] if len(row) > run_column else None), gr.Accordion(open=True))

    # Private: the clicked row comes from the page (event data); scripts read run.json's "reproduce" instead.
    history.select(chosen, None, [which, command, client, entry], api_name="run_entry", api_visibility="private", show_progress="hidden")
