"""The book's appendix E run, re-stated call for call on PyTorch's global generator.

tests/test_book_run.py runs this in a process of its own (it seeds the global generator, as the
book does) and compares what it writes with `--preset book` from the same weights and raw file.
The book's network is GPTModel; engine.model.GPT stands in for it here, since their arithmetic is
proven identical (tests/test_model.py), and it reads the last position as the book's
`model(x)[:, -1, :]` does. Everything that draws a random number is the book's own call, in the
book's order: pandas sampling, DataLoader(shuffle=True) without a generator, nn.Linear's default
initialisation, kaiming_uniform_, and the training loop's evaluation schedule.

Usage: python book_reference.py RAW_FILE MODEL_DIR OUT_DIR EPOCHS EVAL_FREQ EVAL_ITER
Writes OUT_DIR/{train,validation,test}.csv, OUT_DIR/tensors.safetensors (the new head and every
LoRA A in module order, before training) and OUT_DIR/run.json (the figures and every batch).
"""

import json
import math
import sys
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import save_file
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.tokenizer import END_OF_TEXT_ID, encode  # noqa: E402
from engine.weights import load_model  # noqa: E402

RANK, ALPHA, LR, WEIGHT_DECAY, BATCH = 16, 16, 5e-5, 0.1, 8


def book_splits(raw_file: Path, out: Path) -> None:
    """Read, balance, shuffle and cut the messages as the book does, and save the three CSVs."""
    frame = pd.read_csv(raw_file, sep="\t", header=None, names=["Label", "Text"])
    spam = frame[frame["Label"] == "spam"]
    ham = frame[frame["Label"] == "ham"].sample(spam.shape[0], random_state=123)
    balanced = pd.concat([ham, spam])
    balanced["Label"] = balanced["Label"].map({"ham": 0, "spam": 1})
    shuffled = balanced.sample(frac=1, random_state=123).reset_index(drop=True)
    train_end = int(len(shuffled) * 0.7)
    validation_end = train_end + int(len(shuffled) * 0.1)
    cuts = {"train": shuffled[:train_end], "validation": shuffled[train_end:validation_end], "test": shuffled[validation_end:]}
    for name, part in cuts.items():
        part.to_csv(out / f"{name}.csv", index=None)


class PaddedMessages(Dataset):
    """The book's dataset: token ids cut to `max_length` (default: the longest message) and padded with <|endoftext|>."""

    def __init__(self, csv_file: Path, max_length: int | None = None) -> None:
        data = pd.read_csv(csv_file)
        encoded = [encode(text) for text in data["Text"]]
        self.max_length = max(len(ids) for ids in encoded) if max_length is None else max_length
        self.rows = [ids[: self.max_length] + [END_OF_TEXT_ID] * (self.max_length - len(ids[: self.max_length])) for ids in encoded]
        self.labels = data["Label"].tolist()

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.tensor(self.rows[index]), torch.tensor(self.labels[index])


