"""What `setup` builds for the training loop: the accelerator, the model with its method, the batches, the
optimizer, the schedule and the starting state (a resumed run's from its checkpoint), wired into the Session."""

from __future__ import annotations

import datetime
import math
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, InitProcessGroupKwargs, set_seed
from torch.utils.data import DataLoader
from transformers import get_scheduler

from .. import models
from ..data import augment
from ..inference.batches import PadCollator
from ..inference.devices import new_accelerator, precision_label
from ..inference.evaluation import eval_batches, model_features, tokenize_splits
from ..recipe import Recipe
from . import checkpoints, deepspeed_zero, launch, layers, memory, tracking
from .batches import LengthGroupedBatches
from .preparation import Prepared, check_warmup, count_steps
from .progress import Progress
from .session import Session
from .state import TrainingState


def setup(
    prepared: Prepared, run_dir: Path, resume, explicit_checkpoint: Path | None, stop, echo
) -> tuple[Session, TrainingState]:
    """The model with its adapter, batches, optimizer, schedule and training state (a checkpoint's when resuming)."""
    recipe, training = prepared.recipe, prepared.recipe.training
    accelerator = training_accelerator(prepared, run_dir)
    shown = accelerator.is_main_process and echo is not None  # progress and summary lines go to the caller's echo
    echo = echo if shown else silent
    resume_from = resume_point(recipe, run_dir, explicit_checkpoint) if resume else None
    augmented = augment_train(prepared, accelerator, echo)
    set_seed(training.seed)  # a newly initialised head starts from the recipe's seed
    model, new_modules = load_model(prepared, echo)
    features, sampler, train_loader, eval_loaders = make_batches(prepared, accelerator)
    optimizer = make_optimizer(parameter_groups(model, training, new_modules), training)
    model, optimizer, train_loader = prepare_for_training(accelerator, model, optimizer, train_loader, training)
    steps_per_epoch, total_steps = count_steps(len(train_loader), training)
    scheduler = make_scheduler(optimizer, training, total_steps)
    state, pending_rng = starting_state(resume_from, accelerator, model, optimizer, scheduler, echo)
    if training.max_tokens:  # a token budget's steps are known once the data is tokenized; prepare checked the others
        check_warmup(training, total_steps)
    progress = Progress(total_steps, enabled=shown, echo=echo)
    session = Session(
        recipe=recipe,
        task=prepared.task,
        run_dir=run_dir,
        accelerator=accelerator,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        sampler=sampler,
        train_loader=train_loader,
        splits=prepared.splits,
        features=features,
        eval_loaders=eval_loaders,
        tokenizer=prepared.tokenizer,
        total_steps=total_steps,
        steps_per_epoch=steps_per_epoch,
        progress=progress,
        echo=echo,
        stop=stop,
        pending_rng=pending_rng,
        examples_at_start=state.examples_seen,
        resumed=resume_from is not None,
        augmented=augmented,
        leakage={name: pair.as_dict() for name, pair in prepared.leakage.items()},
    )
    echo(training_line(session))
    return session, state


def training_accelerator(prepared: Prepared, run_dir: Path) -> Accelerator:
    """The Accelerator this run trains with (and TF32 matmuls on CUDA: fp32 parameters and optimizer, tensor-core
    speed on Ampere and later)."""
    recipe, training = prepared.recipe, prepared.recipe.training
    # Accelerate sets up several CPU processes (gloo) only when told to use the CPU.
    cpu_processes = not torch.cuda.is_available() and launch.world_size() > 1
    # A crashed or hung peer ends the run after collective_timeout_s instead of blocking forever.
    timeout = InitProcessGroupKwargs(timeout=datetime.timedelta(seconds=training.collective_timeout_s))
    accelerator = new_accelerator(
        kwargs_handlers=[timeout],
        # Batches (in pinned memory on CUDA) copied to the GPU without the host waiting for each copy.
        dataloader_config=DataLoaderConfiguration(non_blocking=torch.cuda.is_available()),
        mixed_precision=prepared.precision,
        gradient_accumulation_steps=training.gradient_accumulation_steps,
        cpu=cpu_processes,
        **tracking.accelerator_options(recipe.tracking, run_dir),
    )
    if deepspeed_zero.engaged(accelerator):
        deepspeed_zero.configure(accelerator, training)
    memory.reset_peak()  # metrics.json's peak GPU memory is the run's own, not the process's so far
    if accelerator.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return accelerator


