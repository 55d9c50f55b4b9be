"""A run's record from start to end, however it ends: killed (SIGKILL), out of disk (a real small
tmpfs), diverged (a loss that is no longer finite); broken adapters; the mode of saved files."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import TINY, broken_adapter, tiny_run_config

import engine.runs.record
import engine.train
from engine.adapter import read_adapter
from engine.classifier import Classifier, build_classifier
from engine.config import LoRAConfig, TrainConfig
from engine.errors import AdapterError, ConfigError, DiskFullError, TrainingDiverged
from engine.failure import divergence_cause
from engine.lora import merge_lora
from engine.model import GPT
from engine.runs.history import list_runs
from engine.runs.record import RECORD_FILE, read_record
from engine.runs.run import fine_tune
from engine.train import LossEvaluated
from ui.answering import finished_runs

ROOT = Path(__file__).resolve().parents[1]


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


# --- a run killed with SIGKILL -------------------------------------------------------------------

RUNNER = textwrap.dedent(
    """
    import sys
    sys.path[:0] = [{root!r}, {tests!r}]
    from conftest import tiny_run_config
    from engine.runs.run import fine_tune
    from engine.train import LossEvaluated

    cfg = tiny_run_config(*sys.argv[1:4], epochs=100, max_steps=None, eval_freq=3)
    for event in fine_tune(cfg):
        if isinstance(event, LossEvaluated):
            print("estimate", event.step, flush=True)
    """
)


@pytest.mark.slow
def test_a_killed_run_is_listed_as_interrupted_and_its_checkpoint_classifies(tiny_model_dir: Path, prepared_data: Path, tmp_path: Path) -> None:
    from ui.lab import Lab
    from ui.runs_tab import RunsTab
    from ui.settings import AppSettings

    root = tmp_path / "runs"
    out = root / "20250101-000000"
    script = RUNNER.format(root=str(ROOT), tests=str(ROOT / "tests"))
    process = subprocess.Popen([sys.executable, "-c", script, str(tiny_model_dir), str(prepared_data), str(out)], stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(2):  # the second estimate: training is well under way
            line = process.stdout.readline()
            assert line.startswith("estimate"), f"the run ended early ({process.wait()})"
        assert read_record(out)["state"] == "running"  # its process is alive: not mistaken for interrupted
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()

    (run,) = list_runs(root)
    assert run.state == "interrupted" and run.steps >= 1
    assert "ended before the run did" in run.error and "the adapter saved at step" in run.error
    assert json.loads((out / RECORD_FILE).read_text())["state"] == "interrupted"  # written back for good
    assert not [name for name in files_under(out) if name.endswith(".tmp")]
    _, tensors = read_adapter(out / "adapter")  # the checkpoint is whole and finite...
    prediction = Classifier.load(out / "adapter", torch.device("cpu")).classify("WIN a prize now")[0]
    assert set(prediction.probabilities) == {"ham", "spam"}  # ...and classifies
    assert finished_runs(root, []) == []  # but an interrupted run is never offered to answer
    lab = Lab(AppSettings(model=str(tiny_model_dir), device="cpu", out=root, cache=tmp_path / "cache"))
    history = RunsTab(lab).history()
    assert history["run"].tolist() == [out.name] and history["state"].tolist() == ["interrupted"]


def test_a_record_of_this_process_that_no_run_is_writing_reads_as_interrupted(tmp_path: Path, tiny_model_dir: Path, prepared_data: Path) -> None:
    record = engine.runs.record.RunRecord.begin(tiny_run_config(tiny_model_dir, prepared_data, tmp_path / "run"))
    assert read_record(tmp_path / "run")["state"] == "running"
    engine.runs.record._running.discard(engine.runs.record._key(tmp_path / "run"))  # as after a restart that got the same pid
    assert read_record(tmp_path / "run")["state"] == "interrupted"
    assert record.fields["process"]["pid"] == os.getpid()


# --- a full disk -------------------------------------------------------------------------------------


@contextlib.contextmanager
def small_disk(folder: Path, size_kb: int) -> Iterator[Path]:
    """A real tmpfs of `size_kb` mounted at `folder`; skips where the OS refuses (mounting needs root)."""
    folder.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(folder)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.strip() or mounted.returncode}): the disk-full tests need root")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path, leave_bytes: int = 0) -> Path:
    """Fill the disk holding `folder` until `leave_bytes` are free (to the page)."""
    filler = folder / "filler"
    with open(filler, "ab") as handle, contextlib.suppress(OSError):
        while (free := os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize) > leave_bytes:
            handle.write(b"\0" * min(free - leave_bytes, 1024 * 1024))
            handle.flush()
    return filler


def test_no_room_for_a_run_says_so_and_leaves_nothing(tiny_model_dir: Path, prepared_data: Path, tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk", 256) as disk:
        fill(disk)
        out = disk / "run"
        with pytest.raises(DiskFullError, match=f"^the disk is full at {out}: free space or choose another --out$"):
            list(fine_tune(tiny_run_config(tiny_model_dir, prepared_data, out)))
        assert files_under(disk) == ["filler"] and not out.exists()


@pytest.mark.parametrize("room_left", [0, 32 * 1024], ids=["not-even-a-record", "room-for-a-record"])
def test_a_run_that_fills_the_disk_fails_with_advice_and_is_never_the_latest(
    tiny_model_dir: Path, prepared_data: Path, tmp_path: Path, trained_run: tuple[object, list], monkeypatch: pytest.MonkeyPatch, room_left: int
) -> None:
    import engine.runs.run

    earlier = Path(trained_run[0].out_dir)
    with small_disk(tmp_path / "disk", 2048) as root:  # room for the run's files (its best adapter too) until the final record fills it
        finished = root / "20250101-000000"
        for name in ("adapter/adapter.safetensors", "adapter/adapter_config.json", "run.json"):
            (finished / name).parent.mkdir(parents=True, exist_ok=True)
            (finished / name).write_bytes((earlier / name).read_bytes())
        out = root / "20250102-000000"
        real_fields = engine.runs.run.record_fields

        def fields_on_a_full_disk(cfg, progress, device, precision, seconds=None):
            if seconds is not None:  # the final record: the adapter and plot are written; then the disk fills up
                fill(root, leave_bytes=room_left)
            return real_fields(cfg, progress, device, precision, seconds)

        monkeypatch.setattr(engine.runs.run, "record_fields", fields_on_a_full_disk)
        with pytest.raises(DiskFullError, match=f"^the disk is full at {out}: free space or choose another --out$"):
            list(fine_tune(tiny_run_config(tiny_model_dir, prepared_data, out, max_steps=6, eval_freq=3)))
        assert [run.folder for run in finished_runs(root, [])] == [finished]  # never the failed run's adapter
        left = files_under(out) if out.exists() else []
        if room_left:  # the run is recorded as failed (its full record did not fit), with what it saved
            best = ["adapter-best/adapter.safetensors", "adapter-best/adapter_config.json"]  # at an estimate (after step 1 or 4), not the last step
            assert left == [*best, "adapter/adapter.safetensors", "adapter/adapter_config.json", "checkpoint.pt", "loss.png", "run.json"]
            record = read_record(out)
            assert record["state"] == "failed" and record["error"] == f"the disk is full at {out}: free space or choose another --out; " + (
                f"the adapter saved at step 6 is kept in {out / 'adapter'}"  # the final one: only the record failed
            )
        else:  # not even a short record fits: nothing of the run is left, no adapter without a record
            assert left == [] and not out.exists()


def test_a_worker_reports_a_full_disk_in_words(tiny_model_dir: Path, prepared_data: Path, tmp_path: Path) -> None:
    import threading

    from engine.runs.jobs import WorkerJob
    from engine.runs.worker import run_job

    with small_disk(tmp_path / "disk", 256) as disk:
        fill(disk)
        ended = run_job(WorkerJob(tiny_run_config(tiny_model_dir, prepared_data, disk / "run")), threading.Event(), lambda event: None)
        assert ended.state == "failed" and ended.failure.kind == "bad input"
        assert ended.failure.message == f"the disk is full at {disk / 'run'}: free space or choose another --out"


# --- a loss that is no longer finite ----------------------------------------------------------------


def test_the_learning_rate_is_bounded() -> None:
    for lr in (1e30, 0.5, float("inf"), float("nan"), 0.0, 1e-9):
        with pytest.raises(ConfigError, match="learning rate must be from 1e-7 to 0.1"):
            TrainConfig(lr=lr)
    assert TrainConfig(lr=0.1).lr == 0.1 and TrainConfig(lr=1e-7).lr == 1e-7


def test_a_run_whose_loss_turns_nan_stops_failed_and_keeps_its_last_finite_checkpoint(
    tiny_model_dir: Path, prepared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real, steps = engine.train.batch_loss, []

    def poisoned(model, batch, pooling):  # from step 8 on, as a learning rate far too high would
        steps.append(1)
        loss = real(model, batch, pooling)
        return loss * float("nan") if len(steps) >= 8 else loss

    monkeypatch.setattr(engine.train, "batch_loss", poisoned)
    monkeypatch.setattr(engine.runs.record, "CHECKPOINT_EVERY_S", 0.0)  # a checkpoint at every estimate
    root = tmp_path / "runs"
    out = root / "diverged"
    events = []
    kept = f"the adapter saved at step 6 is kept in {out / 'adapter'}"
    with pytest.raises(TrainingDiverged, match=rf"training batch loss became nan at step 8: .*lower one; {kept}"):
        for event in fine_tune(tiny_run_config(tiny_model_dir, prepared_data, out, eval_freq=5)):
            events.append(event)
    assert [e.step for e in events if isinstance(e, LossEvaluated)] == [0, 5]
    record = read_record(out)
    assert record["state"] == "failed" and record["checkpoint_step"] == 6 and "became nan at step 8" in record["error"]
    _, tensors = read_adapter(out / "adapter")  # the kept adapter: finite
    assert all(torch.isfinite(t).all() for t in tensors.values())
    assert finished_runs(root, []) == [] and [run.state for run in list_runs(root)] == ["failed"]


def test_a_run_diverging_with_a_huge_alpha_names_alpha_not_the_learning_rate(
    tiny_model_dir: Path, prepared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real, steps = engine.train.batch_loss, []

    def poisoned(model, batch, pooling):  # from step 2 on, as an update scaled far too much would
        steps.append(1)
        loss = real(model, batch, pooling)
        return loss * float("nan") if len(steps) >= 2 else loss

    monkeypatch.setattr(engine.train, "batch_loss", poisoned)
    cfg = tiny_run_config(tiny_model_dir, prepared_data, tmp_path / "huge-alpha")
    huge = replace(cfg, lora=replace(cfg.lora, alpha=100.0, scaling="alpha"))  # every update times 100
    blamed = r"at step 2: training diverged, most likely because alpha is too large: it scales every LoRA update by 100 "
    with pytest.raises(TrainingDiverged, match=blamed) as raised:
        list(fine_tune(huge))
    assert "smaller alpha" in str(raised.value) and "learning rate" not in str(raised.value)
    assert "learning rate (0.003) is too high" in divergence_cause(0.003, cfg.lora.scale)  # the usual scale: the learning rate is blamed


def test_an_adapter_with_nan_anywhere_is_refused_on_load(adapter_dir: Path, tmp_path: Path) -> None:
    for key in ("score.base_layer.bias", "transformer.h.0.attn.q_proj.lora_B", "score.lora_A"):
        broken = broken_adapter(adapter_dir, tmp_path / key / "adapter.safetensors", key, float("nan") if "bias" in key else float("inf"))
        with pytest.raises(AdapterError, match=f"tensor {key} holds NaN or infinite values, so the adapter is broken"):
            Classifier.load(broken, torch.device("cpu"))


def test_a_lora_update_that_overflows_is_an_adapter_error() -> None:
    model = build_classifier(GPT(TINY), LoRAConfig(rank=2))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.fill_(1e30)  # finite, but A·B is not
    with pytest.raises(AdapterError, match="the LoRA update B·A holds NaN or infinity"):
        merge_lora(model)


def test_a_broken_adapter_is_never_saved(tmp_path: Path) -> None:
    from engine.adapter import AdapterConfig, save_adapter

    model = build_classifier(GPT(TINY), LoRAConfig(rank=2))
    with torch.no_grad():
        model.score.base_layer.bias.fill_(float("nan"))
    with pytest.raises(AdapterError, match="tensor score.base_layer.bias holds NaN"):
        save_adapter(model, tmp_path / "adapter", AdapterConfig("tiny", TINY, LoRAConfig(rank=2), "last_token", "batch", 64))
    assert not (tmp_path / "adapter" / "adapter.safetensors").exists()


# --- saved files get the usual mode --------------------------------------------------------------

SAVER = textwrap.dedent(
    """
    import os, sys
    os.umask(int(sys.argv[2], 8))
    sys.path[:0] = [{root!r}, {tests!r}]
    from conftest import TINY
    from engine.adapter import AdapterConfig, save_adapter
    from engine.atomic import write_text_atomic
    from engine.classifier import build_classifier
    from engine.config import LoRAConfig
    from engine.model import GPT
    from engine.runs.plot import save_loss_plot
    from engine.train import LossEvaluated

    out = sys.argv[1]
    save_adapter(build_classifier(GPT(TINY), LoRAConfig(rank=2)), out + "/adapter", AdapterConfig("tiny", TINY, LoRAConfig(rank=2), "last_token", "batch", 64))
    write_text_atomic(out + "/run.json", "{{}}")
    save_loss_plot([LossEvaluated(0, 0.1, 8, 0.7, 0.69)], out + "/loss.png")
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002], ids=oct)
def test_saved_files_get_the_usual_mode(tmp_path: Path, umask: int) -> None:
    script = SAVER.format(root=str(ROOT), tests=str(ROOT / "tests"))
    subprocess.run([sys.executable, "-c", script, str(tmp_path), oct(umask)], check=True)
    modes = {name: (tmp_path / name).stat().st_mode & 0o777 for name in files_under(tmp_path)}
    assert modes == dict.fromkeys(["adapter/adapter.safetensors", "adapter/adapter_config.json", "loss.png", "run.json"], 0o666 & ~umask)
