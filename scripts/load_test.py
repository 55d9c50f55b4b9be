"""Many visitors at once against LoRA Lab, each a gradio_client of its own.

    python scripts/load_test.py                      # classify: tiny random GPT-2, an adapter trained for 30 steps
    python scripts/load_test.py --model gpt2-small --adapter runs/<run>/adapter
    python scripts/load_test.py --data sms+spam+collection.zip   # the messages (default: the data cache)
    python scripts/load_test.py --visitors 30 --workers 2        # a room: each visitor starts a short run and follows it

Launches the app in this process on a free 127.0.0.1 port. Classify: N callers share M classify
requests; every answer is checked against the engine's own Classifier for the same message; prints
p50/p95 latency, throughput and the error count (`hammer`, which tests/test_app_reliability.py runs).
A room (`room_visitors`, which tests/test_room_load.py runs): each visitor starts one short run and
polls as its page does until the run ends; prints whether every run ended done, whether each visitor
only ever followed its own run, the failed requests, and the app's memory (resident size) meanwhile.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gradio_client import Client

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

# How long a caller waits for an answer. gradio_client's own default (5 s) is stricter than any browser, which
# waits as long as it takes: on a loaded 2-core machine an answer can take longer and still be an answer.
PATIENCE_S = 60.0


def local_client(url: str, auth: tuple[str, str] | None = None) -> Client:
    """A gradio_client for an app served on plain HTTP at 127.0.0.1, as patient as a browser. It skips TLS set-up,
    which has nothing to verify here: with it, each call loads the CA bundle again (about 0.1 s of CPU, more than
    the app spends answering), and 30 such callers would take the machine from the app they measure."""
    from gradio_client import Client

    return Client(url, verbose=False, analytics_enabled=False, auth=auth, ssl_verify=False, httpx_kwargs={"timeout": PATIENCE_S})


def percentile(values: Sequence[float], q: float) -> float:
    """The `q` quantile of `values` (the nearest one); nan for none."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


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
        return percentile(self.latencies_s, q)

    def summary(self) -> str:
        return (
            f"{self.callers} callers, {self.requests} requests in {self.wall_s:.1f} s: "
            f"p50 {1000 * self.percentile(0.5):.0f} ms, p95 {1000 * self.percentile(0.95):.0f} ms, "
            f"mean {1000 * statistics.fmean(self.latencies_s or [float('nan')]):.0f} ms, "
            f"throughput {len(self.latencies_s) / self.wall_s:.1f} requests/s, errors {len(self.errors)}"
        )


def hammer(url: str, messages: Sequence[str], callers: int = 20, requests: int = 200, auth: tuple[str, str] | None = None) -> LoadReport:
    """`callers` threads, each with its own gradio_client, send `requests` /classify calls in all, all starting together."""
    report = LoadReport(callers, requests)
    lock = threading.Lock()
    ready = threading.Barrier(callers + 1)

    def caller(index: int) -> None:
        try:
            client = local_client(url, auth)
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


@dataclass
class RoomReport:
    """What a room of visitors saw: each visitor's run, how it ended, and every request that failed."""

    visitors: int
    wall_s: float = 0.0
    requests: int = 0
    runs: dict[int, str] = field(default_factory=dict)  # visitor -> the run it started
    ended: dict[str, str] = field(default_factory=dict)  # run -> its last state
    errors: list[str] = field(default_factory=list)
    strangers: list[str] = field(default_factory=list)  # a visitor shown another visitor's run by default
    rss_mb: list[float] = field(default_factory=list)  # the app's resident memory, sampled every second
    poll_s: list[float] = field(default_factory=list)  # how long each answered /poll took, as its page would wait

    def summary(self) -> str:
        done = sum(state == "done" for state in self.ended.values())
        rss = self.rss_mb
        memory = f"{rss[0]:.0f} MB at the start, at most {max(rss):.0f} MB, {rss[-1]:.0f} MB at the end" if rss else "not measured"
        latency = f"polls answered in {percentile(self.poll_s, 0.5):.2f} s (median), {percentile(self.poll_s, 0.95):.2f} s (95th percentile)"
        return (
            f"{self.visitors} visitors, {len(self.runs)} runs started, {done} done, in {self.wall_s:.0f} s; "
            f"{self.requests} requests, {len(self.errors)} failed; {latency}; "
            f"{len(self.strangers)} polls showed another visitor's run; app memory {memory}"
        )


