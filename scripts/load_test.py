"""Many visitors classifying at once: N gradio_client callers share M classify requests against LoRA Lab.

    python scripts/load_test.py                      # tiny random GPT-2, an adapter trained for 30 steps
    python scripts/load_test.py --model gpt2-small --adapter runs/<run>/adapter

Launches the app in this process on a free 127.0.0.1 port, checks every answer against the engine's
own Classifier for the same message, and prints p50/p95 latency, throughput and the error count.
`hammer` is what tests/test_app_reliability.py runs with the same figures.
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


@dataclass
class LoadReport:
    """What the callers saw: one latency per answered request, one line per failed one."""

    callers: int
    requests: int
    wall_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    answers: list[tuple[str, str, float]] = field(default_factory=list)  # (message, label, its probability)

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_s)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")

    def summary(self) -> str:
        return (
            f"{self.callers} callers, {self.requests} requests in {self.wall_s:.1f} s: "
            f"p50 {1000 * self.percentile(0.5):.0f} ms, p95 {1000 * self.percentile(0.95):.0f} ms, "
            f"mean {1000 * statistics.fmean(self.latencies_s or [float('nan')]):.0f} ms, "
            f"throughput {len(self.latencies_s) / self.wall_s:.1f} requests/s, errors {len(self.errors)}"
        )


def hammer(url: str, messages: Sequence[str], callers: int = 20, requests: int = 200, auth: tuple[str, str] | None = None) -> LoadReport:
    """`callers` threads, each with its own gradio_client, send `requests` /classify calls in all, all starting together."""
    from gradio_client import Client

    report = LoadReport(callers, requests)
    lock = threading.Lock()
    ready = threading.Barrier(callers + 1)

    def caller(index: int) -> None:
        try:
            client = Client(url, verbose=False, analytics_enabled=False, auth=auth)
        except Exception as error:  # a caller that cannot connect counts every request it owned as failed
            with lock:
                report.errors += [f"connect: {error!r}"] * len(range(index, requests, callers))
            ready.wait()
            return
        ready.wait()
        for number in range(index, requests, callers):
            message = messages[number % len(messages)]
            started = time.perf_counter()
            try:
                fine_tuned, _, _ = client.predict(message, None, api_name="/classify")
            except Exception as error:
                with lock:
                    report.errors.append(f"request {number}: {error!r}")
                continue
            elapsed = time.perf_counter() - started
            label = fine_tuned["label"]
            probability = next(c["confidence"] for c in fine_tuned["confidences"] if c["label"] == label)
            with lock:
                report.latencies_s.append(elapsed)
                report.answers.append((message, label, probability))

    threads = [threading.Thread(target=caller, args=(i,), daemon=True) for i in range(callers)]
    for thread in threads:
        thread.start()
    ready.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    report.wall_s = time.perf_counter() - started
    return report


def wrong_answers(report: LoadReport, adapter: Path, model: str | None = None) -> list[str]:
    """Answers that differ from the engine's Classifier for the same message (label, or probability beyond 1e-4)."""
    import torch

    from engine.classifier import Classifier

    classifier = Classifier.load(adapter, torch.device("cpu"), model=model)
    distinct = sorted({message for message, _, _ in report.answers})
    expected = dict(zip(distinct, classifier.classify(distinct), strict=True))
    wrong = []
    for message, label, probability in report.answers:
        want = expected[message]
        # A different label is wrong unless the engine's own answer is a tie between the two.
        if abs(want.probabilities[label] - probability) > 1e-4 or (label != want.label and want.probability - want.probabilities[label] > 1e-4):
            wrong.append(f"{message[:40]!r}: got {label} {probability:.4f}, engine says {want.label} {want.probabilities[want.label]:.4f}")
    return wrong


def sample_messages(count: int = 50) -> list[str]:
    """Real SMS texts from the shipped fixture, plus the app's examples."""
    from engine.data import read_source_file
    from ui.classify_tab import EXAMPLE_MESSAGES

    texts = read_source_file(ROOT / "tests" / "fixtures" / "sms_spam_collection.zip")["Text"].tolist()
    return list(EXAMPLE_MESSAGES) + texts[: max(0, count - len(EXAMPLE_MESSAGES))]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python scripts/load_test.py", description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="a GPT-2 size or model folder (default: a tiny random GPT-2 made for the test)")
    parser.add_argument("--adapter", type=Path, help="an adapter folder trained on --model (default: train one for --steps steps)")
    parser.add_argument("--steps", type=int, default=30, help="training steps when no --adapter is given (default 30)")
    parser.add_argument("--callers", type=int, default=20)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    from app_fixtures import running_app

    from engine.config import RunConfig
    from engine.run import fine_tune
    from ui.settings import AppSettings

    work = Path(tempfile.mkdtemp(prefix="lora-lab-load-"))
    try:
        model = args.model
        if model is None:
            from conftest import write_hf_checkpoint

            model = str(write_hf_checkpoint(work / "tiny-gpt2"))
        runs = work / "runs"
        if args.adapter is None:
            print(f"training an adapter on {model} for {args.steps} steps...", flush=True)
            cfg = RunConfig.from_preset(
                "recommended", model=model, data=str(ROOT / "tests" / "fixtures" / "sms_spam_collection.zip"), data_cache=str(work / "cache")
            )
            cfg = cfg.with_train(epochs=1, max_steps=args.steps, eval_freq=args.steps)
            for _ in fine_tune(RunConfig(**{**cfg.__dict__, "out_dir": str(runs / "load-test"), "device": args.device})):
                pass
        else:
            shutil.copytree(args.adapter, runs / "given" / "adapter")
        adapter = runs.glob("*/adapter").__next__()
        settings = AppSettings(model=model, device=args.device, out=runs, cache=work / "cache")
        messages = sample_messages()
        with running_app(settings) as served:
            report = hammer(served.url, messages, args.callers, args.requests)
        wrong = wrong_answers(report, adapter, model)
        print(f"model {model}, device {args.device}, {os.cpu_count()} CPUs")
        print(report.summary())
        for line in (report.errors + wrong)[:10]:
            print("  " + line)
        print(f"answers differing from the engine's Classifier: {len(wrong)}")
        return 0 if not report.errors and not wrong else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
