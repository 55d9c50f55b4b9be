"""The Data tab: download or upload the messages, their counts, a preview, token lengths and duplicates."""

import threading
from typing import Any

import gradio as gr
import pandas as pd
from matplotlib.figure import Figure
from pandas.io.formats.style import Styler

from engine.data.download import DownloadProgress
from engine.data.prepared import DataSummary, PreparedData, fetch_zip, load_summary, prepare, prepare_fetched
from engine.errors import Cancelled, DownloadError, LoRALabError
from engine.failure import one_line
from engine.tokenizer import encode
from ui.guards import discard_upload, uploaded_file, uploaded_path
from ui.lab import Lab
from ui.views import TOAST_SECONDS, text_last

PREVIEW_PER_CLASS = 3
# The histogram draws one series (and legend entry) per class up to this many classes; with more,
# the largest classes one by one and the rest as one series, so its cost does not grow with them.
MAX_HISTOGRAM_SERIES = 6
MAX_COUNTED_CLASSES = 10  # the counts table's rows per class, likewise
REPEATED_COLUMNS = ["copies", "message"]  # the count first: long messages wrap at the end
UPLOAD_HINT = "upload the SMS Spam Collection's zip (or its tab-separated file) in the box beside the Download button"
DataViews = tuple[str, Styler | None, pd.DataFrame | None, Figure | None]  # status, counts, preview, histogram


def page_of(request: gr.Request | None) -> str:
    """The browser page (or API client) an event comes from; "" for a direct call."""
    return (request.session_hash or "") if request is not None else ""


def grouped(counts: list[tuple[str, int]], most: int) -> list[tuple[str, list[str]]]:
    """(shown name, classes) per row or series: every class when there are at most `most`, else the
    `most - 1` largest and one "N other classes"."""
    if len(counts) <= most:
        return [(name, [name]) for name, _ in counts]
    ranked = [name for name, _ in sorted(counts, key=lambda item: -item[1])]
    rest = ranked[most - 1 :]
    return [(name, [name]) for name in ranked[: most - 1]] + [(f"{len(rest)} other classes", rest)]


def counts_frame(prepared: PreparedData) -> pd.DataFrame:
    s = prepared.summary
    per_class = s.class_counts  # your own data: its own labels
    rows = [
        ("messages", s.messages),
        *[(name, sum(per_class[c] for c in classes)) for name, classes in grouped(list(per_class.items()), MAX_COUNTED_CLASSES)],
        ("balanced", s.balanced),
        ("train", s.train),
        ("validation", s.validation),
        ("test", s.test),
    ]
    return pd.DataFrame(rows, columns=["", "messages"])


def counts_table(prepared: PreparedData) -> Styler:
    """The counts with thousands separators on the page; the numbers stay numbers for API callers."""
    return counts_frame(prepared).style.format("{:,}", subset=["messages"]).hide(axis="index")


def preview_frame(prepared: PreparedData) -> pd.DataFrame:
    train = prepared.splits.train
    parts = [train[train["Label"] == index].head(PREVIEW_PER_CLASS).assign(Label=name) for index, name in enumerate(prepared.splits.labels)]
    return pd.concat(parts).rename(columns={"Label": "class", "Text": "message"}).reset_index(drop=True)


