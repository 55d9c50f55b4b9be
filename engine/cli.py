"""`python -m engine <command>`: data, params, generate, train, estimate, sweep, classify, inspect, export, bench.

Every command takes --json (one JSON object on the last stdout line) and exits non-zero with a
one-line message on bad input.
"""

import argparse
import contextlib
import logging
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from engine import strict_json
from engine.config import (
    DATA_CACHE,
    DEFAULT_MODEL,
    EXPORT_FORMATS,
    GPT2_SIZES,
    LORA_TARGETS,
    METHODS,
    PADDINGS,
    POOLINGS,
    PRECISIONS,
    PRESETS,
    RUNS_DIR,
    SCALINGS,
    TARGET_SETS,
    LoRAConfig,
    RunConfig,
    preset_values,
)
from engine.errors import LoRALabError
from engine.failure import failure_of, one_line

EXIT_BAD_INPUT = 2  # the user can fix it: bad input, a missing file, out of memory
EXIT_INTERNAL = 1  # a fault in LoRA Lab: the traceback is logged
DOING = {  # each command, as the words of an out-of-memory message
    "data": "preparing the data",
    "params": "counting parameters",
    "generate": "generating",
    "train": "training",
    "sweep": "running the sweep",
    "classify": "classifying",
    "inspect": "inspecting the adapter",
    "export": "exporting the adapter",
    "bench": "benchmarking",
    "baseline": "fitting the baseline",
    "estimate": "estimating the run's cost",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not argparse's usage dump
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


def _emit(args: argparse.Namespace, payload: dict[str, Any], lines: list[str]) -> None:
    if args.json:
        print(strict_json.dumps(payload, default=str))
    else:
        print("\n".join(lines))


def cmd_data(args: argparse.Namespace) -> None:
    from engine.data.prepared import prepare

    with _failures_said_once(not args.json):
        summary = prepare(args.source, args.cache, _download_reporter() if not args.json else None, deduplicate=args.dedupe).summary
    per_class = ", ".join(f"{count:,} {name}" for name, count in summary.class_counts.items())
    _emit(
        args,
        summary.to_dict(),
        [
            f"source: {summary.source}",
            f"messages: {summary.messages:,} ({per_class}); balanced {summary.balanced:,}",
            f"splits: train {summary.train:,}, validation {summary.validation:,}, test {summary.test:,} (written to {args.cache})",
            f"longest training message: {summary.longest_train_tokens} tokens",
            f"repeated texts: {summary.duplicates['repeated_texts']:,} ({summary.duplicates['extra_copies']:,} extra copies); "
            + ", ".join(f"{pair}: {n}" for pair, n in summary.duplicates["across_splits"].items())
            + (" (de-duplicated first)" if summary.deduplicated else " (use --dedupe to drop repeats)"),
        ],
    )


def cmd_params(args: argparse.Namespace) -> None:
    from engine.params import param_summary

    summary = param_summary(args.model, _lora(args), args.method)
    _emit(
        args,
        {**asdict(summary), "ratio": round(summary.ratio, 1)},
        [
            f"parameters before freezing: {summary.total_before_freeze:,}",
            f"trainable after freezing:   {summary.trainable_after_freeze:,}",
            f"trainable LoRA parameters:  {summary.trainable_lora:,}",
            f"trainable in all:           {summary.trainable:,} of {summary.total_before_freeze:,} ({summary.ratio:.1f}x fewer)",  # as `train` says it
            f"{'adapter file' if args.method == 'lora' else 'saved file (the retrained weights)'}: {summary.adapter_megabytes:.2f} MB; "
            f"base model: {summary.model_megabytes:,.1f} MB",
        ],
    )


def cmd_generate(args: argparse.Namespace) -> None:
    from engine.device import pick_device
    from engine.model import generate_greedy
    from engine.tokenizer import decode, encode
    from engine.weights import load_model

    if args.max_new_tokens < 1:
        raise LoRALabError("--max-new-tokens must be at least 1")
    if not args.prompt.strip():
        raise LoRALabError("the prompt is empty: give some text to continue")
    model = load_model(args.model, pick_device(args.device))
    text = decode(generate_greedy(model, encode(args.prompt), args.max_new_tokens))
    _emit(args, {"prompt": args.prompt, "text": text}, [text])


def cmd_train(args: argparse.Namespace) -> None:
    from engine.runs.recorder import RunRecorder
    from engine.runs.run import fine_tune

    if args.resume:
        from engine.runs.resume import resumed_config

        cfg = resumed_config(Path(args.resume), args.max_steps, args.epochs)
    else:
        cfg = _run_config(args)
    recorder = RunRecorder(cfg.train.eval_freq)
    for event in fine_tune(cfg, on_download=None if args.json else _download_reporter(), resume=bool(args.resume)):
        recorder.record(event)
        _log_event(event, recorder.progress().eta_s)
    progress = recorder.progress()
    saved = progress.saved
    result = {
        "data": progress.data.to_dict() if progress.data else None,
        "trainable": progress.trainable,
        "accuracy": {name: m.accuracy for name, m in (progress.final or {}).items()},
        "out_dir": str(saved.out_dir),
        "adapter": str(saved.adapter_dir),
        "record": str(saved.record),
        "stopped": saved.stopped,
        "early_stopped": progress.early_stopped,
        "best": {"step": progress.best.step, "validation_loss": progress.best.validation_loss, "adapter": str(saved.out_dir / progress.best.adapter)}
        if progress.best
        else None,
    }
    lines = [f"{name} accuracy: {value:.2%}" for name, value in result["accuracy"].items()]
    lines.append(f"adapter saved to {result['adapter']}; run record {result['record']}")
    if progress.best is not None:
        lines.append(f"best adapter (lowest validation loss, step {progress.best.step} of {progress.step}): {result['best']['adapter']}")
    _emit(args, result, lines)


def cmd_baseline(args: argparse.Namespace) -> None:
    from engine.runs.baseline_run import new_baseline_folder, run_baseline

    cfg = RunConfig.from_preset(
        args.preset,
        data=_training_data(args),
        data_urls=tuple(args.data_urls) if args.data_urls else None,
        data_cache=args.cache,
        deduplicate=args.dedupe,
        owner=args.owner,
        out_dir=str(new_baseline_folder(args.out)),
    )
    result, record = run_baseline(cfg, None if args.json else _download_reporter())
    accuracy = {name: m.accuracy for name, m in result.final.items()}
    payload = {"accuracy": accuracy, "C": result.c, "trainable": result.parameters, "features": result.features, "out_dir": cfg.out_dir, "record": str(record)}
    lines = [f"{name} accuracy: {value:.2%}" for name, value in accuracy.items()]
    lines.append(f"TF-IDF ({result.features:,} word features) + logistic regression, C={result.c:g} chosen on validation; {result.parameters:,} weights")
    _emit(args, payload, lines + [f"run record {record}"])


def _run_config(args: argparse.Namespace, fetch_data: bool = True) -> RunConfig:
    """The run `train` (or each point of `sweep`) starts from: the preset, then every option given.
    Without `fetch_data` (estimate) the data is only named, never downloaded."""
    cfg = RunConfig.from_preset(
        args.preset,
        model=args.model,
        data=_training_data(args) if fetch_data else args.data,
        data_urls=tuple(args.data_urls) if args.data_urls else None,
        data_cache=args.cache,
        out_dir=args.out,
        device=args.device,
        deduplicate=args.dedupe,
        owner=args.owner,
    )
    lora_changes = {k: v for k, v in (("rank", args.rank), ("alpha", args.alpha), ("scaling", args.scaling)) if v is not None}
    if args.targets:
        lora_changes["targets"] = tuple(args.targets)
    if args.train_head:
        lora_changes["train_head"] = True
    seed = getattr(args, "seed", None)  # train's; a sweep's seeds are its grid's
    overrides = (
        ("lr", args.lr),
        ("epochs", args.epochs),
        ("batch_size", args.batch_size),
        ("max_steps", args.max_steps),
        ("eval_freq", args.eval_freq),
        ("early_stop", args.early_stop),
        ("seed", seed),
        ("pooling", args.pooling),
    )
    train_changes = {k: v for k, v in overrides if v is not None}
    if args.precision is not None:
        train_changes["precision"] = args.precision
    if args.padding is not None:  # as the app does: length-grouped batches go with padding each batch to its longest
        train_changes.update(padding=args.padding, group_by_length=args.padding == "batch")
    if args.no_live_metrics:
        train_changes["live_metrics"] = False
    method = getattr(args, "method", None) or cfg.method  # train's; a sweep's runs are LoRA
    return replace(cfg, method=method, lora=replace(cfg.lora, **lora_changes), train=replace(cfg.train, **train_changes))


def _log_event(event: Any, eta_s: float | None = None) -> None:
    """The progress lines `train` writes to stderr; `eta_s` is the recorder's time left (engine.runs.time_left)."""
    from engine.best import early_stop_words
    from engine.runs.events import ModelReady
    from engine.train import EpochDone, LossEvaluated, StepDone, TrainEnded, ValidationEvaluated

    match event:
        case StepDone():
            _progress_bar(event, eta_s)
        case LossEvaluated():
            _log(f"step {event.step:04d}: train loss {event.train_loss:.3f}, validation loss {event.validation_loss:.3f}")
        case ValidationEvaluated():
            m = event.metrics
            scores = f"validation accuracy {m.accuracy:.2%}, precision {m.precision:.2%}, recall {m.recall:.2%}, F1 {m.f1:.2%}"
            _log(f"step {event.step:04d}: {scores} ({m.count} messages)")
        case TrainEnded(early_stop=patience, best_step=best) if patience and best is not None:
            _log(early_stop_words(event.steps, patience, best))
        case EpochDone():
            _log(f"epoch {event.epoch}: train accuracy {event.train_accuracy:.2%}, validation accuracy {event.validation_accuracy:.2%}")
        case ModelReady():
            counts = event.counts
            before = counts.total - counts.lora  # the model as `params` counts it: before LoRA adds its A and B
            fewer = f"{before / counts.trainable:.1f}x fewer"
            _log(f"{event.model} on {event.device} ({event.precision}): {counts.trainable:,} trainable of {before:,} parameters before freezing ({fewer})")


def cmd_sweep(args: argparse.Namespace) -> None:
    from engine.data.prepared import is_prepared_folder, prepare
    from engine.runs.grid import Grid, configure, targets_named
    from engine.runs.local_workers import check_worker_count
    from engine.runs.scheduler import Scheduler, workers_for

    if not args.ray:  # before any data is prepared
        check_worker_count(args.workers, args.device, args.force)
    presets = args.preset or ["recommended"]
    unset = {"preset": presets[0], "rank": None, "alpha": None, "scaling": None, "targets": None, "lr": None, "seed": None}  # the grid sets these
    base = _run_config(argparse.Namespace(**{**vars(args), **unset}))
    values = {"rank": args.rank, "alpha": args.alpha, "scaling": args.scaling, "lr": args.lr, "preset": presets, "seed": args.seed}
    values["targets"] = list(targets_named(args.targets)) if args.targets else None
    fixed = {name: given[0] for name, given in values.items() if given and len(given) == 1}
    grid = Grid(**{name: tuple(given) for name, given in values.items() if given and len(given) > 1})
    if fixed:
        base = configure(base, fixed)
    if not is_prepared_folder(base.data):  # a file or URL given with --data: prepared once here, not by every worker
        prepare(base.data, base.data_cache, None if args.json else _download_reporter(), urls=base.data_urls, deduplicate=base.deduplicate)
        base = replace(base, data=base.data_cache)
    runs = grid.expand(base)
    scheduler = Scheduler(Path(args.out), workers_for(args.workers, args.device, args.ray), persist=False, purpose="a sweep (python -m engine sweep)")
    try:
        queued = scheduler.submit([cfg for _, cfg in runs], [label for label, _ in runs])
        folder = Path(args.out) / Path(queued[0].id).parent
        sizes = " x ".join(f"{len(getattr(grid, name))} {name}" for name in grid.varied)
        _log(f"{len(queued)} runs ({sizes}) on {scheduler.workers.describe()}, into {folder}")
        reported: set[str] = set()
        while not scheduler.wait(timeout=1.0):
            _report_ended(scheduler, reported, len(queued))
        _report_ended(scheduler, reported, len(queued))
    finally:
        scheduler.close()
    rows = [_sweep_row(view) for view in scheduler.views()]
    _emit(args, {"grid": str(folder), "runs": rows}, _sweep_table(rows))


def _report_ended(scheduler: Any, reported: set[str], total: int) -> None:
    """One progress line per run as it ends."""
    for view in scheduler.views():
        if view.run.ended and view.run.id not in reported:
            reported.add(view.run.id)
            row = _sweep_row(view)
            accuracy = f"test accuracy {row['test_accuracy']:.2%}" if row["test_accuracy"] is not None else (row["reason"] or "no final evaluation")
            took = f", training {row['train_seconds']:.1f} s" if row["train_seconds"] is not None else ""  # the time the table gives
            _log(f"[{len(reported)}/{total}] {row['run']}: {row['state']}, {accuracy}{took} on {row['worker'] or 'no worker'}")


def _sweep_row(view: Any) -> dict[str, Any]:
    progress = view.progress
    final = (progress.final or {}) if progress else {}
    return {
        "run": view.run.id.rsplit("/", 1)[-1],
        "state": view.run.state,
        "reason": view.run.reason,
        "test_accuracy": final["test"].accuracy if "test" in final else None,
        "validation_accuracy": final["validation"].accuracy if "validation" in final else None,
        "trainable": progress.trainable if progress else None,
        "train_seconds": round(progress.train_seconds, 2) if progress else None,
        "worker": view.run.worker,
        "out_dir": view.run.config.out_dir,
    }


def _sweep_table(rows: list[dict[str, Any]]) -> list[str]:
    width = max(len(row["run"]) for row in rows)
    lines = [f"{'run':<{width}}  {'state':<11}  {'test acc.':>9}  {'val. acc.':>9}  {'trainable':>11}  {'training (s)':>12}  worker"]
    for row in rows:
        test, validation = (f"{row[k]:.2%}" if row[k] is not None else "-" for k in ("test_accuracy", "validation_accuracy"))
        trainable = f"{row['trainable']:,}" if row["trainable"] else "-"
        seconds = f"{row['train_seconds']:.1f}" if row["train_seconds"] is not None else "-"
        lines.append(f"{row['run']:<{width}}  {row['state']:<11}  {test:>9}  {validation:>9}  {trainable:>11}  {seconds:>12}  {row['worker'] or '-'}")
    return lines


def _training_data(args: argparse.Namespace) -> str:
    """What `train` reads: --data; else the splits `data` prepared in --cache; else the data downloaded now into --cache."""
    from engine.config import preset
    from engine.data.prepared import load_summary, prepare

    if args.data:
        return args.data
    cache = Path(args.cache)
    summary = load_summary(cache)
    if (cache / "train.csv").is_file() and (summary.deduplicated if summary else False) == args.dedupe:
        return str(cache)
    with _failures_said_once(not args.json):
        reporter = _download_reporter() if not args.json else None
        return str(prepare(None, cache, reporter, seed=preset(args.preset).train.seed, deduplicate=args.dedupe).folder)


def cmd_classify(args: argparse.Namespace) -> None:
    from engine.classifier import Classifier
    from engine.device import pick_device

    if bool(args.messages) == bool(args.file):
        raise LoRALabError("give messages to classify, or --file (one message per line, or a CSV with a text column), not both")
    device = pick_device("cpu" if args.int8 and args.device == "auto" else args.device)
    classifier = Classifier.load(args.adapter, device, model=args.model, int8=args.int8, precision=args.precision)
    if args.file:
        from engine.batch import classify_file

        out = args.out or str(Path(args.file).with_suffix(".predictions.csv"))
        table = classify_file(classifier, Path(args.file), Path(out))
        counts = table["label"].value_counts().to_dict()
        summary = {"file": args.file, "out": out, "messages": len(table), "labels": counts}
        head = table.head(FILE_ROWS_SHOWN)
        labels = head["label"].tolist()
        shown = _answers_table(labels, [head[f"p_{label}"].iloc[i] for i, label in enumerate(labels)], head["message"].tolist(), len(table), counts)
        by_label = ", ".join(f"{n:,} {label}" for label, n in counts.items())
        _emit(args, summary, [*shown, f"{len(table):,} messages classified ({by_label}); every answer with each class's probability in {out}"])
        return
    predictions = classifier.classify(args.messages)
    rows = [
        {"message": m, "label": p.label, "probabilities": {name: round(v, 4) for name, v in p.probabilities.items()}, "truncated": p.truncated}
        for m, p in zip(args.messages, predictions, strict=True)
    ]
    width = max(len(name) for name in classifier.config.labels)
    lines = [f"{r['label']:<{width}}  " + " ".join(f"P({name})={v:.3f}" for name, v in r["probabilities"].items()) + f"  {r['message'][:70]}" for r in rows]
    _emit(args, {"labels": list(classifier.config.labels), "predictions": rows}, lines)


FILE_ROWS_SHOWN = 20


def _answers_table(labels: list[str], probabilities: list[float], messages: list[str], total: int, file_labels: Iterable[str]) -> list[str]:
    """A file's first answers (of `total`) as aligned columns: label, its probability, the message cut to a
    line; the label column is as wide as any label in the file (`file_labels`), shown or not."""
    width = max(len("label"), *(len(label) for label in file_labels))
    lines = [f"{'label':<{width}}  {'P(label)':>8}  message"]
    for label, p, message in zip(labels, probabilities, messages, strict=True):
        text = one_line(message)
        lines.append(f"{label:<{width}}  {p:>8.3f}  {text if len(text) <= 70 else text[:69] + '…'}")
    if total > FILE_ROWS_SHOWN:
        lines.append(f"... and {total - FILE_ROWS_SHOWN:,} more")
    return lines


def cmd_inspect(args: argparse.Namespace) -> None:
    from engine.anatomy import inspect_adapter, summary

    anatomy = inspect_adapter(Path(args.adapter), model=args.model)
    width = max(len(layer.name) for layer in anatomy.layers)
    lines = [summary(anatomy), f"{'layer':<{width}}  {'kind':<13}  {'‖ΔW‖':>9}  {'‖ΔW‖/‖W‖':>9}  {'90%':>3}  singular values"]
    for layer in anatomy.layers:
        relative = f"{100 * layer.relative:8.2f}%" if layer.relative is not None else f"{'-':>9}"
        values = " ".join(f"{v:.3g}" for v in layer.singular_values)
        lines.append(f"{layer.name:<{width}}  {layer.kind_words:<13}  {layer.norm:9.4g}  {relative}  {layer.effective_rank:>3}  {values}")
    _emit(args, anatomy.to_dict(), lines)


def cmd_export(args: argparse.Namespace) -> None:
    from engine.export import export_adapter
    from engine.runs.record import adapter_record, read_record

    adapter = Path(args.adapter)
    folder = adapter if adapter.is_dir() else adapter.parent
    record = adapter_record(read_record(folder.parent), folder.name)  # the card reads the run's record, as it speaks of this adapter
    exported = export_adapter(adapter, Path(args.out), args.format, model=args.model, record=record)
    how = "PeftModel.from_pretrained" if args.format == "peft" else 'pipeline("text-classification", model=...)'
    _emit(
        args,
        {"out": str(exported.folder), "format": exported.format, "files": list(exported.files)},
        [f"{args.format} export written to {exported.folder} ({', '.join(exported.files)}); load it with {how}, as its README.md shows"],
    )


def cmd_bench(args: argparse.Namespace) -> None:
    if args.sweep:
        from engine.bench.sweep import run_sweep_benchmark

        result = run_sweep_benchmark(args.model, args.device, args.workers, args.steps, args.data, progress=None if args.json else _log)
        _emit(args, result.to_dict(), result.lines())
        return
    from engine.bench import run_benchmark

    report = run_benchmark(
        args.model, args.device, args.steps, args.data, progress=None if args.json else _log, full_epochs=args.whole_epochs, precision=args.precision
    )
    _emit(args, report.to_dict(), report.lines())


def cmd_estimate(args: argparse.Namespace) -> None:
    from engine.estimate import duration_words, gigabytes
    from engine.runs.cost import available_bytes, run_cost

    cfg = _run_config(args, fetch_data=False)
    cost = run_cost(cfg, "cached")
    if cost is None:
        if not args.json:
            _log("measuring this machine (once per device and model shape) ...")
        cost = run_cost(cfg)
    assert cost is not None  # measured here when not cached
    free = available_bytes(cost.device)
    memory = cost.memory
    result = {"model": cfg.model, **cost.to_dict(), "available_bytes": free, "fits": free is None or memory.total - memory.runtime <= free}
    data = "the prepared data's token counts" if cost.measured_data else "the SMS data's known split sizes (no data prepared yet)"
    lines = [
        f"{cfg.model} on {cost.device} ({cost.precision}): {cost.steps:,} steps, {cost.steps_per_epoch:,} an epoch, from {data}",
        f"time per epoch: {duration_words(cost.epoch_s)} of training steps",
        f"total: {duration_words(cost.total_s)} (training {duration_words(cost.train_s)}, evaluations {duration_words(cost.evaluation_s)})",
        f"peak memory: {gigabytes(memory.total)} (frozen weights {gigabytes(memory.weights)}, LoRA with its gradients and AdamW state "
        f"{gigabytes(memory.trainable)}, activations {gigabytes(memory.activations)}, runtime {gigabytes(memory.runtime)})",
    ]
    if free is not None:
        refused = "" if result["fits"] else ": this run would be refused (`train` says what to change)"
        lines.append(f"available on {cost.device}: {gigabytes(free)}{refused}")
    _emit(args, result, lines)


def _lora(args: argparse.Namespace) -> LoRAConfig:
    return LoRAConfig(rank=args.rank, alpha=args.alpha, scaling=args.scaling, targets=tuple(args.targets or LORA_TARGETS), train_head=args.train_head)


def _log(message: str) -> None:
    print("\r\033[K" + message if sys.stderr.isatty() else message, file=sys.stderr, flush=True)


def _progress_bar(event: Any, eta_s: float | None) -> None:
    if not sys.stderr.isatty() and event.step % 10 and event.step != event.total_steps:
        return  # in a log file, one line per ten steps is plenty
    done = int(30 * event.step / event.total_steps)
    eta = "--:--" if eta_s is None else time.strftime("%M:%S", time.gmtime(eta_s)) if eta_s < 3600 else f"{eta_s / 3600:.1f}h"
    line = f"[{'#' * done}{'.' * (30 - done)}] step {event.step}/{event.total_steps} epoch {event.epoch} loss {event.loss:.3f} ETA {eta}"
    print("\r" + line if sys.stderr.isatty() else line, end="" if sys.stderr.isatty() else "\n", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _failures_said_once(reported: bool) -> Iterator[None]:
    """While a download runs with the progress reporter, which prints each failed source as it fails: the
    engine's log line about it stays quiet, and the final error does not list the sources again."""
    from engine.errors import DownloadError

    quiet = logging.getLogger("engine.data.download")
    level = quiet.level
    if reported:
        quiet.setLevel(logging.ERROR)
    try:
        yield
    except DownloadError:
        if not reported:
            raise
        raise DownloadError(
            "no source could be downloaded (each is listed above): check the internet connection, "
            "or prepare the zip you have: python -m engine data --source sms_spam_collection.zip"
        ) from None
    finally:
        quiet.setLevel(level)


def _download_reporter() -> Any:
    last = {"shown": 0.0}

    def report(progress: Any) -> None:
        now = time.monotonic()
        if progress.status != "downloading":
            _log(f"{progress.url}: {progress.status}")
        elif now - last["shown"] > 0.5:
            last["shown"] = now
            total = f" of {progress.total / 1e6:.1f} MB" if progress.total else ""
            _log(f"downloading {progress.received / 1e6:.1f} MB{total} from {progress.url}")

    return report


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m engine", description="LoRA Lab engine: fine-tune GPT-2 with LoRA to classify SMS spam.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sizes = ", ".join(GPT2_SIZES)
    model_help = f"{sizes}, or a folder with config.json + model.safetensors"

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--json", action="store_true", help="print one JSON object as the last line")
        return sub

    data = add("data", "download (or read) the SMS Spam Collection and write train/validation/test CSVs")
    data.add_argument("--source", help="URL, local zip or tab-separated file (default: the UCI URL, then its backup)")
    data.add_argument("--cache", default=DATA_CACHE, help=f"folder for the download and the CSVs (default: {DATA_CACHE})")
    data.add_argument("--dedupe", action="store_true", help="drop repeated messages before balancing and splitting")
    data.set_defaults(run=cmd_data)

    params = add("params", "count total, frozen and trainable parameters (no weights needed)")
    params.add_argument("--model", default=DEFAULT_MODEL, help=model_help)
    _lora_arguments(params, defaults=True)
    _method_argument(params)
    params.set_defaults(run=cmd_params)

    generate = add("generate", "greedy text generation: the pretrained-weights sanity check")
    generate.add_argument("--model", default=DEFAULT_MODEL, help=model_help)
    generate.add_argument("--max-new-tokens", type=int, default=15)
    generate.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, mps")
    generate.add_argument("prompt", nargs="?", default="Every effort moves you")
    generate.set_defaults(run=cmd_generate)

    train = add("train", "fine-tune with LoRA and save the adapter and a run record")
    train.add_argument("--preset", choices=PRESETS, default="recommended", help="book: the book's appendix E exactly; recommended: faster and as accurate")
    _method_argument(train)
    _lora_arguments(train, defaults=False)
    train.add_argument("--lr", type=float, help=f"learning rate (default: the preset's, {preset_values('train', 'lr')})")
    train.add_argument("--seed", type=int, help=f"random seed of the head, LoRA and batch order (default: the preset's, {preset_values('train', 'seed')})")
    _run_arguments(train, model_help)
    train.add_argument("--out", default=RunConfig.out_dir, help=f"output folder (default: {RunConfig.out_dir})")
    train.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="go on with the stopped, interrupted or step-limited run in RUN_DIR from its last checkpoint, in that folder and with its settings "
        "(--max-steps or --epochs: how far; neither: to its own end)",
    )
    train.set_defaults(run=cmd_train)

    baseline = add("baseline", "the classical baseline: TF-IDF and logistic regression on the same splits, recorded as a run beside the LoRA runs")
    baseline.add_argument("--preset", choices=PRESETS, default="recommended", help="the preset whose data reading and seed the splits follow")
    baseline.add_argument("--data", help="folder made by `data`, or a source as `data --source` takes (default: as `train` finds it)")
    baseline.add_argument("--cache", default=DATA_CACHE, help=f"where downloaded data and CSVs go (default: {DATA_CACHE})")
    baseline.add_argument("--dedupe", action="store_true", help="drop repeated messages before balancing and splitting")
    baseline.add_argument("--data-urls", nargs="+", metavar="URL", help="where the SMS zip is downloaded from without --data (default: UCI, then its backup)")
    baseline.add_argument("--owner", default="", help="whose run this is (free text), kept in its record")
    baseline.add_argument("--out", default=RUNS_DIR, help=f"the runs folder; the baseline goes into OUT/baseline-<date-time>/ (default: {RUNS_DIR})")
    baseline.set_defaults(run=cmd_baseline)

    estimate = add("estimate", "time per epoch, total time and peak memory of a `train` run on this machine, before starting it")
    estimate.add_argument("--preset", choices=PRESETS, default="recommended", help="as train's")
    _lora_arguments(estimate, defaults=False)
    estimate.add_argument("--lr", type=float, help="as train's (does not change the cost)")
    estimate.add_argument("--seed", type=int, help="as train's")
    _run_arguments(estimate, model_help)
    estimate.add_argument("--out", default=RunConfig.out_dir, help="as train's (nothing is written there)")
    estimate.set_defaults(run=cmd_estimate)

    sweep = add("sweep", "train a grid of runs, every combination of the values given, on several workers (or a Ray cluster)")
    grid = sweep.add_argument_group("the grid (a setting given two or more values varies; one value applies to every run)")
    grid.add_argument("--rank", type=int, nargs="+", metavar="R", help="LoRA ranks, e.g. 1 2 4 8 16")
    grid.add_argument("--alpha", type=float, nargs="+", metavar="A", help="LoRA alphas")
    grid.add_argument("--scaling", choices=SCALINGS, nargs="+", help="alpha (book) and/or alpha_over_rank")
    grid.add_argument("--lr", type=float, nargs="+", metavar="LR", help="learning rates")
    grid.add_argument("--preset", choices=PRESETS, nargs="+", help="presets (applied first; the other settings override them); default recommended")
    grid.add_argument("--targets", choices=TARGET_SETS, nargs="+", help="sets of layers LoRA adapts: " + ", ".join(TARGET_SETS))
    grid.add_argument("--seed", type=int, nargs="+", metavar="S", help="random seeds (head, LoRA and batch order)")
    sweep.add_argument("--train-head", action="store_true", help="also train the class head's own weights in every run (default: only its LoRA)")
    _run_arguments(sweep, model_help)
    sweep.add_argument("--out", default=RUNS_DIR, help=f"the runs folder; the grid goes into OUT/grid-<date-time>/ (default: {RUNS_DIR})")
    sweep.add_argument("--workers", type=int, help="runs at once (default: one per CUDA GPU, otherwise 1; on Ray: one per GPU, otherwise one per 2 CPUs)")
    sweep.add_argument("--force", action="store_true", help="start --workers beyond this machine's GPUs (or CPU cores) all the same")
    sweep.add_argument("--ray", metavar="ADDRESS", help="run on a Ray cluster: its address, or auto for the one started on this machine (`ray start --head`)")
    sweep.set_defaults(run=cmd_sweep)

    classify = add("classify", "classify messages with a trained adapter")
    classify.add_argument("--adapter", required=True, help="adapter folder written by `train` (OUT/adapter)")
    classify.add_argument("--model", help="base model if it has moved (default: the one the adapter names)")
    classify.add_argument("--device", default="auto")
    classify.add_argument("--int8", action="store_true", help="int8 weights on the CPU: faster, answers may differ slightly")
    _precision_argument(classify, "default auto", "auto")
    classify.add_argument("--file", help="classify every message of a file (one per line, or a CSV/TSV with a text column)")
    classify.add_argument("--out", help="where --file's predictions go (default: FILE.predictions.csv)")
    classify.add_argument("messages", nargs="*", help="one or more messages")
    classify.set_defaults(run=cmd_classify)

    inspect = add("inspect", "the anatomy of an adapter: each layer's update, its singular values, effective rank and size against the frozen weight")
    inspect.add_argument("--adapter", required=True, help="adapter folder written by `train` (OUT/adapter)")
    inspect.add_argument("--model", help="base model for the frozen weights' sizes (default: the one the adapter names, if on this machine)")
    inspect.set_defaults(run=cmd_inspect)

    export = add("export", "write an adapter for use outside LoRA Lab: a PEFT adapter, or a whole transformers model with a model card")
    export.add_argument("--adapter", required=True, help="adapter folder written by `train` (OUT/adapter)")
    export.add_argument("--format", required=True, choices=EXPORT_FORMATS, help="peft: for PeftModel.from_pretrained; transformers: merged, for pipeline()")
    export.add_argument("--out", required=True, help="folder to write (new, empty, or an earlier export)")
    export.add_argument("--model", help="base model if it has moved (default: the one the adapter names)")
    export.set_defaults(run=cmd_export)

    bench = add("bench", "measure training and classification speed on this machine (random weights)")
    bench.add_argument("--model", default=DEFAULT_MODEL, help="size to benchmark (random weights of the real shape)")
    bench.add_argument("--device", default="auto")
    bench.add_argument("--steps", type=int, default=5, help="timed training steps per measurement")
    bench.add_argument("--data", help=f"SMS data for the epoch comparison: prepared folder, zip or TSV (default: {DATA_CACHE}, downloaded there if empty)")
    bench.add_argument("--whole-epochs", action="store_true", help="time each preset's whole epoch instead of extrapolating from --steps steps (slow on a CPU)")
    _precision_argument(bench, "default auto", "auto")
    bench.add_argument("--sweep", action="store_true", help="instead: a 4-run grid's wall time on 1 worker and on --workers, and a worker's start-up cost")
    bench.add_argument("--workers", type=int, default=2, help="with --sweep: the workers to compare with one (default 2)")
    bench.set_defaults(run=cmd_bench)
    return parser


def _run_arguments(parser: argparse.ArgumentParser, model_help: str) -> None:
    """What `train` and `sweep` share besides the settings a grid varies."""
    parser.add_argument("--model", default=DEFAULT_MODEL, help=model_help)
    parser.add_argument("--data", help="folder made by `data`, or a source as `data --source` takes (default: what `data` prepared in --cache, else download)")
    parser.add_argument("--cache", default=DATA_CACHE, help=f"where downloaded data and CSVs go (default: {DATA_CACHE})")
    parser.add_argument("--dedupe", action="store_true", help="drop repeated messages before balancing and splitting")
    parser.add_argument("--epochs", type=int, help=f"passes over the training messages (default: the preset's, {preset_values('train', 'epochs')})")
    parser.add_argument("--batch-size", type=int, help=f"messages per optimiser step (default: the preset's, {preset_values('train', 'batch_size')})")
    parser.add_argument("--max-steps", type=int, help="stop after this many optimiser steps")
    parser.add_argument(
        "--eval-freq",
        type=int,
        help=(
            f"optimiser steps between loss estimates (default: the preset's, {preset_values('train', 'eval_freq')}); it never changes what a run "
            "learns, except with the book's draws (--preset book), where each estimate moves the next epoch's order as in the book"
        ),
    )
    parser.add_argument(
        "--early-stop",
        type=int,
        metavar="N",
        help="stop once N loss estimates in a row bring no lower validation loss (default 0: never); every run keeps its best adapter "
        "(lowest validation loss) in OUT/adapter-best beside its last",
    )
    parser.add_argument("--pooling", choices=POOLINGS, help=f"which position classifies a message (default: the preset's, {preset_values('train', 'pooling')})")
    parser.add_argument(
        "--padding",
        choices=PADDINGS,
        help=f"batch: pad each batch to its longest message, in batches of similar length; longest: pad all to the longest (default: the preset's, "
        f"{preset_values('train', 'padding')})",
    )
    parser.add_argument(
        "--data-urls", nargs="+", metavar="URL", help="where the SMS zip is downloaded from without --data, in order (default: UCI, then its backup)"
    )
    parser.add_argument("--owner", default="", help="whose run this is (free text), kept in its record")
    parser.add_argument("--no-live-metrics", action="store_true", help="at each loss estimate, skip scoring the whole validation set (faster)")
    parser.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, mps")
    _precision_argument(parser, f"default: the preset's, {preset_values('train', 'precision')}")


def _precision_argument(parser: argparse.ArgumentParser, default_said: str, default: str | None = None) -> None:
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=default,
        help=f"what the frozen model computes in: auto (bf16 on GPUs that have it, else fp32), fp32, or bf16 ({default_said})",
    )


