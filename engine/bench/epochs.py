"""One epoch of the real SMS training split in `book` and `recommended` mode, through the engine's
own `train`: timed on a few steps of the real, seeded batch order and extrapolated to every batch
by its token count, the two presets' steps interleaved; or, with `full_epochs`, each epoch timed
whole as a run trains it (the losses read from the device every few steps, not after each).

Each preset computes in its own precision (book: fp32; recommended: auto) unless one is given."""

import math
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from engine.bench.peak import sync
from engine.bench.report import EpochResult
from engine.bench.training import WARMUP_STEPS
from engine.config import DATA_CACHE, MAX_EVAL_FREQ, GPTConfig, preset


def load_splits_for_bench(data: str | None) -> Any:
    """The SMS splits: `data` if given (a prepared folder, zip, TSV or URL), else the data cache (see `prepared_for_bench`).

    Raises:
        DownloadError: no `data`, an empty cache, and the download failed (offline, say).
    """
    from engine.data.prepared import prepare

    with tempfile.TemporaryDirectory() as scratch:
        return prepare(str(prepared_for_bench(data, Path(scratch)))).splits


def prepared_for_bench(data: str | None, scratch: Path) -> Path:
    """A prepared data folder: `data` if it is one, else `data` prepared into `scratch`; without `data`,
    the data cache, downloaded and prepared there first when it is empty (as `python -m engine data` does)."""
    from engine.data.prepared import is_prepared_folder, prepare

    if data is None:
        cache = Path(DATA_CACHE)
        return cache if (cache / "train.csv").is_file() else prepare(None, cache).folder
    return Path(data) if is_prepared_folder(data) else prepare(data, scratch).folder


class _EpochRun:
    """One preset's real training epoch through `train` on random weights: a step at a time, or whole."""

    def __init__(self, mode: str, cfg: GPTConfig, splits: Any, device: torch.device, timed: int | None, precision: str | None) -> None:
        from engine.classifier import build_classifier
        from engine.device import dtype_of, precision_for
        from engine.loaders import make_loaders
        from engine.model import GPT
        from engine.train import LOSS_READ_S, train

        chosen = preset(mode)
        self.mode, self.device, self.rows_per_batch = mode, device, chosen.train.batch_size
        self.precision = precision_for(precision or chosen.train.precision, device)
        self.widths, self.real = [], []
        for batch in make_loaders(splits, chosen.train, cfg.context_length).train:  # the same seeded order train() will see
            self.widths.append(batch.input_ids.size(1))
            self.real += batch.lengths.tolist()
        self.total = len(self.widths) if timed is None else min(len(self.widths), timed)
        self.full = timed is None
        self.train_cfg = replace(
            chosen.train, epochs=1, max_steps=self.total, eval_iter=1, eval_freq=MAX_EVAL_FREQ, live_metrics=False, precision=self.precision
        )
        self.preset_train = chosen.train
        with torch.device(device):  # random weights, drawn where they are used
            base = GPT(cfg)
        base.store_products_in(dtype_of(self.precision))
        self.model = build_classifier(base, chosen.lora)
        self.loaders = make_loaders(splits, chosen.train, cfg.context_length, pin_memory=device.type == "cuda")
        # Timed a step at a time, each step's loss is read (the host waits for the device); a whole epoch reads as a run does.
        self.events = train(self.model, self.loaders, self.train_cfg, device, read_losses_every_s=LOSS_READ_S if self.full else 0.0)
        self.intervals: list[float] = []
        self.epoch_s: float | None = None  # set by `whole`

    def step(self) -> None:
        if len(self.intervals) < self.total:
            start = time.perf_counter()
            self._until(lambda event: _is_step(event))
            self.intervals.append(time.perf_counter() - start)

    def whole(self) -> None:
        """The epoch as a run trains it, less train()'s one-batch estimate after step 1 (the preset's
        own estimates are timed apart, see `time_estimates`): step 1, then steps 2 to the last."""
        from engine.train import LossEvaluated

        sync(self.device)
        start = time.perf_counter()
        self._until(lambda event: _is_step(event, 1))
        sync(self.device)
        first = time.perf_counter() - start
        self._until(lambda event: isinstance(event, LossEvaluated))
        sync(self.device)
        start = time.perf_counter()
        if self.total > 1:
            self._until(lambda event: _is_step(event, self.total))
        sync(self.device)
        self.epoch_s = first + time.perf_counter() - start

    def _until(self, wanted: Callable[[object], bool]) -> None:
        for event in self.events:
            if wanted(event):
                return

    def time_estimates(self) -> tuple[float, float]:
        """Seconds for one of the preset's loss estimates, without and with live validation scoring
        (the median of three; train() runs them every eval_freq steps)."""
        from engine.evaluate import evaluate, evaluate_whole_and_first

        t = self.preset_train
        plain, live = [], []
        for _ in range(3):
            start = time.perf_counter()
            evaluate(self.model, self.loaders.train_sample, self.device, t.pooling, t.eval_iter)
            train_part = time.perf_counter() - start
            start = time.perf_counter()
            evaluate(self.model, self.loaders.validation, self.device, t.pooling, t.eval_iter)
            plain.append(train_part + time.perf_counter() - start)
            start = time.perf_counter()
            evaluate_whole_and_first(self.model, self.loaders.validation, self.device, t.pooling, t.eval_iter)
            live.append(train_part + time.perf_counter() - start)
        return statistics.median(plain), statistics.median(live)

    def result(self) -> EpochResult:
        self.events.close()
        estimate_s, live_estimate_s = self.time_estimates()
        widths = self.widths
        padded = [w * self.rows_per_batch for w in widths]
        if self.epoch_s is not None:
            epoch_s, method, kept, kept_widths = self.epoch_s, "whole epoch, timed as a run trains it", (), ()
        else:
            kept = self.intervals[WARMUP_STEPS:] or self.intervals[-1:]
            kept_widths = widths[WARMUP_STEPS : len(self.intervals)] or widths[len(self.intervals) - 1 : len(self.intervals)]
            epoch_s, method = _extrapolate(kept, [w * self.rows_per_batch for w in kept_widths], padded)
        return EpochResult(
            mode=self.mode,
            precision=self.precision,
            steps_per_epoch=len(widths),
            rows=len(widths) * self.rows_per_batch,
            mean_padded_length=round(statistics.fmean(widths), 2),
            mean_real_length=round(statistics.fmean(self.real), 2),
            padded_tokens=sum(padded),
            measured_steps=len(widths) if self.epoch_s is not None else len(kept),
            measured_step_times_s=tuple(round(t, 4) for t in kept),
            measured_step_widths=tuple(kept_widths),
            epoch_s=round(epoch_s, 3),
            extrapolated=self.epoch_s is None,
            method=method,
            estimates_per_epoch=math.ceil(len(widths) / self.preset_train.eval_freq),  # after steps 1, 1 + eval_freq, ...
            estimate_s=round(estimate_s, 3),
            live_estimate_s=round(live_estimate_s, 3),
            estimate_validation_batches=min(self.preset_train.eval_iter, len(self.loaders.validation)),
            live_validation_batches=len(self.loaders.validation),
            real_tokens=sum(self.real),
            preset_epochs=self.preset_train.epochs,
        )


