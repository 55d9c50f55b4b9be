"""Tokenised datasets and loaders: book padding (all to one length) or per-batch padding with length grouping.

Three quarters of a book batch is padding; padding each batch to its own longest message, and
putting messages of similar length together, removes most of that work without changing the
order being seeded.

No loader draws from PyTorch's global generator (each new iterator draws a base seed, for worker
processes we do not use): with the book's draws, all of them draw from the run's one generator,
in the order of the book's notebook (see engine.draws), so that, as in the book, every estimate on
the training set moves the next epoch's order; otherwise each from a generator of its own, and
estimates read the training set through a loader of their own, so how often a run looks (its
eval_freq) never changes what it learns.
"""

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from engine.config import TrainConfig
from engine.data.prepared import Splits
from engine.errors import ConfigError
from engine.tokenizer import END_OF_TEXT_ID, encode

GROUP_BATCHES = 16  # batches per length-sorted group: big enough to sort, small enough to stay random
# What one more forward pass costs, in padded tokens' worth of work: each pass has a fixed cost
# (tens of tokens' worth on a CPU; docs/benchmark-cpu.txt has the measurement that chose 64). It
# decides when longer messages are worth a batch of their own rather than padding their shorter
# neighbours.
PASS_COST_TOKENS = 64
ESTIMATES_SEED_MASK = 0x5EED_E571  # the estimates' shuffle: seeded from the run's seed, apart from the training order


@dataclass(frozen=True)
class Batch:
    input_ids: torch.Tensor  # (B, T), right-padded with <|endoftext|>
    lengths: torch.Tensor  # (B,) real tokens per message
    labels: torch.Tensor  # (B,)

    def to(self, device: torch.device) -> "Batch":
        """The batch on `device`. Without waiting: from pinned memory (see `pin_memory`) the copy
        overlaps the device's work; from ordinary memory PyTorch stages it first."""
        return Batch(*(t.to(device, non_blocking=True) for t in (self.input_ids, self.lengths, self.labels)))

    def pin_memory(self) -> "Batch":
        """The batch in page-locked memory, from which a GPU copies on its own (a DataLoader with
        pin_memory=True calls this)."""
        return Batch(self.input_ids.pin_memory(), self.lengths.pin_memory(), self.labels.pin_memory())


class EncodedMessages(Dataset):
    """Messages tokenised once, truncated to `max_length` tokens."""

    def __init__(self, texts: Sequence[str], labels: Sequence[int], max_length: int) -> None:
        # An empty text still needs one position to read; it becomes a single <|endoftext|>.
        self.ids = [encode(text)[:max_length] or [END_OF_TEXT_ID] for text in texts]
        self.labels = [int(label) for label in labels]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[list[int], int]:
        return self.ids[index], self.labels[index]


def collate(items: list[tuple[list[int], int]], pad_to: int | None = None) -> Batch:
    """Right-pad to `pad_to` (book) or to the batch's longest message."""
    width = pad_to or max(len(ids) for ids, _ in items)
    input_ids = torch.full((len(items), width), END_OF_TEXT_ID, dtype=torch.long)
    for row, (ids, _) in enumerate(items):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    lengths = torch.tensor([len(ids) for ids, _ in items], dtype=torch.long)
    labels = torch.tensor([label for _, label in items], dtype=torch.long)
    return Batch(input_ids, lengths, labels)


class BookShuffle(Sampler[int]):
    """A fresh permutation per pass, drawn as PyTorch's RandomSampler draws it without a generator of
    its own (the book's case), but from `generator` instead of the global one: at the first batch,
    one int64 seeds a new generator, whose randperm is the order."""

    def __init__(self, size: int, generator: torch.Generator) -> None:
        self.size = size
        self.generator = generator

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        seed = int(torch.empty((), dtype=torch.int64).random_(generator=self.generator).item())
        yield from torch.randperm(self.size, generator=torch.Generator().manual_seed(seed)).tolist()


class LengthGroupedBatches(Sampler[list[int]]):
    """Seeded shuffle, then within groups of GROUP_BATCHES batches sort by length, then shuffle the batches."""

    def __init__(self, lengths: Sequence[int], batch_size: int, generator: torch.Generator, drop_last: bool) -> None:
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.generator = generator
        self.drop_last = drop_last

    def __len__(self) -> int:
        full, rest = divmod(len(self.lengths), self.batch_size)
        return full if self.drop_last or not rest else full + 1

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(len(self.lengths), generator=self.generator).tolist()
        if self.drop_last:
            order = order[: len(self) * self.batch_size]
        group = self.batch_size * GROUP_BATCHES
        batches = []
        for start in range(0, len(order), group):
            chunk = sorted(order[start : start + group], key=self.lengths.__getitem__)
            batches += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        for index in torch.randperm(len(batches), generator=self.generator).tolist():
            yield batches[index]


