"""`python -m engine <command>`: data, params, generate, train, classify, bench.

Every command takes --json (one JSON object on the last stdout line) and exits non-zero with a
one-line message on bad input.
"""

import argparse
import contextlib
import json
import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from engine.config import GPT2_SIZES, LORA_TARGETS, PRESETS, SCALINGS, LoRAConfig, RunConfig
from engine.errors import LoRALabError

EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not argparse's usage dump
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


def _emit(args: argparse.Namespace, payload: dict[str, Any], lines: list[str]) -> None:
    if args.json:
        print(json.dumps(payload, default=str))
    else:
        print("\n".join(lines))


def cmd_data(args: argparse.Namespace) -> None:
    from engine.data import prepare

    with _failures_said_once(not args.json):
        summary = prepare(args.source, args.cache, _download_reporter() if not args.json else None, deduplicate=args.dedupe).summary
    _emit(
        args,
        summary.to_dict(),
        [
            f"source: {summary.source}",
            f"messages: {summary.messages:,} ({summary.ham:,} ham, {summary.spam:,} spam); balanced {summary.balanced:,}",
            f"splits: train {summary.train:,}, validation {summary.validation:,}, test {summary.test:,} (written to {args.cache})",
            f"longest training message: {summary.longest_train_tokens} tokens",
            f"repeated texts: {summary.duplicates['repeated_texts']:,} ({summary.duplicates['extra_copies']:,} extra copies); "
            + ", ".join(f"{pair}: {n}" for pair, n in summary.duplicates["across_splits"].items())
            + (" (de-duplicated first)" if summary.deduplicated else " (use --dedupe to drop repeats)"),
        ],
    )