def resume_point(recipe: Recipe, run_dir: Path, explicit_checkpoint: Path | None) -> Path:
    """The checkpoint a resumed run continues from, once its recipe is known to be the run's."""
    checkpoints.check_same_recipe(run_dir, recipe)
    return checkpoints.find_resumable(run_dir, explicit_checkpoint)


def augment_train(prepared: Prepared, accelerator: Accelerator, echo) -> dict[str, int]:
    """`data.augment` applied to the train split (replaced in `prepared.splits`); the rows each method added."""
    methods = prepared.recipe.data.augment
    if not methods:
        return {}
    with accelerator.main_process_first():  # one process augments, the others read its cache
        fields = prepared.task.augment_fields(prepared.splits["train"].column_names)
        train, counts = augment.apply(prepared.splits["train"], methods, fields, prepared.recipe.training.seed, echo)
    prepared.splits["train"] = train
    return counts


def load_model(prepared: Prepared, echo) -> tuple[torch.nn.Module, list[str]]:
    """The task's model with the recipe's method applied; the names of its newly initialised modules."""
    recipe, task = prepared.recipe, prepared.task
    decoder = prepared.decoder
    quantization = getattr(recipe.method, "quantization", None)  # adapter methods only
    echo(
        f"model: {prepared.checkpoint.name} ({prepared.checkpoint.origin})"
        + (f", decoder warm-started from {decoder.name} ({decoder.origin})" if decoder else "")
    )
    model, new_modules = models.load_model(
        prepared.checkpoint,
        task.auto_class,
        recipe.model.trust_remote_code,
        prepared.tokenizer.pad_token_id,
        decoder=decoder,
        quantization=quantization,
        **task.model_kwargs(),
    )
    if getattr(recipe.method, "reinit_top_layers", 0):
        drawn = layers.reinit_top_layers(model, recipe.method.reinit_top_layers)
        echo(f"re-initialised (method.reinit_top_layers): {', '.join(drawn)}")
    if quantization:
        model = models.prepare_quantized(model, recipe.training.gradient_checkpointing)
    elif recipe.training.gradient_checkpointing:
        models.enable_gradient_checkpointing(model)
    model = models.apply_method(model, recipe.method, task.peft_task_type, new_modules)
    models.materialize_meta(model)
    models.set_precision(model, prepared.precision, recipe.training.precision == "bf16-pure")
    trainable, total = models.count_parameters(model)
    echo(
        f"method: {recipe.method.type}, training {trainable:,} of {total:,} parameters ({100 * trainable / total:.2f}%)"
    )
    return model, new_modules


def make_batches(prepared: Prepared, accelerator: Accelerator):
    """Tokenized features of every split, the training batch sampler and loader, and the evaluation loaders."""
    recipe, task, training = prepared.recipe, prepared.task, prepared.recipe.training
    tokenizer = prepared.tokenizer
    features = tokenize_splits({"train": prepared.splits["train"]}, task, tokenizer, training.max_length, accelerator)
    eval_splits = {split: prepared.splits[split] for split in ("validation", "test") if split in prepared.splits}
    eval_features, eval_loaders = eval_batches(eval_splits, task, tokenizer, recipe.training, accelerator)
    features.update(eval_features)
    size = None if training.max_tokens else training.batch_size
    sampler = LengthGroupedBatches(features["train"]["length"], size, training.seed, max_tokens=training.max_tokens)
    train_loader = DataLoader(
        model_features(features["train"], task),
        batch_sampler=sampler,
        collate_fn=PadCollator(tokenizer.pad_token_id, tokenizer.padding_side),
        pin_memory=accelerator.device.type == "cuda",
    )
    return features, sampler, train_loader, eval_loaders