def resident_mb() -> float | None:
    """This process's resident memory in MB (Linux's /proc); None elsewhere."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def room_visitors(url: str, model: str, visitors: int = 30, steps: int = 4, poll_s: float = 1.0, timeout_s: float = 3600.0) -> RoomReport:
    """`visitors` gradio_clients, each starting one run of `steps` steps on `model` and polling it as a page does (the
    Train tab's /poll, its default "your latest run", and /run_info) until it ends. The visitors run in a process of
    their own, as a room's browsers are elsewhere (sharing the app's interpreter lock they would slow its answers);
    the app must run in this process, whose memory is sampled meanwhile."""
    samples: list[float] = []
    finished = threading.Event()

    def sample_memory() -> None:
        while True:
            if (mb := resident_mb()) is not None:
                samples.append(mb)
            if finished.wait(1.0):
                return

    sampler = threading.Thread(target=sample_memory, daemon=True)
    sampler.start()
    try:
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            report = pool.apply(_visitors_in_this_process, (url, model, visitors, steps, poll_s, timeout_s))
    finally:
        finished.set()
        sampler.join()
    if (mb := resident_mb()) is not None:
        samples.append(mb)
    report.rss_mb = samples
    return report


def _visitors_in_this_process(url: str, model: str, visitors: int, steps: int, poll_s: float, timeout_s: float) -> RoomReport:
    """The visitors of `room_visitors`, each a thread with its own gradio_client, all starting together."""
    report = RoomReport(visitors)
    lock, ready = threading.Lock(), threading.Barrier(visitors + 1)

    def call(client: Client, *args: object, **kwargs: object) -> object:
        with lock:
            report.requests += 1
        return client.predict(*args, **kwargs)

    def visitor(index: int) -> None:
        try:
            client = local_client(url)
        except Exception as error:  # a visitor that cannot connect still lets the others start
            with lock:
                report.errors.append(f"visitor {index}: connect: {error!r}")
            ready.wait()
            return
        ready.wait()
        deadline = time.monotonic() + timeout_s
        try:
            started = call(client, model=model, max_steps=steps, eval_freq=steps, epochs=1, live_metrics=False, owner=f"visitor {index}", api_name="/start")
            run = started[12]["value"]  # the run this page now follows
            with lock:
                report.runs[index] = run
            while time.monotonic() < deadline:
                asked = time.perf_counter()
                header = call(client, "", api_name="/poll")[0]  # the page's timer, following "your latest run"
                with lock:
                    report.poll_s.append(time.perf_counter() - asked)
                info = call(client, "", api_name="/run_info")
                if info["id"] != run or (isinstance(header, str) and header.startswith("**Run") and not header.startswith(f"**Run {run}**")):
                    with lock:
                        report.strangers.append(f"visitor {index} ({run}) was shown {info['id']}")
                if info["state"] not in ("queued", "running"):
                    with lock:
                        report.ended[run] = info["state"]
                    return
                time.sleep(poll_s)
            with lock:
                report.errors.append(f"visitor {index}: run {run} did not end within {timeout_s:.0f} s")
        except Exception as error:
            with lock:
                report.errors.append(f"visitor {index}: {error!r}")

    threads = [threading.Thread(target=visitor, args=(index,), daemon=True) for index in range(visitors)]
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


def sample_messages(data: Path, count: int = 50) -> list[str]:
    """The app's examples, then real SMS texts from the test split of `data` (a prepared folder)."""
    from engine.data.prepared import read_split
    from ui.classify_tab import EXAMPLE_MESSAGES

    texts = read_split(data, "test")["Text"].tolist()
    return list(EXAMPLE_MESSAGES) + texts[: max(0, count - len(EXAMPLE_MESSAGES))]


@contextlib.contextmanager
def serving(settings: object) -> Iterator[str]:
    """LoRA Lab launched as `python app.py` launches it, in this process on a free local port: its URL."""
    import app
    from ui.lab import Lab

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    lab = Lab(settings)
    demo = app.build_ui(settings, lab)
    try:
        yield app.launch(demo, settings, "127.0.0.1", port)
    finally:
        lab.close()
        demo.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python scripts/load_test.py", description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="a GPT-2 size or model folder (default: a tiny random GPT-2 made for the test)")
    parser.add_argument("--adapter", type=Path, help="an adapter folder trained on --model (default: train one for --steps steps)")
    parser.add_argument("--steps", type=int, default=30, help="training steps when no --adapter is given (default 30)")
    parser.add_argument("--callers", type=int, default=20)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data", help="the SMS messages: a prepared folder, zip or TSV (default: the data cache, downloaded there if empty)")
    parser.add_argument("--visitors", type=int, help="a room instead: this many visitors, each starting a run of --steps steps and following it")
    parser.add_argument("--workers", type=int, default=2, help="runs trained at once, for --visitors (default 2)")
    args = parser.parse_args(argv)

    from engine.bench.epochs import prepared_for_bench
    from engine.config import GPTConfig, RunConfig
    from engine.model import GPT
    from engine.runs.run import fine_tune
    from engine.weights import save_hf_checkpoint
    from ui.settings import AppSettings

    work = Path(tempfile.mkdtemp(prefix="lora-lab-load-"))
    try:
        data = prepared_for_bench(args.data, work / "data")
        model = args.model or str(save_hf_checkpoint(GPT(GPTConfig("tiny", context_length=256, n_embd=32, n_layer=2, n_head=4)), work / "tiny-gpt2"))
        runs = work / "runs"
        if args.visitors:
            settings = AppSettings(model=model, device=args.device, out=runs, cache=data, workers=args.workers, room=True)
            with serving(settings) as url:
                room = room_visitors(url, model, args.visitors, args.steps)
            print(f"model {model}, device {args.device}, {args.workers} workers, {os.cpu_count()} CPUs")
            print(room.summary())
            for line in (room.errors + room.strangers)[:10]:
                print("  " + line)
            return 0 if not room.errors and not room.strangers and set(room.ended.values()) == {"done"} else 1
        if args.adapter is None:
            print(f"training an adapter on {model} for {args.steps} steps...", flush=True)
            cfg = RunConfig.from_preset("recommended", model=model, data=str(data), out_dir=str(runs / "load-test"), device=args.device)
            for _ in fine_tune(cfg.with_train(epochs=1, max_steps=args.steps, eval_freq=args.steps)):
                pass
        else:
            shutil.copytree(args.adapter, runs / "given" / "adapter")
        adapter = runs.glob("*/adapter").__next__()
        settings = AppSettings(model=model, device=args.device, out=runs, cache=work / "cache")
        with serving(settings) as url:
            report = hammer(url, sample_messages(data), args.callers, args.requests)
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