def cmd_params(args: argparse.Namespace) -> None:
    from engine.params import param_summary

    summary = param_summary(args.model, _lora(args))
    _emit(
        args,
        {**asdict(summary), "ratio": round(summary.ratio, 1)},
        [
            f"parameters before freezing: {summary.total_before_freeze:,}",
            f"trainable after freezing:   {summary.trainable_after_freeze:,}",
            f"trainable LoRA parameters:  {summary.trainable_lora:,} ({summary.ratio:.1f}x fewer)",
            f"adapter file: {summary.adapter_megabytes:.2f} MB; base model: {summary.model_megabytes:,.1f} MB",
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
    from engine.run import DataReady, FinalEvaluated, ModelReady, RunSaved, fine_tune
    from engine.train import EpochDone, LossEvaluated, StepDone, ValidationEvaluated

    cfg = RunConfig.from_preset(
        args.preset, model=args.model, data=_training_data(args), data_cache=args.cache, out_dir=args.out, device=args.device, deduplicate=args.dedupe
    )
    lora_changes = {k: v for k, v in (("rank", args.rank), ("alpha", args.alpha), ("scaling", args.scaling)) if v is not None}
    if args.targets:
        lora_changes["targets"] = tuple(args.targets)
    overrides = (("lr", args.lr), ("epochs", args.epochs), ("batch_size", args.batch_size), ("max_steps", args.max_steps))
    train_changes = {k: v for k, v in overrides if v is not None}
    if args.no_live_metrics:
        train_changes["live_metrics"] = False
    cfg = replace(cfg, lora=replace(cfg.lora, **lora_changes), train=replace(cfg.train, **train_changes))
    result: dict[str, Any] = {}
    for event in fine_tune(cfg, on_download=None if args.json else _download_reporter()):
        if isinstance(event, StepDone):
            _progress_bar(event)
        elif isinstance(event, LossEvaluated):
            _log(f"step {event.step:04d}: train loss {event.train_loss:.3f}, validation loss {event.validation_loss:.3f}")
        elif isinstance(event, ValidationEvaluated):
            m = event.metrics
            scores = f"validation accuracy {m.accuracy:.2%}, precision {m.precision:.2%}, recall {m.recall:.2%}, F1 {m.f1:.2%}"
            _log(f"step {event.step:04d}: {scores} ({m.count} messages)")
        elif isinstance(event, EpochDone):
            _log(f"epoch {event.epoch}: train accuracy {event.train_accuracy:.2%}, validation accuracy {event.validation_accuracy:.2%}")
        elif isinstance(event, DataReady):
            result["data"] = event.summary.to_dict()
        elif isinstance(event, ModelReady):
            _log(f"{event.model} on {event.device}: {event.counts.trainable:,} trainable of {event.counts.total:,} parameters")
            result["trainable"] = event.counts.trainable
        elif isinstance(event, FinalEvaluated):
            result["accuracy"] = {name: m.accuracy for name, m in event.metrics.items()}
        elif isinstance(event, RunSaved):
            result.update(out_dir=str(event.out_dir), adapter=str(event.adapter_dir), record=str(event.record), stopped=event.stopped)
    lines = [f"{name} accuracy: {value:.2%}" for name, value in result.get("accuracy", {}).items()]
    _emit(args, result, lines + [f"adapter saved to {result['adapter']}; run record {result['record']}"])


def _training_data(args: argparse.Namespace) -> str:
    """What `train` reads: --data; else the splits `data` prepared in --cache; else the data downloaded now into --cache."""
    from engine.config import preset
    from engine.data import load_summary, prepare

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
    classifier = Classifier.load(args.adapter, device, model=args.model, int8=args.int8)
    if args.file:
        from engine.batch import classify_file

        out = args.out or str(Path(args.file).with_suffix(".predictions.csv"))
        table = classify_file(classifier, Path(args.file), Path(out))
        counts = table["label"].value_counts().to_dict()
        summary = {"file": args.file, "out": out, "messages": len(table), "labels": counts}
        labels = table["label"].tolist()
        shown = _answers_table(labels, [table[f"p_{label}"].iloc[i] for i, label in enumerate(labels)], table["message"].tolist())
        by_label = ", ".join(f"{n:,} {label}" for label, n in counts.items())
        _emit(args, summary, [*shown, f"{len(table):,} messages classified ({by_label}); every answer with each class's probability in {out}"])
        return
    predictions = classifier.classify(args.messages)
    rows = [{"message": m, "label": p.label, "p_spam": round(p.p_spam, 4), "truncated": p.truncated} for m, p in zip(args.messages, predictions, strict=True)]
    _emit(args, {"predictions": rows}, [f"{r['label']:<4}  P(spam)={r['p_spam']:.3f}  {r['message'][:70]}" for r in rows])


FILE_ROWS_SHOWN = 20


def _answers_table(labels: list[str], probabilities: list[float], messages: list[str]) -> list[str]:
    """The first answers of a file as aligned columns: label, its probability, the message cut to a line."""
    width = max(len("label"), *(len(label) for label in labels))
    lines = [f"{'label':<{width}}  {'P(label)':>8}  message"]
    for label, p, message in list(zip(labels, probabilities, messages, strict=True))[:FILE_ROWS_SHOWN]:
        text = " ".join(message.split())
        lines.append(f"{label:<{width}}  {p:>8.3f}  {text if len(text) <= 70 else text[:69] + '…'}")
    if len(labels) > FILE_ROWS_SHOWN:
        lines.append(f"... and {len(labels) - FILE_ROWS_SHOWN:,} more")
    return lines


def cmd_bench(args: argparse.Namespace) -> None:
    from engine.bench import run_benchmark

    report = run_benchmark(args.model, args.device, args.steps, args.data, progress=None if args.json else _log)
    _emit(args, report.to_dict(), report.lines())


def _lora(args: argparse.Namespace) -> LoRAConfig:
    return LoRAConfig(rank=args.rank, alpha=args.alpha, scaling=args.scaling, targets=tuple(args.targets or LORA_TARGETS))


def _log(message: str) -> None:
    print("\r\033[K" + message if sys.stderr.isatty() else message, file=sys.stderr, flush=True)


def _progress_bar(event: Any) -> None:
    if not sys.stderr.isatty() and event.step % 10 and event.step != event.total_steps:
        return  # in a log file, one line per ten steps is plenty
    done = int(30 * event.step / event.total_steps)
    eta = time.strftime("%M:%S", time.gmtime(event.eta_s)) if event.eta_s < 3600 else f"{event.eta_s / 3600:.1f}h"
    line = f"[{'#' * done}{'.' * (30 - done)}] step {event.step}/{event.total_steps} epoch {event.epoch} loss {event.loss:.3f} ETA {eta}"
    print("\r" + line if sys.stderr.isatty() else line, end="" if sys.stderr.isatty() else "\n", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _failures_said_once(reported: bool) -> Iterator[None]:
    """While a download runs with the progress reporter, which prints each failed source as it fails: the
    engine's log line about it stays quiet, and the final error does not list the sources again."""
    from engine.errors import DownloadError

    quiet = logging.getLogger("engine.download")
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
    data.add_argument("--cache", default="data_cache", help="folder for the download and the CSVs (default: data_cache)")
    data.add_argument("--dedupe", action="store_true", help="drop repeated messages before balancing and splitting")
    data.set_defaults(run=cmd_data)

    params = add("params", "count total, frozen and trainable parameters (no weights needed)")
    params.add_argument("--model", default="gpt2-small", help=model_help)
    _lora_arguments(params, defaults=True)
    params.set_defaults(run=cmd_params)

    generate = add("generate", "greedy text generation: the pretrained-weights sanity check")
    generate.add_argument("--model", default="gpt2-small", help=model_help)
    generate.add_argument("--max-new-tokens", type=int, default=15)
    generate.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, mps")
    generate.add_argument("prompt", nargs="?", default="Every effort moves you")
    generate.set_defaults(run=cmd_generate)

    train = add("train", "fine-tune with LoRA and save the adapter and a run record")
    train.add_argument("--model", default="gpt2-small", help=model_help)
    train.add_argument("--preset", choices=PRESETS, default="recommended", help="book: the book's appendix E exactly; recommended: faster and as accurate")
    train.add_argument(
        "--data", help="folder made by `data`, or a source as `data --source` takes (default: what `data` prepared in --cache, else download)"
    )
    train.add_argument("--cache", default="data_cache", help="where downloaded data and CSVs go (default: data_cache)")
    train.add_argument("--dedupe", action="store_true", help="drop repeated messages before balancing and splitting")
    _lora_arguments(train, defaults=False)
    train.add_argument("--lr", type=float, help="learning rate (preset: book 5e-5, recommended 8e-4)")
    train.add_argument("--epochs", type=int)
    train.add_argument("--batch-size", type=int)
    train.add_argument("--max-steps", type=int, help="stop after this many optimiser steps")
    train.add_argument("--no-live-metrics", action="store_true", help="at each loss estimate, skip scoring the whole validation set (faster)")
    train.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, mps")
    train.add_argument("--out", default="runs/latest", help="output folder (default: runs/latest)")
    train.set_defaults(run=cmd_train)

    classify = add("classify", "classify messages with a trained adapter")
    classify.add_argument("--adapter", required=True, help="adapter folder written by `train` (OUT/adapter)")
    classify.add_argument("--model", help="base model if it has moved (default: the one the adapter names)")
    classify.add_argument("--device", default="auto")
    classify.add_argument("--int8", action="store_true", help="int8 weights on the CPU: faster, answers may differ slightly")
    classify.add_argument("--file", help="classify every message of a file (one per line, or a CSV/TSV with a text column)")
    classify.add_argument("--out", help="where --file's predictions go (default: FILE.predictions.csv)")
    classify.add_argument("messages", nargs="*", help="one or more messages")
    classify.set_defaults(run=cmd_classify)

    bench = add("bench", "measure training and classification speed on this machine (random weights)")
    bench.add_argument("--model", default="gpt2-small", help="size to benchmark (random weights of the real shape)")
    bench.add_argument("--device", default="auto")
    bench.add_argument("--steps", type=int, default=5, help="timed training steps per measurement")
    bench.add_argument("--data", help="SMS source for the epoch comparison (default: the data cache, else the shipped test zip)")
    bench.set_defaults(run=cmd_bench)
    return parser


def _lora_arguments(parser: argparse.ArgumentParser, defaults: bool) -> None:
    parser.add_argument("--rank", type=int, default=16 if defaults else None, help="LoRA rank (default 16)")
    parser.add_argument("--alpha", type=float, default=16.0 if defaults else None, help="LoRA alpha (default 16)")
    parser.add_argument("--scaling", choices=SCALINGS, default="alpha" if defaults else None, help="alpha (book) or alpha_over_rank (Hu et al., PEFT)")
    parser.add_argument("--targets", nargs="+", choices=LORA_TARGETS, metavar="TARGET", help=f"layers to adapt (default all): {', '.join(LORA_TARGETS)}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (LoRALabError, ValueError, FileNotFoundError, MemoryError) as error:
        print(f"error: {_one_line(error)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RuntimeError as error:
        if "out of memory" not in str(error).lower():
            raise
        print(f"error: {_one_line(error)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


def _one_line(error: BaseException) -> str:
    if isinstance(error, MemoryError) or "out of memory" in str(error).lower():
        return "out of memory: try a smaller model size or a smaller batch size"
    return " ".join(str(error).split())
