"""A run's random draws: its own generators, never PyTorch's global one; the book's order with `book`."""

import re
import threading
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import TINY
from torch.utils.data import DataLoader, RandomSampler

from engine.classifier import build_classifier
from engine.config import LoRAConfig, RunConfig, TrainConfig, preset
from engine.data.prepared import Splits, load_splits
from engine.draws import RunDraws
from engine.errors import ConfigError
from engine.evaluate import evaluate
from engine.loaders import BookShuffle, collate, make_loaders
from engine.model import GPT

ENGINE = Path(__file__).resolve().parents[1] / "engine"


def test_no_engine_code_seeds_the_global_generator():
    seeding = re.compile(r"torch\.(random\.|cuda\.|mps\.)?(manual_seed|seed|manual_seed_all)\(")
    lines = [(path, number, line) for path in ENGINE.rglob("*.py") for number, line in enumerate(path.read_text().splitlines(), 1)]
    assert [f"{path.relative_to(ENGINE)}:{number}" for path, number, line in lines if seeding.search(line)] == []


def test_building_a_classifier_leaves_the_global_generator_alone():
    base = GPT(TINY)
    before = torch.get_rng_state()
    build_classifier(base, LoRAConfig(rank=4, alpha=8))
    assert torch.equal(torch.get_rng_state(), before)


def test_two_classifiers_built_at_once_get_the_weights_of_one_after_the_other():
    torch.manual_seed(0)
    weights = GPT(TINY).state_dict()

    def build() -> dict[str, torch.Tensor]:
        base = GPT(TINY)
        base.load_state_dict(weights)
        return build_classifier(base, LoRAConfig(rank=4, alpha=8)).state_dict()

    one_after_the_other = [build(), build()]
    at_once: list[dict[str, torch.Tensor]] = [{}, {}]
    building = threading.Barrier(3)
    done = threading.Event()

    def in_thread(index: int) -> None:
        building.wait()
        at_once[index] = build()

    def other_code_seeding_the_global_generator() -> None:
        building.wait()
        seed = 0
        while not done.is_set():
            torch.manual_seed(seed := seed + 1)

    threads = [threading.Thread(target=in_thread, args=(i,)) for i in range(2)]
    noise = threading.Thread(target=other_code_seeding_the_global_generator)
    for thread in [*threads, noise]:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    noise.join()
    for built in [*at_once, one_after_the_other[1]]:
        assert built.keys() == one_after_the_other[0].keys()
        assert all(torch.equal(built[name], one_after_the_other[0][name]) for name in built)


def test_the_book_shuffle_draws_what_pytorch_draws_without_a_generator():
    with torch.random.fork_rng():
        torch.manual_seed(123)
        expected = [list(RandomSampler(range(50))) for _ in range(3)]
        next_draw = torch.empty((), dtype=torch.int64).random_().item()
    ours = torch.Generator().manual_seed(123)
    assert [list(BookShuffle(50, ours)) for _ in range(3)] == expected
    assert torch.empty((), dtype=torch.int64).random_(generator=ours).item() == next_draw  # nothing more, nothing less


def test_book_loaders_draw_as_the_books_loaders_do(prepared_data):
    """Base seeds and permutations from the shared generator, in the order PyTorch's loaders take them from the global one."""
    cfg = preset("book").train
    loaders = make_loaders(load_splits(prepared_data), cfg, context_length=1024, book_draws=True)
    assert loaders.shared_generator is not None

    def two_epochs_after_an_estimate(train: DataLoader, validation: DataLoader) -> list[list[list[int]]]:
        next(iter(validation))  # an estimate opens an iterator: one base seed
        return [[batch.input_ids[:, :4].tolist() for batch in train] for _ in range(2)]

    loaders.shared_generator.manual_seed(123)
    ours = two_epochs_after_an_estimate(loaders.train, loaders.validation)
    pad = lambda items: collate(items, loaders.max_length)
    with torch.random.fork_rng():
        torch.manual_seed(123)
        book_train = DataLoader(loaders.train.dataset, batch_size=cfg.batch_size, shuffle=True, drop_last=True, collate_fn=pad)
        book = two_epochs_after_an_estimate(book_train, DataLoader(loaders.validation.dataset, batch_size=cfg.batch_size, collate_fn=pad))
    assert ours == book and ours[0] != ours[1]