def _is_step(event: object, step: int | None = None) -> bool:
    from engine.train import StepDone

    return isinstance(event, StepDone) and (step is None or event.step == step)


def time_epochs(
    cfg: GPTConfig, splits: Any, device: torch.device, steps: int, full: bool, say: Callable[[str], None], precision: str | None = None
) -> list[EpochResult]:
    """`book` and `recommended` epochs: timed steps interleaved so both see the same machine load, or
    (`full`) each whole epoch in turn."""
    runs = [_EpochRun(mode, cfg, splits, device, None if full else WARMUP_STEPS + steps, precision) for mode in ("book", "recommended")]
    if full:
        for run in runs:
            run.whole()
            say(f"  {run.mode}: {run.total} steps in {run.epoch_s:.2f} s ({run.precision})")
        return [run.result() for run in runs]
    for i in range(max(run.total for run in runs)):
        for run in _alternating(runs, i):
            run.step()
        say(f"  step {i + 1}: " + ", ".join(f"{r.mode} {r.intervals[-1]:.2f} s (width {r.widths[len(r.intervals) - 1]})" for r in runs))
    return [run.result() for run in runs]


def _alternating(runs: list[_EpochRun], i: int) -> Iterator[_EpochRun]:
    yield from runs if i % 2 == 0 else runs[::-1]


def _extrapolate(times: Sequence[float], tokens: Sequence[int], all_tokens: Sequence[int]) -> tuple[float, str]:
    """Epoch time from timed steps: a per-step + per-token least-squares fit when the timed widths
    spread enough to support one, else time proportional to tokens (the steps' mean rate)."""
    if len(set(tokens)) >= 2 and max(tokens) >= 1.5 * min(tokens):
        mean_t, mean_x = statistics.fmean(times), statistics.fmean(tokens)
        slope = sum((x - mean_x) * (t - mean_t) for x, t in zip(tokens, times, strict=True)) / sum((x - mean_x) ** 2 for x in tokens)
        intercept = mean_t - slope * mean_x
        if slope > 0 and intercept >= 0:
            return intercept * len(all_tokens) + slope * sum(all_tokens), f"fit {intercept:.3f} s + {slope * 1e3:.3f} ms/token"
    if len(set(tokens)) == 1:
        step = statistics.median(times)
        return step * len(all_tokens), "median step x steps"
    rate = sum(times) / sum(tokens)
    return rate * sum(all_tokens), f"{rate * 1e3:.3f} ms/token x epoch tokens"
