"""`prepare`: every check `train` makes before loading weights, and what the checks settle (Prepared).
`llmtune validate` runs it too."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .. import models, tasks
from ..common.errors import UserError
from ..data import augment, leakage
from ..data import reading as data
from ..inference.devices import mixed_precision
from ..recipe import Recipe
from ..tasks.base import Task
from . import deepspeed_zero, fsdp, launch, tracking
from .batches import MEGA_BATCH_FACTOR, batch_count


@dataclass
class Prepared:
    """What the checks settled, before any weights are loaded."""

    recipe: Recipe  # with what the data and the model decided: label names, the max_length the model allows
    task: Task
    splits: dict
    checkpoint: models.Checkpoint
    decoder: models.Checkpoint | None
    tokenizer: object
    precision: str  # Accelerate's mixed_precision
    leakage: dict  # {"train/validation": leakage.PairAudit, ...}: what pairs of splits share (data.leakage)


def prepare(recipe: Recipe) -> Prepared:
    """Every check `train` makes before loading weights: precision and trackers on this machine, the data against
    the task, the checkpoint's config and tokenizer. `llmtune validate` runs it too.

    Raises:
        UserError: the first problem, in one line.
    """
    check_engine(recipe)
    precision = mixed_precision(recipe.training.precision)
    tracking.check_installed(recipe.tracking)
    if getattr(recipe.method, "quantization", None):
        models.check_quantization_installed(f"method.quantization: {recipe.method.quantization}")
    if recipe.training.optimizer == "adamw_8bit":
        models.check_quantization_installed("training.optimizer: adamw_8bit")
    if not recipe.data.sources():
        raise UserError("data: no split given; expected data.train (and data.validation, data.test)")
    task = tasks.create(recipe.task)
    splits = data.load_splits(recipe.data, task.file_readers)
    task.prepare(splits, recipe.data)
    columns = next(iter(splits.values())).column_names
    shared = leakage.check(splits, task.leakage_fields(columns), recipe.data.leakage, recipe.data.leakage_threshold)
    if recipe.data.augment and "train" in splits:
        augment.check(recipe.data.augment, task.augment_fields(splits["train"].column_names), task.name)
    if recipe.evaluation.metric_for_best and "validation" not in splits:
        raise UserError("evaluation.metric_for_best: needs data.validation, the split the best checkpoint is chosen on")
    checkpoint, decoder = models.resolve_checkpoint(recipe.model), models.resolve_decoder(recipe.model)
    tokenizer = models.load_tokenizer(checkpoint, recipe.model.trust_remote_code)
    config = models.load_config(checkpoint, recipe.model.trust_remote_code)
    task.setup(config, tokenizer)
    if "train" in splits and not recipe.training.max_tokens:  # (with a token budget, setup checks it)
        steps = planned_steps(len(splits["train"]), recipe.training)
        recipe.training.check_planned_steps(steps)
        check_warmup(recipe.training, steps)
    max_length = models.capped_max_length(config, recipe.training.max_length)  # says so when it caps
    training = recipe.training.model_copy(update={"max_length": max_length})
    recipe = recipe.model_copy(update={"task": task.resolved_options(), "training": training})
    return Prepared(recipe, task, splits, checkpoint, decoder, tokenizer, precision, shared)


def check_engine(recipe: Recipe) -> None:
    """Refuse, before anything loads, an Accelerate config whose engine llmtune cannot train with correctly.

    FSDP2 and DeepSpeed ZeRO are supported (fsdp.py, deepspeed_zero.py). The DeepSpeed config itself is checked once
    Accelerate has read it (deepspeed_zero.configure).

    Raises:
        UserError: the engine, and what to use instead.
    """
    if launch.env_flag("ACCELERATE_USE_DEEPSPEED"):
        deepspeed_zero.check_deepspeed(recipe)
    elif launch.env_flag("ACCELERATE_USE_FSDP"):
        fsdp.check_fsdp(recipe)


def planned_steps(examples: int, training) -> int:
    """The run's optimizer steps with a fixed batch size, counted before anything is tokenized."""
    batches = batch_count(examples, training.batch_size, training.batch_size * MEGA_BATCH_FACTOR)
    return count_steps(math.ceil(batches / launch.world_size()), training)[1]


def count_steps(batches_per_epoch: int, training) -> tuple[int, int]:
    """Optimizer steps per epoch and in all, from one process's batches per epoch."""
    steps_per_epoch = math.ceil(batches_per_epoch / training.gradient_accumulation_steps)
    return steps_per_epoch, training.max_steps or max(
        1, math.ceil(training.epochs * steps_per_epoch), training.min_steps or 0
    )


def check_warmup(training, total_steps: int) -> None:
    """Raises UserError: more warmup steps than the run has, so the learning rate would never reach its peak."""
    if training.warmup_steps is not None and training.warmup_steps > total_steps:
        raise UserError(
            f"training.warmup_steps: {training.warmup_steps} warmup steps but the run has {total_steps} steps in all; "
            "the learning rate would never reach training.learning_rate. Use fewer warmup steps (or "
            "training.warmup_ratio)"
        )
