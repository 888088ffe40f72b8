"""Collecting per-example evaluation outputs batch by batch."""

from __future__ import annotations

import torch


class CollectedOutputs:
    """Per-example tensors from `eval_step`, moved to the CPU as they come (small: ids, losses, candidates)."""

    def __init__(self, task, metric_names: tuple[str, ...]):
        self.task = task
        self.metric_names = metric_names
        self.parts: dict[str, list[torch.Tensor]] = {}

    def add(self, outputs: dict[str, torch.Tensor]) -> None:
        for key, value in outputs.items():
            self.parts.setdefault(key, []).append(value.detach().cpu())

    def columns(self) -> dict[str, torch.Tensor]:
        return {key: torch.cat(values) for key, values in self.parts.items()}