@pytest.mark.parametrize("book_draws", [True, False])
def test_loaders_never_draw_from_the_global_generator(prepared_data, book_draws):
    loaders = make_loaders(load_splits(prepared_data), preset("recommended").train, context_length=1024, book_draws=book_draws)
    before = torch.get_rng_state()
    for loader in (loaders.train, loaders.validation, loaders.test):
        next(iter(loader))
    assert torch.equal(torch.get_rng_state(), before)


def test_book_draws_replay_the_first_baseline_before_the_adapters(prepared_data):
    """With the book's draws, A comes after the head and the four int64 draws of the first 10-batch estimates."""
    loaders = make_loaders(load_splits(prepared_data), preset("book").train, context_length=1024, book_draws=True)
    model = build_classifier(GPT(TINY), LoRAConfig(rank=4, alpha=8), draws=RunDraws(123, loaders))
    expected = torch.Generator().manual_seed(123)
    for _ in range(4):  # train: base seed, then the sampler's seed; validation and test: base seeds
        torch.empty((), dtype=torch.int64).random_(generator=expected)
    first_a = torch.empty(TINY.n_embd, 4)
    torch.nn.init.kaiming_uniform_(first_a, a=5**0.5, generator=expected)
    assert torch.equal(model.transformer.h[0].attn.q_proj.lora_A, first_a)
    independent = build_classifier(GPT(TINY), LoRAConfig(rank=4, alpha=8))
    assert torch.equal(independent.score.base_layer.weight, model.score.base_layer.weight)  # the head: seed 123 either way
    assert not torch.equal(independent.transformer.h[0].attn.q_proj.lora_A, first_a)


def test_the_book_averages_a_split_s_loss_over_batches():
    # Fixed weights: with whatever the global generator held, the messages' losses once all but agreed (the two means
    # within 4e-6 of each other), and then no test can tell the means apart. With these they differ by 9%.
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_classifier(GPT(TINY), LoRAConfig(rank=4, alpha=8))
    texts = ["win a prize now", "see you at six", "free entry", "ok", "call me later tonight"]
    frame = pd.DataFrame({"Label": [0, 1, 1, 0, 1], "Text": texts})
    loader = make_loaders(Splits(frame, frame, frame), TrainConfig(batch_size=2), TINY.context_length).validation  # batches of 2, 2 and 1
    per_message = evaluate(model, loader, torch.device("cpu"), "last_token")
    per_batch = evaluate(model, loader, torch.device("cpu"), "last_token", loss_mean="batch")
    with torch.no_grad():
        losses = [torch.nn.functional.cross_entropy(model(b.input_ids, b.lengths - 1), b.labels, reduction="none") for b in loader]
    assert per_message.loss == pytest.approx(torch.cat(losses).mean().item(), rel=1e-6)
    assert per_batch.loss == pytest.approx(sum(batch.mean().item() for batch in losses) / 3, rel=1e-6)
    assert per_batch.loss != pytest.approx(per_message.loss, rel=1e-4)
    assert per_batch.accuracy == per_message.accuracy


def test_the_preset_chooses_the_parse_and_the_draws():
    assert (RunConfig().parse, RunConfig().draws) == ("faithful", "independent")
    assert (RunConfig.from_preset("book").parse, RunConfig.from_preset("book").draws) == ("book", "book")
    assert RunConfig(preset="book").parse == "book"  # what the app builds from its widgets
    assert RunConfig.from_preset("recommended").parse == "faithful"
    assert RunConfig.from_preset("book", parse="faithful").parse == "faithful"
    with pytest.raises(ConfigError, match="parse must be one of faithful, book"):
        RunConfig(parse="pandas")
    with pytest.raises(ConfigError, match="draws must be one of book, independent"):
        RunConfig(draws="global")