def token_histogram(prepared: PreparedData) -> Figure:
    """Token counts of every balanced message by class, with the book's padding length marked."""
    figure = Figure(figsize=(7, 3.6), layout="tight")  # no pyplot: no global state shared between sessions
    axis = figure.subplots()
    everything = pd.concat([part for _, part in prepared.splits.items()])
    labels = prepared.splits.labels
    lengths: dict[str, list[int]] = {name: [] for name in labels}
    for index, text in zip(everything["Label"], everything["Text"], strict=True):  # one pass, whatever the number of classes
        lengths[labels[index]].append(len(encode(text)))
    series = grouped([(name, len(values)) for name, values in lengths.items()], MAX_HISTOGRAM_SERIES)
    colors = ["#1f77b4", "#d62728"] if len(labels) == 2 else None
    axis.hist([[n for c in classes for n in lengths[c]] for _, classes in series], bins=40, stacked=True, label=[name for name, _ in series], color=colors)
    cutoff = prepared.summary.longest_train_tokens
    axis.axvline(cutoff, color="black", linestyle="--", label=f"padding cut-off (book): {cutoff} tokens")
    axis.set_title("Tokens per message; the book pads every message to the longest training one", fontsize=10)
    axis.set_xlabel("tokens per message")
    axis.set_ylabel("messages")
    axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncols=3, fontsize=8, frameon=False)  # under the axis, never on the bars
    return figure


def data_outputs(prepared: PreparedData, status: str) -> tuple[str, Styler, pd.DataFrame, Figure]:
    return status, counts_table(prepared), preview_frame(prepared), token_histogram(prepared)


def download_failure(failures: list[str], error: Exception) -> str:
    """What a failed Download says: each source's reason, and the offline way in, by the upload box."""
    tried = "".join(f"\n- {failure}" for failure in failures) or f"\n- {one_line(str(error))}"
    return f"**The download failed.** No internet here? Then {UPLOAD_HINT}: it works offline.\n\nSources tried:{tried}"


def quality_markdown(summary: DataSummary | None) -> str:
    if summary is None:
        return "Data quality: no data yet."
    d = summary.duplicates or {}
    if not d:
        return "Data quality: this data was prepared by an older version; prepare it again to see its duplicates."
    across = d.get("across_splits", {})
    shared = ", ".join(f"{pair}: {n}" for pair, n in across.items())
    state = (
        "**De-duplicated**: one copy of each (label, text) pair was kept before balancing and splitting."
        if summary.deduplicated
        else "Not de-duplicated: tick *De-duplicate before splitting* and prepare the data again to drop the extra copies."
    )
    return (
        f"### Data quality\n{d.get('messages', 0):,} messages, {d.get('distinct_texts', 0):,} distinct texts: "
        f"**{d.get('repeated_texts', 0):,} texts occur more than once** ({d.get('extra_copies', 0):,} extra copies); "
        f"{d.get('conflicting_labels', 0):,} texts carry two different labels.\n\n"
        f"Texts found in two splits (a test message also seen in training measures memory, not learning): {shared or 'none'}.\n\n{state}"
        f"\n\n{reading_sentence(summary.parse)}"
    )


def reading_sentence(parse: str) -> str:
    """How the file was read, in one sentence: the two presets read the SMS file differently."""
    return {
        "faithful": "**Read line by line**: every line is one message, exactly as written; a run with the *book* preset reads "
        "the file as the book's code does instead (a quote mark opening a message can swallow the lines after it) and splits it again.",
        "book": "**Read as the book's code reads it**: a quote mark opening a message is dropped and can swallow the lines after it; "
        "a run with the *recommended* preset reads every line as one message instead and splits the file again.",
        "table": "**Read by its header row**: both presets use your file as it is.",
        "given": "**Three ready-made splits**: both presets use them as they are.",
    }.get(parse, "")


def repeated_frame(summary: DataSummary | None) -> pd.DataFrame | None:
    rows = (summary.duplicates or {}).get("most_repeated") if summary else None
    return pd.DataFrame([(copies, text) for text, copies in rows], columns=REPEATED_COLUMNS) if rows else None