@dataclass(frozen=True)
class Loaders:
    train: DataLoader
    validation: DataLoader
    test: DataLoader
    max_length: int  # the longest a message may be (book: the longest training message)
    shared_generator: torch.Generator | None = None  # the book's draws: the one generator all three draw from
    train_estimates: DataLoader | None = None  # the training set as estimates read it; None: `train` itself (the book's)

    @property
    def train_sample(self) -> DataLoader:
        """The training set for estimates and accuracies: shuffled as `train`, but (unless the book's draws) from its own generator."""
        return self.train_estimates if self.train_estimates is not None else self.train


def make_loaders(splits: Splits, cfg: TrainConfig, context_length: int, book_draws: bool = False, pin_memory: bool = False) -> Loaders:
    """Build the three loaders. The training order depends only on `cfg.seed`, or with `book_draws`
    on the draws of one shared generator, which the run seeds (engine.draws). With `pin_memory` (for
    a CUDA device) the batches come in page-locked memory."""
    if cfg.batch_size > len(splits.train):
        raise ConfigError(f"batch size {cfg.batch_size} is larger than the {len(splits.train)} training messages: choose at most {len(splits.train)}")
    longest_train = max(len(encode(text)) for text in splits.train["Text"])
    max_length = min(longest_train, context_length) if cfg.padding == "longest" else context_length
    pad_to = max_length if cfg.padding == "longest" else None
    datasets = {name: EncodedMessages(part["Text"].tolist(), part["Label"].tolist(), max_length) for name, part in splits.items()}
    pad = lambda items: collate(items, pad_to)
    evaluation = lambda name, base_seeds: DataLoader(
        datasets[name], batch_size=cfg.batch_size, shuffle=False, generator=base_seeds, collate_fn=pad, pin_memory=pin_memory
    )
    if book_draws:
        shared = torch.Generator()
        train = _train_loader(datasets["train"], cfg, pad, shared, shared, pin_memory, book_shuffle=True)
        return Loaders(train, evaluation("validation", shared), evaluation("test", shared), max_length, shared)
    base_seeds = torch.Generator()  # independent loaders' base seeds matter to no one
    train = _train_loader(datasets["train"], cfg, pad, torch.Generator().manual_seed(cfg.seed), base_seeds, pin_memory)
    # Estimates shuffle from a stream of their own, seeded apart from the training order's.
    estimates = _train_loader(datasets["train"], cfg, pad, torch.Generator().manual_seed(cfg.seed ^ ESTIMATES_SEED_MASK), base_seeds, pin_memory)
    return Loaders(train, evaluation("validation", base_seeds), evaluation("test", base_seeds), max_length, None, estimates)


def _train_loader(
    dataset: EncodedMessages,
    cfg: TrainConfig,
    pad: Callable,
    order: torch.Generator,
    base_seeds: torch.Generator,
    pin_memory: bool,
    book_shuffle: bool = False,
) -> DataLoader:
    """The training set shuffled from `order`: in length-sorted groups, as the book's sampler draws (`book_shuffle`), or as PyTorch's."""
    common = dict(collate_fn=pad, pin_memory=pin_memory)
    if cfg.padding == "batch" and cfg.group_by_length:
        sampler = LengthGroupedBatches([len(ids) for ids in dataset.ids], cfg.batch_size, order, drop_last=True)
        return DataLoader(dataset, batch_sampler=sampler, generator=base_seeds, **common)
    if book_shuffle:
        return DataLoader(dataset, batch_size=cfg.batch_size, sampler=BookShuffle(len(dataset), order), drop_last=True, generator=order, **common)
    return DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, drop_last=True, generator=order, **common)


def least_padding_cuts(sorted_lengths: Sequence[int], max_batch: int, pass_cost: int) -> list[int]:
    """Where to cut a length-sorted list into batches so padded tokens plus `pass_cost` per batch is least.

    Fixed-size chunks of sorted messages still pad a lot where lengths spread out (28 % of the
    tokens for 100 SMS test messages in chunks of 32); choosing the cuts by dynamic programming
    keeps the padding to a few percent. Returns the boundaries, from 0 to len(sorted_lengths).
    """
    n = len(sorted_lengths)
    best = [0] + [0] * n  # best[j]: least cost of the first j messages
    cut_before = [0] * (n + 1)
    for end in range(1, n + 1):
        options = ((best[start] + (end - start) * sorted_lengths[end - 1] + pass_cost, start) for start in range(max(0, end - max_batch), end))
        best[end], cut_before[end] = min(options)
    cuts = [n]
    while cuts[-1] > 0:
        cuts.append(cut_before[cuts[-1]])
    return cuts[::-1]
