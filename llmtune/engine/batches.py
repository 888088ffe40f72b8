"""Training batches: shuffled, then grouped by length inside mega-batches, so the batch order stays random and
little of a batch is padding (random batches of short sentences are mostly padding). Cut and padded as
evaluation batches are (`inference/batches.py`)."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

from ..inference.batches import cut_batches

# A mega-batch (shuffled, then sorted by length and cut into batches) holds this many batches' examples.
MEGA_BATCH_FACTOR = 50


def batch_count(examples: int, batch_size: int, mega_batch_size: int) -> int:
    """Batches of `batch_size` examples in an epoch: each mega-batch is cut on its own (its last batch may be short)."""
    full, rest = divmod(examples, mega_batch_size)
    return full * -(-mega_batch_size // batch_size) + -(-rest // batch_size)


class LengthGroupedBatches:
    """Training batch sampler: shuffle, cut into mega-batches, sort each by length, batch, shuffle the batches.

    Every example appears exactly once per epoch. Call `set_epoch` before each epoch for a new order;
    setting `skip` leaves out the epoch's first batches (a resumed run continues where the checkpoint stopped).

    The size is deliberately not called `batch_size`: Accelerate's batch-sampler sharding assumes
    equal-sized batches when it finds that attribute and then drops the shorter ones.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int | None,
        seed: int,
        max_tokens: int | None = None,
        mega_batch_factor: int = MEGA_BATCH_FACTOR,
    ):
        self.lengths = list(lengths)
        self.size = batch_size
        self.max_tokens = max_tokens
        self.seed = seed
        # With a token budget, a mega-batch spans about as many tokens as 50 batches.
        per_batch = batch_size or max(1, max_tokens // max(1, round(sum(self.lengths) / max(1, len(self.lengths)))))
        self.mega_batch_size = per_batch * mega_batch_factor
        self.epoch = 0
        self.skip = 0
        self._cached: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        """The epoch's batches, skipped ones included (the same list for the same seed and epoch)."""
        if self._cached is not None and self._cached[0] == self.epoch:
            return self._cached[1]
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        batches = []
        for start in range(0, len(order), self.mega_batch_size):
            mega = sorted(order[start : start + self.mega_batch_size], key=lambda i: -self.lengths[i])
            batches += cut_batches(mega, self.lengths, self.size, self.max_tokens)
        rng.shuffle(batches)
        self._cached = (self.epoch, batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches()[self.skip :])

    def __len__(self) -> int:
        return max(0, self.full_length() - self.skip)

    def full_length(self) -> int:
        """Batches in a whole epoch, skipped ones included."""
        if self.max_tokens is not None:  # the count depends on how lengths fall into mega-batches
            return len(self.batches())
        return batch_count(len(self.lengths), self.size, self.mega_batch_size)
