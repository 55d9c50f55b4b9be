"""Where a run's random numbers come from: generators of its own, never PyTorch's global one.

Seeding the global generator would let anything else in the process (a classifier loaded in
another thread, a notebook cell) change a run's initialisation; a run draws from its own.

With the book's draws, one generator gives the same numbers in the same order as the book's
appendix E notebook, which draws everything from the global generator and reseeds it with 123
(`torch.manual_seed`) before each stage:

1. the new head, `nn.Linear(768, 2)` with PyTorch's default initialisation;
2. reseed; accuracy on 10 batches of train, validation and test. Each new DataLoader iterator
   draws an int64 base seed, and the shuffled training loader's sampler one more at its first
   batch, which seeds the generator of that pass's permutation (engine.loaders.BookShuffle);
3. every Linear wrapped in LoRA, depth first in module order, each A by `kaiming_uniform_(a=√5)`;
4. reseed; the same accuracies again (these are the baseline a run reports);
5. reseed; AdamW and the training loop, whose every estimate opens new iterators, so each
   epoch's order follows from all the draws before it; then the final accuracies.

Stage 2 is replayed here without its forward passes: with fresh LoRA adapters (B = 0) its
accuracies are those of stage 4. The independent draws: the head and then every A from one
generator seeded once, the training order from the training loader's own generator.
"""

import torch

from engine.loaders import Loaders


class RunDraws:
    """The generator each stage of a run draws from, reseeded where the book reseeds."""

    def __init__(self, seed: int, loaders: Loaders | None = None) -> None:
        """Loaders made with `book_draws` share one generator, and then the draws are the book's;
        without such loaders they are independent."""
        self.seed = seed
        shared = loaders.shared_generator if loaders is not None else None
        self.book = shared is not None
        self.generator = shared if shared is not None else torch.Generator()
        self.replayed = (loaders.train, loaders.validation, loaders.test) if self.book and loaders is not None else ()

    def for_head(self) -> torch.Generator:
        return self.generator.manual_seed(self.seed)

    def for_lora(self) -> torch.Generator:
        if self.book:
            self.generator.manual_seed(self.seed)
            for loader in self.replayed:
                next(iter(loader), None)  # what stage 2's estimates draw: each a base seed, the sampler its seed
        return self.generator

    def before_baseline(self) -> None:
        self._reseed_as_the_book()

    def before_training(self) -> None:
        self._reseed_as_the_book()

    def _reseed_as_the_book(self) -> None:
        if self.book:
            self.generator.manual_seed(self.seed)
