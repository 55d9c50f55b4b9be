"""`--preset book` against the book's own sequence of calls (tests/book_reference.py), run for run.

From the same random tiny GPT-2 and the same raw file: the same split CSVs, head and LoRA A
matrices, the same batches in every epoch, and the same loss log, accuracies and losses to float
tolerance. The raw file is a cut of the SMS collection that keeps every line starting with a
quote (where the book's reading and a faithful one part), so an epoch takes seconds.
"""

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import SMS_ZIP, write_hf_checkpoint
from safetensors.torch import load_file

import engine.runs.run
import engine.train
from engine.config import GPTConfig, RunConfig
from engine.data.prepared import prepare
from engine.lora import lora_layers
from engine.runs.run import BaselineEvaluated, FinalEvaluated, RunSaved, fine_tune
from engine.train import EpochDone, LossEvaluated

REFERENCE = Path(__file__).parent / "book_reference.py"
EPOCHS, EVAL_FREQ, EVAL_ITER = 2, 5, 5
TOLERANCE = 1e-4
SMALL = GPTConfig("book-tiny", vocab_size=50257, context_length=128, n_embd=16, n_layer=1, n_head=2)  # rank 16 fits its width


def cut_of_the_collection(path: Path) -> Path:
    """The first 360 lines, every line whose text starts with a quote, and the two lines one of them swallows."""
    lines = zipfile.ZipFile(SMS_ZIP).read("SMSSpamCollection").decode("utf-8").split("\n")[:-1]
    kept = [line for number, line in enumerate(lines, start=1) if number <= 360 or line.split("\t", 1)[1].startswith('"') or number in (5083, 5084)]
    path.write_text("\n".join(kept) + "\n", encoding="utf-8")
    return path


@pytest.mark.slow
def test_book_preset_reproduces_the_books_run(tmp_path, monkeypatch):
    raw = cut_of_the_collection(tmp_path / "SMSSpamCollection")
    model_dir = write_hf_checkpoint(tmp_path / "tiny", SMALL, seed=7)
    reference = tmp_path / "reference"
    subprocess.run(
        [sys.executable, str(REFERENCE), str(raw), str(model_dir), str(reference), str(EPOCHS), str(EVAL_FREQ), str(EVAL_ITER)],
        check=True,
        timeout=600,
    )
    book = json.loads((reference / "run.json").read_text())

    # As a user would: the Data tab prepares the file faithfully, then a run with the book preset.
    prepared = prepare(str(raw), tmp_path / "data_cache")
    assert prepared.summary.parse == "faithful" and prepared.summary.messages == 414
    initial, batches = {}, []

    def train_recording_its_start(model, *args, **kwargs):
        initial["head"] = model.score.base_layer
        initial["A"] = [layer.lora_A.detach().clone() for layer in lora_layers(model)]
        return real_train(model, *args, **kwargs)

    def loss_recording_its_batch(model, batch, pooling):
        batches.append(batch.input_ids.tolist())
        return real_loss(model, batch, pooling)

    real_train, real_loss = engine.runs.run.train, engine.train.batch_loss
    monkeypatch.setattr(engine.runs.run, "train", train_recording_its_start)
    monkeypatch.setattr(engine.train, "batch_loss", loss_recording_its_batch)
    cfg = RunConfig.from_preset("book", model=str(model_dir), data=str(prepared.folder), out_dir=str(tmp_path / "run"), device="cpu")
    events = list(fine_tune(cfg.with_train(epochs=EPOCHS, eval_freq=EVAL_FREQ, eval_iter=EVAL_ITER)))

    record = json.loads(next(e for e in events if isinstance(e, RunSaved)).record.read_text())
    assert record["config"]["parse"] == record["data"]["parse"] == record["config"]["draws"] == "book"
    assert record["data"]["messages"] == 412  # the book's reading: one quote swallows two lines
    ours = Path(record["config"]["data"])
    assert ours == tmp_path / "run" / "data"  # prepared again from the original, beside the run
    for name in ("train", "validation", "test"):
        assert (ours / f"{name}.csv").read_bytes() == (reference / f"{name}.csv").read_bytes(), name

    tensors = load_file(str(reference / "tensors.safetensors"))
    assert torch.equal(initial["head"].weight, tensors["head.weight"]) and torch.equal(initial["head"].bias, tensors["head.bias"])
    book_a = [tensors[key] for key in sorted(key for key in tensors if key.startswith("A."))]
    assert len(initial["A"]) == len(book_a) == 6 * SMALL.n_layer + 1
    assert all(torch.equal(a, b) for a, b in zip(initial["A"], book_a, strict=True))

    assert batches == book["batches"]  # every step of every epoch: the same messages in the same order
    assert len(batches) == EPOCHS * (77 // 8)
    baseline = next(e for e in events if isinstance(e, BaselineEvaluated))
    assert book["before_lora"] == book["baseline"]
    assert [baseline.train_accuracy, baseline.validation_accuracy, baseline.test_accuracy] == pytest.approx(book["baseline"], abs=TOLERANCE)
    losses = [e for e in events if isinstance(e, LossEvaluated)]
    assert [e.step for e in losses] == [step for step, _, _ in book["losses"]] == [0, 5, 10, 15]
    book_losses = [loss for _, train_loss, validation_loss in book["losses"] for loss in (train_loss, validation_loss)]
    assert [loss for e in losses for loss in (e.train_loss, e.validation_loss)] == pytest.approx(book_losses, abs=TOLERANCE)
    epochs = [accuracy for e in events if isinstance(e, EpochDone) for accuracy in (e.train_accuracy, e.validation_accuracy)]
    assert epochs == pytest.approx([accuracy for pair in book["epochs"] for accuracy in pair], abs=TOLERANCE)
    final = next(e for e in events if isinstance(e, FinalEvaluated)).metrics
    assert {name: m.accuracy for name, m in final.items()} == pytest.approx(book["final"], abs=TOLERANCE)
    # The book's full-set loss: the mean of batch means (validation 11 = 8 + 3, test 22 = 8 + 8 + 6).
    assert {name: final[name].loss for name in ("validation", "test")} == pytest.approx(book["final_loss"], abs=TOLERANCE)
