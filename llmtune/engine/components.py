"""What `setup` builds for the training loop: the accelerator, the model with its method, the batches, the
optimizer, the schedule and the starting state (a resumed run's from its checkpoint); and the saved model."""

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
from ..common import runs, sharding
from ..data import augment
from ..inference.batches import PadCollator
from ..inference.devices import new_accelerator, precision_label
from ..inference.evaluation import eval_batches, model_features, tokenize_splits
from ..recipe import Recipe, dump_recipe
from . import checkpoints, deepspeed_zero, launch, layers, memory, tracking
from .batches import LengthGroupedBatches
from .checkpoints import TrainingState
from .preparation import Prepared


def training_accelerator(prepared: Prepared, run_dir: Path) -> Accelerator:
    """The Accelerator this run trains with (and TF32 matmuls on CUDA: fp32 parameters and optimizer, tensor-core
    speed on Ampere and later)."""
    recipe, cfg = prepared.recipe, prepared.recipe.training
    # Accelerate sets up several CPU processes (gloo) only when told to use the CPU.
    cpu_processes = not torch.cuda.is_available() and launch.world_size() > 1
    # A crashed or hung peer ends the run after collective_timeout_s instead of blocking forever.
    timeout = InitProcessGroupKwargs(timeout=datetime.timedelta(seconds=cfg.collective_timeout_s))
    accelerator = new_accelerator(
        kwargs_handlers=[timeout],
        # Batches (in pinned memory on CUDA) copied to the GPU without the host waiting for each copy.
        dataloader_config=DataLoaderConfiguration(non_blocking=torch.cuda.is_available()),
        mixed_precision=prepared.precision,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        cpu=cpu_processes,
        **tracking.accelerator_options(recipe.tracking, run_dir),
    )
    if deepspeed_zero.engaged(accelerator):
        deepspeed_zero.configure(accelerator, cfg)
    memory.reset_peak()  # metrics.json's peak GPU memory is the run's own, not the process's so far
    if accelerator.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return accelerator


def whole_weights(accelerator: Accelerator, model) -> dict | None:
    """The whole weights to save, under FSDP or ZeRO (every process takes part in gathering them, the main process
    saves them); None when the model holds them whole."""
    if deepspeed_zero.engaged(accelerator):
        return deepspeed_zero.saved_state_dict(accelerator, model)
    if sharding.fsdp2_engaged(accelerator):
        return accelerator.get_state_dict(model)
    return None


def resume_point(recipe: Recipe, run_dir: Path, explicit_checkpoint: Path | None) -> Path:
    """The checkpoint a resumed run continues from, once its recipe is known to be the run's."""
    checkpoints.check_same_recipe(run_dir, recipe)
    return checkpoints.find_resumable(run_dir, explicit_checkpoint)


def augment_train(prepared: Prepared, accelerator: Accelerator, say) -> dict[str, int]:
    """`data.augment` applied to the train split (replaced in `prepared.splits`); the rows each method added."""
    methods = prepared.recipe.data.augment
    if not methods:
        return {}
    with accelerator.main_process_first():  # one process augments, the others read its cache
        fields = prepared.task.augment_fields(prepared.splits["train"].column_names)
        train, counts = augment.apply(prepared.splits["train"], methods, fields, prepared.recipe.training.seed, say)
    prepared.splits["train"] = train
    return counts


def load_model(prepared: Prepared, say) -> tuple[torch.nn.Module, list[str]]:
    """The task's model with the recipe's method applied; the names of its newly initialised modules."""
    recipe, task = prepared.recipe, prepared.task
    decoder = prepared.decoder
    quantization = getattr(recipe.method, "quantization", None)  # adapter methods only
    say(
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
        say(f"re-initialised (method.reinit_top_layers): {', '.join(drawn)}")
    if quantization:
        model = models.prepare_quantized(model, recipe.training.gradient_checkpointing)
    elif recipe.training.gradient_checkpointing:
        models.enable_gradient_checkpointing(model)
    model = models.apply_method(model, recipe.method, task.peft_task_type, new_modules)
    models.materialize_meta(model)
    models.set_precision(model, prepared.precision, recipe.training.precision == "bf16-pure")
    trainable, total = models.count_parameters(model)
    say(
        f"method: {recipe.method.type}, training {trainable:,} of {total:,} parameters ({100 * trainable / total:.2f}%)"
    )
    return model, new_modules


def make_batches(prepared: Prepared, accelerator: Accelerator):
    """Tokenized features of every split, the training batch sampler and loader, and the evaluation loaders."""
    recipe, task, cfg = prepared.recipe, prepared.task, prepared.recipe.training
    tokenizer = prepared.tokenizer
    features = tokenize_splits({"train": prepared.splits["train"]}, task, tokenizer, cfg.max_length, accelerator)
    eval_splits = {split: prepared.splits[split] for split in ("validation", "test") if split in prepared.splits}
    eval_features, eval_loaders = eval_batches(eval_splits, task, tokenizer, recipe.training, accelerator)
    features.update(eval_features)
    size = None if cfg.max_tokens else cfg.batch_size
    sampler = LengthGroupedBatches(features["train"]["length"], size, cfg.seed, max_tokens=cfg.max_tokens)
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


def make_optimizer(groups: list[dict], cfg) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw_8bit":
        import bitsandbytes

        return bitsandbytes.optim.AdamW8bit(groups, lr=cfg.learning_rate)
    # The fused kernel updates every tensor in one pass: on CPU 5x faster than the multi-tensor (foreach)
    # path for MiniLM (49 vs 277 ms a step), which is a quarter of a step on short sentences.
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, fused=True)


