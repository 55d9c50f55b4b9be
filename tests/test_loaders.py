"""Batching by length: the least-padding cuts that evaluation and the classifier use."""

import itertools
import random

from engine.loaders import least_padding_cuts


def _cost(lengths, cuts, pass_cost):
    return sum((end - start) * lengths[end - 1] + pass_cost for start, end in itertools.pairwise(cuts))


def test_cuts_give_a_long_message_its_own_batch():
    lengths = [3, 3, 4, 4, 90]
    assert least_padding_cuts(lengths, 32, 10) == [0, 4, 5]  # 16 + 90 tokens + 2 passes beats 450 in one
    assert least_padding_cuts(lengths, 32, 1000) == [0, 5]  # a pass dearer than the padding: one batch
    assert least_padding_cuts([], 32, 10) == [0]


def test_cuts_respect_the_batch_limit_and_beat_fixed_chunks():
    lengths = sorted([5, 7, 7, 9, 12, 12, 13, 20, 21, 22, 40, 41, 60, 61, 62, 100] * 5)
    cuts = least_padding_cuts(lengths, 8, 16)
    assert cuts[0] == 0 and cuts[-1] == len(lengths)
    assert all(0 < end - start <= 8 for start, end in itertools.pairwise(cuts))
    chunks = list(range(0, len(lengths), 8)) + [len(lengths)]
    assert _cost(lengths, cuts, 16) < _cost(lengths, chunks, 16)


def test_cuts_are_the_cheapest_of_every_possible_split():
    rng = random.Random(5)
    for _ in range(200):
        lengths = sorted(rng.randint(1, 50) for _ in range(rng.randint(1, 7)))
        max_batch, pass_cost = rng.randint(1, 4), rng.choice([0, 3, 20])
        n = len(lengths)
        splits = ([0, *inner, n] for k in range(n) for inner in itertools.combinations(range(1, n), k))
        allowed = [cuts for cuts in splits if all(end - start <= max_batch for start, end in itertools.pairwise(cuts))]
        cheapest = min(_cost(lengths, cuts, pass_cost) for cuts in allowed)
        assert _cost(lengths, least_padding_cuts(lengths, max_batch, pass_cost), pass_cost) == cheapest
