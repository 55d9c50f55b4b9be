"""Grids of runs: every combination, named by what varies; presets applied before the other values; limits refuse."""

import pytest

from engine.config import LORA_TARGETS, RunConfig
from engine.errors import ConfigError
from engine.runs.grid import MAX_GRID_RUNS, TARGET_SETS, Grid, targets_named


def test_a_grid_makes_every_combination_named_by_what_varies() -> None:
    base = RunConfig.from_preset("recommended", owner="Di").with_train(max_steps=7)
    runs = Grid(rank=(1, 4), alpha=(8.0, 16.0), seed=(1, 2, 3)).expand(base)
    assert len(runs) == 12 and len({label for label, _ in runs}) == 12
    label, cfg = runs[5]
    assert label == "rank1-alpha16-seed3"
    assert (cfg.lora.rank, cfg.lora.alpha, cfg.train.seed) == (1, 16.0, 3)
    assert (cfg.train.max_steps, cfg.owner, cfg.lora.scaling) == (7, "Di", "alpha_over_rank")  # the rest is the base run's


def test_a_varied_preset_is_applied_first_then_the_other_values() -> None:
    base = RunConfig.from_preset("recommended").with_train(seed=9, max_steps=5, epochs=2)
    runs = dict(Grid(preset=("book", "recommended"), rank=(2,), targets=(TARGET_SETS["query-value"],)).expand(base))
    book = runs["rank2-preset-book-targets-query-value"]
    assert (book.preset, book.lora.scaling, book.train.lr, book.train.pooling) == ("book", "alpha", 5e-5, "last")
    assert book.lora.rank == 2 and book.lora.targets == ("attn.q_proj", "attn.v_proj")
    assert (book.train.seed, book.train.max_steps, book.train.epochs) == (9, 5, 2)  # not the preset's to change
    assert runs["rank2-preset-recommended-targets-query-value"].train.lr == 8e-4


def test_grids_refuse_with_a_message() -> None:
    base = RunConfig()
    with pytest.raises(ConfigError, match="varies no setting"):
        Grid().expand(base)
    with pytest.raises(ConfigError, match="repeats a value of rank"):
        Grid(rank=(2, 2))
    with pytest.raises(ConfigError, match=rf"makes 120 runs \(10 rank x 12 seed\), more than the {MAX_GRID_RUNS}"):
        Grid(rank=tuple(range(1, 11)), seed=tuple(range(12))).expand(base)
    with pytest.raises(ConfigError, match="rank must be a whole number from 1 to 2,048"):
        Grid(rank=(0, 1)).expand(base)
    with pytest.raises(ConfigError, match="unknown layer set 'ffn'"):
        targets_named(["ffn"])
    assert targets_named(["all"]) == (LORA_TARGETS,)