class DataTab:
    """The Data tab's handlers over the app's Lab."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.problems: dict[str, str] = {}  # per page: why its last Download or upload failed, until its status line shows it
        # Pages whose visitor pressed Download or uploaded: their page load, if it ends later, must not draw over
        # the result. One short string per such page, for the life of the app.
        self.pressed: set[str] = set()

    def refuse(self, message: str, request: gr.Request | None) -> gr.Error:
        """A failed Download or upload: the page's status line says why (see `failed`); no toast over the upload box."""
        self.problems[page_of(request)] = message
        return gr.Error(one_line(message.replace("**", "")), duration=None, visible=False)

    def failed(self, request: gr.Request | None = None) -> tuple[Any, ...]:
        """After a failure: its message in that page's status line; the data shown before stays as it was."""
        return self.problems.pop(page_of(request), gr.skip()), gr.skip(), gr.skip(), gr.skip()

    def download_data(
        self,
        deduplicate: bool = False,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 - Gradio finds its progress tracker by this default
        request: gr.Request | None = None,
    ) -> tuple[str, Styler, pd.DataFrame, Figure]:
        """Fetch the SMS data (primary URL, then backup), balance, split and describe it."""
        self.pressed.add(page_of(request))
        lab = self.lab
        failures: list[str] = []
        stop = threading.Event()
        lab.download_stops.add(stop)

        def report(event: DownloadProgress) -> None:
            if stop.is_set():
                raise Cancelled("download stopped")  # the engine deletes the partial file
            if event.status.startswith("failed"):
                failures.append(f"{event.url}: {event.status}")
            progress((event.received, event.total), desc=f"downloading {event.url}", unit="bytes")

        try:
            fetched = fetch_zip(lab.settings.cache, lab.settings.data_urls, report)
            with lab.data_lock:
                prepared = prepare_fetched(fetched, lab.settings.cache, deduplicate=bool(deduplicate))
        except Cancelled:
            gr.Warning("Download stopped; nothing was kept. Press Download to start again.", duration=TOAST_SECONDS)
            status, *views = self.show_data()
            return "Download stopped; nothing was kept. Press Download to start again.\n\n" + status, *views
        except DownloadError as error:
            raise self.refuse(download_failure(failures, error), request) from None
        except LoRALabError as error:
            raise self.refuse(f"**The download failed:** {one_line(str(error))}", request) from None
        finally:
            lab.download_stops.discard(stop)
        lab.prepared = prepared
        tried = "".join(f"\n- {failure}" for failure in failures)
        status = f"Data ready from {prepared.summary.source}" + (f"\n\nSources that failed first:{tried}" if failures else "")
        return data_outputs(prepared, status)

    def stop_download(self) -> str:
        """Ask every running Download to stop at its next chunk of data."""
        for stop in list(self.lab.download_stops):
            stop.set()
        return "Stopping the download..."

    def upload_data(
        self, path: str | None, deduplicate: bool = False, request: gr.Request | None = None
    ) -> tuple[str, Styler, pd.DataFrame, Figure]:
        """Use a local SMS Spam Collection zip or tab-separated file, or your own headered CSV/TSV of text and label."""
        self.pressed.add(page_of(request))
        try:
            source = uploaded_path(path, "the SMS Spam Collection zip or its tab-separated file, or a CSV/TSV with text and label columns")
        except gr.Error as error:
            raise self.refuse(f"**The upload was not used:** {error.message}", request) from None
        try:
            with self.lab.data_lock:
                prepared = prepare(str(source), self.lab.settings.cache, deduplicate=bool(deduplicate))
        except LoRALabError as error:
            raise self.refuse(f"**{source.name} was not used:** {one_line(str(error))}", request) from None
        finally:
            discard_upload(source)  # read once: refused, or its messages are in the data cache now
        self.lab.prepared = prepared
        return data_outputs(prepared, f"Data ready from the uploaded file {source.name}")

    def page_data(self, request: gr.Request | None = None) -> DataViews | tuple[Any, ...]:
        """On page load: the data as `show_data` tells it, unless the visitor pressed Download or uploaded while it
        was being read (a busy machine can take seconds): then that result stands, failure message included."""
        views = self.show_data()
        return (gr.skip(),) * len(views) if page_of(request) in self.pressed else views

    def show_data(self) -> DataViews:
        """What a (re)loaded page shows: the data prepared earlier, if any."""
        cache, prepared = self.lab.settings.cache, self.lab.prepared
        if prepared is None and (cache / "train.csv").is_file():
            try:
                with self.lab.data_lock:  # not while another visitor's data is being written
                    earlier = prepare(str(cache), cache)
            except LoRALabError as error:
                return f"The prepared data in {cache} is unusable ({error}): download it again.", None, None, None
            return data_outputs(earlier, f"Data prepared earlier, read from {cache}")
        if prepared is None:
            return "No data yet: download it, or upload the zip or tab-separated file.", None, None, None
        return data_outputs(prepared, f"Data ready from {prepared.summary.source}")

    def data_quality(self) -> tuple[str, pd.DataFrame | None]:
        summary = load_summary(self.lab.settings.cache)
        return quality_markdown(summary), repeated_frame(summary)


