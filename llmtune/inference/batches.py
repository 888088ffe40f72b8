"""Evaluation and prediction batches: sorted by length (little padding; each example exactly once, whatever
the process count) and padded to the longest in the batch. Results go back into the data's order by each
example's `index`.

Batches hold a fixed number of examples, or, with a token budget, as many examples as fit in
`max_tokens` padded tokens (examples x longest example): short sentences then come in large batches
and long ones in small batches, so every batch costs about the same.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from ..common.lazy import torch

# Keys padded with the tokenizer's pad id; other list-valued keys are padded with 0 (masks, segment ids)
# or -100 (labels, ignored by the loss).
PAD_WITH_TOKEN = ("input_ids", "decoder_input_ids")
PAD_WITH_IGNORE = ("labels",)


def cut_batches(
    order: Sequence[int], lengths: Sequence[int], batch_size: int | None, max_tokens: int | None = None
) -> list[list[int]]:
    """Cut `order` (sorted by length, longest first) into consecutive batches.

    `batch_size` examples each, or with `max_tokens` as many as fit in that many padded tokens (the
    first, longest example sets the width); an example longer than the budget makes a batch of its own.
    """
    if max_tokens is None:
        return [list(order[i : i + batch_size]) for i in range(0, len(order), batch_size)]
    batches, batch, width = [], [], 0
    for index in order:
        if batch and max(width, lengths[index]) * (len(batch) + 1) > max_tokens:
            batches.append(batch)
            batch = []
        width = max(width, lengths[index]) if batch else lengths[index]
        batch.append(index)
    if batch:
        batches.append(batch)
    return batches


class SortedBatches:
    """Evaluation batch sampler: longest first (memory problems show at once), little padding.

    With several processes each takes every n-th batch, without padding: every example is evaluated
    exactly once, in the same batch as in a single process (so with the same result).
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int | None,
        num_processes: int = 1,
        process_index: int = 0,
        max_tokens: int | None = None,
    ):
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        self._batches = cut_batches(order, lengths, batch_size, max_tokens)[process_index::num_processes]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches)

    def __len__(self) -> int:
        return len(self._batches)


class PadCollator:
    """Pads token lists to the longest in the batch and stacks everything into tensors."""

    def __init__(self, pad_token_id: int, padding_side: str = "right"):
        self.pad_token_id = pad_token_id
        self.padding_side = padding_side

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        batch = {}
        for key in features[0]:
            values = [feature[key] for feature in features]
            if isinstance(values[0], list):
                pad = self.pad_token_id if key in PAD_WITH_TOKEN else -100 if key in PAD_WITH_IGNORE else 0
                width = max(len(value) for value in values)
                if self.padding_side == "left":
                    values = [[pad] * (width - len(value)) + value for value in values]
                else:
                    values = [value + [pad] * (width - len(value)) for value in values]
            batch[key] = torch.tensor(values)
        return batch