def parameter_groups(model, training, new_modules: list[str]) -> list[dict]:
    """AdamW groups: no weight decay on biases and norms; the newly initialised head at its own learning rate if
    asked; the body's layers at decaying rates if asked (training.layer_decay)."""
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")
    head_lr = training.head_learning_rate or training.learning_rate
    count = layers.layer_count(model) if training.layer_decay else 0
    groups: dict[tuple, list] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            is_head = any(f".{module}." in f".{name}" for module in new_modules)
            body_lr = layers.decayed_rate(name, count, training.learning_rate, training.layer_decay)
            key = (head_lr if is_head else body_lr, 0.0 if name.endswith(no_decay) else training.weight_decay)
            groups.setdefault(key, []).append((name, param))
    # The names travel with the groups (torch's param_names): checkpoints key the optimizer state by them.
    return [
        {"params": [p for _, p in pairs], "param_names": [n for n, _ in pairs], "lr": lr, "weight_decay": decay}
        for (lr, decay), pairs in groups.items()
    ]


def make_optimizer(groups: list[dict], training) -> torch.optim.Optimizer:
    if training.optimizer == "adamw_8bit":
        import bitsandbytes

        return bitsandbytes.optim.AdamW8bit(groups, lr=training.learning_rate)
    # The fused kernel updates every tensor in one pass: on CPU 5x faster than the multi-tensor (foreach)
    # path for MiniLM (49 vs 277 ms a step), which is a quarter of a step on short sentences.
    return torch.optim.AdamW(groups, lr=training.learning_rate, fused=True)


def prepare_for_training(accelerator: Accelerator, model, optimizer, train_loader, training):
    """The model, optimizer and train loader wrapped by Accelerate (and compiled if asked)."""
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    # Seeded again: dropout must not depend on how many random numbers loading drew, which differs between
    # processes under FSDP's RAM-efficient loading (only the first one initialises a new head).
    set_seed(training.seed)
    if training.compile:
        model = torch.compile(model)
    return model, optimizer, train_loader


def make_scheduler(optimizer: torch.optim.Optimizer, training, total_steps: int):
    warmup = (
        training.warmup_steps if training.warmup_steps is not None else math.ceil(training.warmup_ratio * total_steps)
    )
    return get_scheduler(training.scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)


def starting_state(resume_from: Path | None, accelerator: Accelerator, model, optimizer, scheduler, echo):
    """The loop's state (and a resumed run's RNG states, to restore where its checkpoint took them): new, or the
    checkpoint's, whose weights, optimizer and schedule are loaded too."""
    state, pending_rng = TrainingState(num_processes=accelerator.num_processes), None
    if resume_from is not None:
        state, pending_rng = checkpoints.load(resume_from, accelerator, model, optimizer, scheduler)
        echo(f"resuming from {resume_from} (step {state.step})")
    if isinstance(state.window_loss, float):
        state.window_loss = torch.zeros((), device=accelerator.device)
    return state, pending_rng


def training_line(session: Session) -> str:
    """The line that says what the session trains on: examples, steps and their size, device, processes, precision."""
    accelerator, training = session.accelerator, session.recipe.training
    line = (
        f"training: {len(session.splits['train']):,} examples, {session.total_steps:,} steps of {step_size(session)}, "
        f"{accelerator.device}, {accelerator.num_processes} process(es), "
        f"precision {precision_label(training.precision, accelerator.mixed_precision)}"
    )
    if (
        not training.max_steps
        and training.min_steps
        and session.total_steps > math.ceil(training.epochs * session.steps_per_epoch)
    ):
        passes, epochs = session.total_steps / session.steps_per_epoch, training.epochs
        line += f"; training.min_steps: {passes:.3g} passes over the training split, not training.epochs' {epochs:g}"
    return line


def step_size(session: Session) -> str:
    """An optimizer step's size, for the log: examples, or tokens with a token budget, all processes counted."""
    training, processes = session.recipe.training, session.accelerator.num_processes
    if training.max_tokens:
        return f"{training.max_tokens * training.gradient_accumulation_steps * processes:,} tokens"
    return f"{training.batch_size * training.gradient_accumulation_steps * processes} examples"


def silent(*args, **kwargs) -> None:
    """The print callback of a silent session (no `echo`), and of every process but the main one."""