def prepare_for_training(accelerator: Accelerator, model, optimizer, train_loader, cfg):
    """The model, optimizer and train loader wrapped by Accelerate (and compiled if asked)."""
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    # Seeded again: dropout must not depend on how many random numbers loading drew, which differs between
    # processes under FSDP's RAM-efficient loading (only the first one initialises a new head).
    set_seed(cfg.seed)
    if cfg.compile:
        model = torch.compile(model)
    return model, optimizer, train_loader


def make_scheduler(optimizer: torch.optim.Optimizer, cfg, total_steps: int):
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else math.ceil(cfg.warmup_ratio * total_steps)
    return get_scheduler(cfg.scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)


def starting_state(resume_from: Path | None, accelerator: Accelerator, model, optimizer, scheduler, say):
    """The loop's state (and a resumed run's RNG states, to restore where its checkpoint took them): new, or the
    checkpoint's, whose weights, optimizer and schedule are loaded too."""
    state, pending_rng = TrainingState(num_processes=accelerator.num_processes), None
    if resume_from is not None:
        state, pending_rng = checkpoints.load(resume_from, accelerator, model, optimizer, scheduler)
        say(f"resuming from {resume_from} (step {state.step})")
    if isinstance(state.window_loss, float):
        state.window_loss = torch.zeros((), device=accelerator.device)
    return state, pending_rng


def save_model(model, tokenizer, run_dir: Path, recipe: Recipe, state_dict: dict | None = None) -> None:
    """Save as plain transformers / peft files (safetensors), each weight in the dtype the checkpoint stored it in;
    `state_dict`: the whole weights of a sharded model."""
    state_dict = models.in_stored_dtypes(model, state_dict)
    options = {}
    if hasattr(model, "peft_config"):
        # Point the adapter at the hub id, not this machine's cache path, so it loads anywhere.
        for config in model.peft_config.values():
            config.base_model_name_or_path = recipe.model.name
        # llmtune never resizes the vocabulary: no hub lookup (and two peft warnings offline) to ask whether it did.
        options["save_embedding_layers"] = False
    model.save_pretrained(run_dir, safe_serialization=True, state_dict=state_dict, **options)
    tokenizer.save_pretrained(run_dir)


def tune(run, rows: list[dict]) -> bool:
    """The task's after-training step (`Task.tune`) on the validation split's prediction rows; what it settled goes
    into the run's recipe, in memory and in the run directory, so every later load applies it."""
    settled = run.task.tune(rows)
    if settled is None:
        return False
    run.recipe = run.recipe.model_copy(update={"task": run.task.resolved_options()})
    if run.accelerator.is_main_process:
        runs.write_atomic(run.run_dir / runs.RECIPE_FILE, dump_recipe(run.recipe))
    run.say(settled)
    return True


def training_line(run) -> str:
    """The line that says what the run trains on: examples, steps and their size, device, processes, precision."""
    accelerator, cfg = run.accelerator, run.recipe.training
    line = (
        f"training: {len(run.splits['train']):,} examples, {run.total_steps:,} steps of {step_size(run)}, "
        f"{accelerator.device}, {accelerator.num_processes} process(es), "
        f"precision {precision_label(cfg.precision, accelerator.mixed_precision)}"
    )
    if not cfg.max_steps and cfg.min_steps and run.total_steps > math.ceil(cfg.epochs * run.steps_per_epoch):
        passes, epochs = run.total_steps / run.steps_per_epoch, cfg.epochs
        line += f"; training.min_steps: {passes:.3g} passes over the training split, not training.epochs' {epochs:g}"
    return line


def step_size(run) -> str:
    """An optimizer step's size, for the log: examples, or tokens with a token budget, all processes counted."""
    cfg, processes = run.recipe.training, run.accelerator.num_processes
    if cfg.max_tokens:
        return f"{cfg.max_tokens * cfg.gradient_accumulation_steps * processes:,} tokens"
    return f"{cfg.batch_size * cfg.gradient_accumulation_steps * processes} examples"