def _method_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--method",
        choices=METHODS,
        default="lora",
        help="what trains: lora (default; the LoRA settings apply), last-block (the last transformer block, final norm and head, as the book's "
        "chapter 6), full (every weight); the last two ignore the LoRA settings. The classical baseline is the `baseline` command",
    )


def _lora_arguments(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """LoRA's settings: with `defaults`, LoRAConfig's own (params); else unset, so that the preset's apply (train)."""
    lora = LoRAConfig()

    def default(name: str) -> tuple[object, str]:
        if not defaults:
            return None, f"default: the preset's, {preset_values('lora', name)}"
        value = getattr(lora, name)
        return value, f"default {value:g}" if isinstance(value, float) else f"default {value}"

    for name, kind, words in (("rank", int, "LoRA rank"), ("alpha", float, "LoRA alpha")):
        value, said = default(name)
        parser.add_argument(f"--{name}", type=kind, default=value, help=f"{words} ({said})")
    value, said = default("scaling")
    parser.add_argument("--scaling", choices=SCALINGS, default=value, help=f"alpha (the book) or alpha_over_rank (Hu et al., PEFT); {said}")
    parser.add_argument("--targets", nargs="+", choices=LORA_TARGETS, metavar="TARGET", help=f"layers to adapt (default all): {', '.join(LORA_TARGETS)}")
    parser.add_argument("--train-head", action="store_true", help="also train the class head's own weights (default: only its LoRA)")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        failure = failure_of(error, getattr(args, "device", "auto"), DOING.get(args.command, args.command))
        print(f"error: {failure.message}", file=sys.stderr)
        return EXIT_BAD_INPUT if failure.users_to_fix else EXIT_INTERNAL
    return 0