class LowRankUpdate(nn.Module):
    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.A = nn.Parameter(torch.empty(in_features, RANK))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.B = nn.Parameter(torch.zeros(RANK, out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ALPHA * (x @ self.A @ self.B)


class LinearPlusUpdate(nn.Module):
    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.linear = linear  # not `base_layer`: the engine's fast paths must not recognise this as theirs
        self.update = LowRankUpdate(linear.in_features, linear.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + self.update(x)


def wrap_every_linear(module: nn.Module) -> None:
    """Depth first over the children, in order, as the book's replacement goes."""
    for name, child in module.named_children():
        if isinstance(child, nn.Linear):
            setattr(module, name, LinearPlusUpdate(child))
        else:
            wrap_every_linear(child)


def batch_loss(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(inputs), targets)


def loss_over(loader: DataLoader, model: nn.Module, num_batches: int | None = None) -> float:
    """The mean of the batch losses of the first `num_batches` batches (all by default)."""
    num_batches = len(loader) if num_batches is None else min(num_batches, len(loader))
    total = 0.0
    for i, (inputs, targets) in enumerate(loader):
        if i >= num_batches:
            break
        total += batch_loss(model, inputs, targets).item()
    return total / num_batches


def accuracy_over(loader: DataLoader, model: nn.Module, num_batches: int | None = None) -> float:
    model.eval()
    num_batches = len(loader) if num_batches is None else min(num_batches, len(loader))
    correct = seen = 0
    for i, (inputs, targets) in enumerate(loader):
        if i >= num_batches:
            break
        with torch.no_grad():
            predicted = model(inputs).argmax(dim=-1)
        seen += predicted.shape[0]
        correct += (predicted == targets).sum().item()
    return correct / seen


def main(raw_file: Path, model_dir: str, out: Path, epochs: int, eval_freq: int, eval_iter: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    book_splits(raw_file, out)
    train_set = PaddedMessages(out / "train.csv")
    validation_set = PaddedMessages(out / "validation.csv", train_set.max_length)
    test_set = PaddedMessages(out / "test.csv", train_set.max_length)
    torch.manual_seed(123)
    train_loader = DataLoader(train_set, batch_size=BATCH, shuffle=True, num_workers=0, drop_last=True)
    validation_loader = DataLoader(validation_set, batch_size=BATCH, num_workers=0, drop_last=False)
    test_loader = DataLoader(test_set, batch_size=BATCH, num_workers=0, drop_last=False)
    loaders = (train_loader, validation_loader, test_loader)

    model = load_model(model_dir, torch.device("cpu"))
    torch.manual_seed(123)
    model.score = nn.Linear(model.cfg.n_embd, 2)
    tensors = {"head.weight": model.score.weight.detach().clone(), "head.bias": model.score.bias.detach().clone()}
    torch.manual_seed(123)
    before_lora = [accuracy_over(loader, model, 10) for loader in loaders]

    for parameter in model.parameters():
        parameter.requires_grad = False
    wrap_every_linear(model)
    updates = [module for module in model.modules() if isinstance(module, LowRankUpdate)]
    tensors.update({f"A.{i:03d}": update.A.detach().clone() for i, update in enumerate(updates)})
    torch.manual_seed(123)
    baseline = [accuracy_over(loader, model, 10) for loader in loaders]

    torch.manual_seed(123)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    losses, epoch_accuracies, batches = [], [], []
    global_step = -1
    for _ in range(epochs):
        model.train()
        for inputs, targets in train_loader:
            batches.append(inputs.tolist())
            optimizer.zero_grad()
            loss = batch_loss(model, inputs, targets)
            loss.backward()
            optimizer.step()
            global_step += 1
            if global_step % eval_freq == 0:
                model.eval()
                with torch.no_grad():
                    estimates = (loss_over(train_loader, model, eval_iter), loss_over(validation_loader, model, eval_iter))
                model.train()
                losses.append([global_step, *estimates])
        epoch_accuracies.append([accuracy_over(train_loader, model, eval_iter), accuracy_over(validation_loader, model, eval_iter)])

    final = {name: accuracy_over(loader, model) for name, loader in zip(("train", "validation", "test"), loaders, strict=True)}
    with torch.no_grad():
        final_loss = {"validation": loss_over(validation_loader, model), "test": loss_over(test_loader, model)}
    save_file(tensors, str(out / "tensors.safetensors"))
    record = dict(
        before_lora=before_lora,
        baseline=baseline,
        losses=losses,
        epochs=epoch_accuracies,
        final=final,
        final_loss=final_loss,
        batches=batches,
        max_length=train_set.max_length,
    )
    (out / "run.json").write_text(json.dumps(record))


if __name__ == "__main__":
    raw, model_folder, out_dir, n_epochs, frequency, iterations = sys.argv[1:]
    main(Path(raw), model_folder, Path(out_dir), int(n_epochs), int(frequency), int(iterations))