def build_data_tab(data: DataTab, demo: gr.Blocks) -> None:
    """The Data tab, wired: a (re)loaded page shows the data prepared earlier."""
    with gr.Tab("Data"):
        with gr.Row():
            with gr.Column():
                download = gr.Button("Download the SMS Spam Collection", variant="primary")
                # Pressable only while this page's download runs.
                stop_download = gr.Button("Stop the download", variant="stop", size="sm", interactive=False, elem_id="stop-download")
            upload = uploaded_file(
                label="...or upload its zip or tab-separated file (works offline), or your own CSV/TSV with a header naming text and label columns",
                file_count="single",
                height=150,
                elem_id="upload",
            )
        deduplicate = gr.Checkbox(
            False,
            label="De-duplicate before splitting",
            info="keep one copy of each repeated message (applies to the next download or upload)",
            elem_id="deduplicate",
        )
        data_status = gr.Markdown(elem_id="data-status")
        with gr.Row():
            counts = gr.Dataframe(headers=["", "messages"], label="Counts", interactive=False, elem_id="counts", scale=1)
            histogram = gr.Plot(label="Tokens per message", show_label=False, elem_id="token-histogram", scale=2)
        preview = gr.Dataframe(headers=["class", "message"], label="A few training messages per class", interactive=False, wrap=True, elem_id="preview")
        with gr.Accordion("Data quality: repeated messages", open=True):
            quality = gr.Markdown(elem_id="data-quality")
            repeated = gr.Dataframe(
                headers=REPEATED_COLUMNS,
                label="Most repeated messages",
                interactive=False,
                wrap=True,
                max_height=260,
                column_widths=text_last(len(REPEATED_COLUMNS), "75%"),
                elem_id="repeated",
            )

    data_views = [data_status, counts, preview, histogram]
    quality_views = [quality, repeated]
    download.click(lambda: gr.Button(interactive=True), None, stop_download, queue=False, show_progress="hidden", api_visibility="private")
    # concurrency_limit=None: one visitor's Download never waits behind another's (a slow source may take minutes).
    downloaded = download.click(data.download_data, deduplicate, data_views, api_name="download_data", concurrency_limit=None)
    downloaded.then(lambda: gr.Button(interactive=False), None, stop_download, queue=False, show_progress="hidden", api_visibility="private")
    downloaded.success(data.data_quality, None, quality_views, api_name="data_quality_downloaded")
    downloaded.failure(data.failed, None, data_views, show_progress="hidden", api_visibility="private")
    stop_download.click(data.stop_download, None, data_status, api_name="stop_download", concurrency_limit=None)
    uploaded = upload.upload(data.upload_data, [upload, deduplicate], data_views, api_name="upload_data")
    uploaded.success(data.data_quality, None, quality_views, api_name="data_quality_uploaded")
    uploaded.failure(data.failed, None, data_views, show_progress="hidden", api_visibility="private")
    demo.load(data.page_data, None, data_views, api_name="show_data").then(data.data_quality, None, quality_views, api_name="data_quality")
