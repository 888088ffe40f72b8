"""What the training loop works with: the run's components and this session's bookkeeping, in one dataclass."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from ..recipe import Recipe
from ..tasks.base import Task
from . import speed
from .batches import LengthGroupedBatches
from .interruptions import StopSignals
from .progress import Clock, Progress, RunLog


@dataclass(kw_only=True)
class Session:
    """What `fit` and `finish` work with in this session of a run (from its start, or from the checkpoint it resumed
    at, to its finish): the components `setup` built (by keyword: 27 fields are too many to wire by position) and
    the session's own bookkeeping. The loop's state, which a checkpoint saves, is the TrainingState beside it."""

    recipe: Recipe
    task: Task
    run_dir: Path
    accelerator: Accelerator
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    sampler: LengthGroupedBatches
    train_loader: DataLoader
    splits: dict
    features: dict
    eval_loaders: dict[str, DataLoader]
    tokenizer: object
    total_steps: int
    steps_per_epoch: int
    progress: Progress
    echo: Callable  # the caller's print callback on the main process; silent elsewhere
    stop: StopSignals
    clock: Clock = dataclasses.field(default_factory=Clock)
    throughput: speed.Throughput = dataclasses.field(default_factory=speed.Throughput)
    pending_rng: dict | None = None  # a resumed run's RNG states, restored where the checkpoint took them
    examples_at_start: int = 0  # examples seen before this session (a resumed run's): not in this session's speed
    last_finite_loss: float | None = None  # for the message when the loss diverges
    resumed: bool = False  # continues from a checkpoint of the run directory
    log: RunLog | None = None  # opened by `writing`, with the run directory
    last_validation: tuple | None = None  # (step, metrics, prediction rows) of the newest validation
    on_validation: Callable[[int, dict], bool] | None = None  # the caller's hook; True asks training to stop
    stop_requested: bool = False  # on_validation asked to stop
    augmented: dict = dataclasses.field(default_factory=dict)  # rows data.augment added, by method
    leakage: dict = dataclasses.field(default_factory=dict)  # prepare's leakage audit: metrics.json's "leakage"

    @functools.cached_property
    def encoder_decoder(self) -> bool:
        return bool(getattr(self.accelerator.unwrap_model(self.model).config, "is_encoder_decoder", False))
