"""The training loop: one Accelerate loop for every task, on CPU, one GPU or many.

    train(recipe) = prepare  every check of the recipe, data, model config and tokenizer; nothing heavy
                    setup    the model (and adapter), batches, optimizer and schedule; the run directory
                    fit      the loop: forward, backward, step, log, evaluate, checkpoint
                    finish   the final evaluations, the saved model, predictions, plots and metrics.json

The loop's state is one `checkpoints.TrainingState`, and that is what a checkpoint saves (with the weights,
the optimizer and the schedule), so a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import importlib.util
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs, set_seed
from torch.utils.data import DataLoader
from transformers import get_scheduler

from . import allocator, augment, checkpoints, data, models, plots, runs, speed, tasks, tracking, zero
from .batching import LengthGroupedBatches, PadCollator
from .checkpoints import TrainingState
from .errors import Interrupted, PeerLost, UserError
from .evaluation import (
    eval_loader,
    format_metrics,
    mixed_precision,
    model_features,
    new_accelerator,
    run_evaluation,
)
from .progress import Clock, Progress, RunLog
from .quiet import quiet_libraries
from .recipe import Recipe, dump_recipe
from .tasks.base import Task


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict  # per split: {"validation": {...}, "test": {...}, "train": {...}}


@quiet_libraries
def train(
    recipe: Recipe,
    output_dir: str | Path | None = None,
    overwrite: bool = False,
    echo=None,
    resume: bool | str | Path = False,
    on_validation: Callable[[int, dict], bool] | None = None,
) -> TrainResult:
    """Fine-tune as the recipe says and write the run directory.

    Every recipe and data problem is found before the model is loaded and before anything is written.
    Silent unless `echo` is given (e.g. `echo=print`): progress and summary lines go to it.
    SIGINT / SIGTERM stop training after the current step with a checkpoint (raising Interrupted).

    Args:
        resume: continue from the newest complete checkpoint of the run directory (True), or from the
            run directory or checkpoint at this path.
        on_validation: called after each validation with (step, metrics); returning True stops training there,
            and the run finishes as usual (a sweep's pruner uses it). Called in every process (the metrics are
            the same in all).

    Raises:
        UserError: bad recipe, data, model or output directory; nothing to resume, or a recipe that
            differs from the resumed run's.
        Interrupted: stopped by a signal; a checkpoint was saved.
        PeerLost: another process of a data-parallel run stopped or hung; the run resumes from its checkpoints.
    """
    if recipe.training.release_freed_memory:
        allocator.fix_mmap_threshold()
    run_dir = Path(output_dir or recipe.output_dir)
    explicit_checkpoint = None
    if resume:
        run_dir, explicit_checkpoint = checkpoints.resume_target(resume, run_dir)
    else:
        runs.check_output_dir(run_dir, overwrite)
    if recipe.data.train is None:
        raise UserError("data.train: missing; training needs a train split")
    prepared = prepare(recipe)
    with checkpoints.StopSignals(announce=os.environ.get("RANK", "0") == "0") as stop:
        run, state = setup(prepared, run_dir, resume, explicit_checkpoint, stop, echo)
        run.on_validation = on_validation
        with writing(run, state):
            state = fit(run, state)
            return finish(run, state)


# ---------------------------------------------------------------------------------------------- prepare


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
    if recipe.data.augment and "train" in splits:
        augment.check(recipe.data.augment, task.augment_fields(splits["train"].column_names), task.name)
    if recipe.evaluation.metric_for_best and "validation" not in splits:
        raise UserError("evaluation.metric_for_best: needs data.validation, the split the best checkpoint is chosen on")
    checkpoint, decoder = models.resolve_checkpoint(recipe.model), models.resolve_decoder(recipe.model)
    tokenizer = models.load_tokenizer(checkpoint, recipe.model.trust_remote_code)
    config = models.load_config(checkpoint, recipe.model.trust_remote_code)
    task.setup(config, tokenizer)
    if "train" in splits and not recipe.training.max_tokens:  # (with a token budget, setup checks it)
        recipe.training.check_planned_steps(planned_steps(len(splits["train"]), recipe.training))
        check_warmup(recipe.training, planned_steps(len(splits["train"]), recipe.training))
    max_length = models.capped_max_length(config, recipe.training.max_length)  # says so when it caps
    training = recipe.training.model_copy(update={"max_length": max_length})
    recipe = recipe.model_copy(update={"task": task.resolved_options(), "training": training})
    return Prepared(recipe, task, splits, checkpoint, decoder, tokenizer, precision)


def check_engine(recipe: Recipe) -> None:
    """Refuse, before anything loads, an Accelerate config whose engine llmtune cannot train with correctly.

    FSDP2 and DeepSpeed ZeRO are supported: checkpoints and the saved model gather the shards
    (checkpoints.whole_state). FSDP1 is not. The DeepSpeed config itself is checked once Accelerate has read it
    (zero.configure).

    Raises:
        UserError: the engine, and what to use instead.
    """
    if _env_flag("ACCELERATE_USE_DEEPSPEED"):
        check_deepspeed(recipe)
        return
    if not _env_flag("ACCELERATE_USE_FSDP"):
        return
    if os.environ.get("FSDP_VERSION", "1") != "2":
        raise UserError(
            f"accelerate config: fsdp_version {os.environ.get('FSDP_VERSION', '1')}: llmtune shards with FSDP2 only; "
            "set fsdp_version: 2 in the config (or accelerate launch --use_fsdp --fsdp_version 2)"
        )
    if torch.__version__ < "2.6":
        raise UserError(f"accelerate config: FSDP2 needs torch 2.6 or later (installed: {torch.__version__})")
    if not accelerator_present():
        raise UserError(
            "accelerate config: FSDP needs GPUs (or other accelerators): Accelerate shards only across devices and "
            "would run CPU processes data-parallel with the weights loaded on the first one alone. On CPU, launch "
            "without --use_fsdp (data-parallel, e.g. torchrun --nproc_per_node N)"
        )
    refuse_quantization(recipe, "FSDP")


def check_deepspeed(recipe: Recipe) -> None:
    if importlib.util.find_spec("deepspeed") is None:
        raise UserError("accelerate config: DeepSpeed is selected but not installed: pip install deepspeed")
    if not accelerator_present():
        raise UserError(
            "accelerate config: DeepSpeed needs GPUs (or other accelerators): Accelerate runs CPU processes "
            "data-parallel without it. On CPU, launch without DeepSpeed (e.g. torchrun --nproc_per_node N)"
        )
    refuse_quantization(recipe, "DeepSpeed")
    if recipe.training.compile:
        raise UserError(
            "training.compile is not supported with DeepSpeed yet (not tested on its engine); set training.compile: "
            "false"
        )
    if recipe.training.optimizer != "adamw":
        raise UserError(
            f"training.optimizer: {recipe.training.optimizer} is not supported with DeepSpeed (ZeRO partitions "
            "the optimizer state itself); use adamw"
        )


def refuse_quantization(recipe: Recipe, engine: str) -> None:
    if getattr(recipe.method, "quantization", None):
        raise UserError(
            f"method.quantization: {recipe.method.quantization} is not supported with {engine} yet; train the "
            "quantized model on one GPU per process (data-parallel), or shard it unquantized"
        )


def _env_flag(variable: str) -> bool:
    return os.environ.get(variable, "").lower() in ("1", "true", "yes")


def accelerator_present() -> bool:
    """Whether this machine has a GPU (or another device Accelerate can shard across)."""
    return torch.accelerator.is_available() if hasattr(torch, "accelerator") else torch.cuda.is_available()


def planned_steps(examples: int, cfg) -> int:
    """The run's optimizer steps with a fixed batch size, before anything is tokenized (setup counts them again)."""
    batches = LengthGroupedBatches([1] * examples, cfg.batch_size, cfg.seed).full_length()
    per_process = math.ceil(batches / int(os.environ.get("WORLD_SIZE", "1")))
    return cfg.max_steps or max(1, math.ceil(cfg.epochs * math.ceil(per_process / cfg.gradient_accumulation_steps)))


def check_warmup(cfg, total_steps: int) -> None:
    """Raises UserError: more warmup steps than the run has, so the learning rate would never reach its peak."""
    if cfg.warmup_steps is not None and cfg.warmup_steps > total_steps:
        raise UserError(
            f"training.warmup_steps: {cfg.warmup_steps} warmup steps but the run has {total_steps} steps in all; the "
            "learning rate would never reach training.learning_rate. Use fewer warmup steps (or training.warmup_ratio)"
        )


# ---------------------------------------------------------------------------------------------- setup


@dataclass
class Run:
    """What `fit` and `finish` work with, built by `setup`."""

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
    say: Callable
    stop: checkpoints.StopSignals
    clock: Clock = dataclasses.field(default_factory=Clock)
    throughput: speed.Throughput = dataclasses.field(default_factory=speed.Throughput)
    pending_rng: dict | None = None  # a resumed run's RNG states, restored where the checkpoint took them
    examples_at_start: int = 0  # examples seen before this session (a resumed run's): not in this session's speed
    last_finite_loss: float | None = None  # for the message when the loss diverges
    resumed: bool = False  # continues from a checkpoint of the run directory
    created_dir: bool = False  # the run created its directory (a failed run removes it again)
    log: RunLog | None = None  # opened by `writing`, with the run directory
    last_validation: tuple | None = None  # (step, metrics, prediction rows) of the newest validation
    on_validation: Callable[[int, dict], bool] | None = None  # the caller's hook; True asks training to stop
    stop_requested: bool = False  # on_validation asked to stop
    augmented: dict = dataclasses.field(default_factory=dict)  # rows data.augment added, by method

    @functools.cached_property
    def encoder_decoder(self) -> bool:
        return bool(getattr(self.accelerator.unwrap_model(self.model).config, "is_encoder_decoder", False))


def setup(
    prepared: Prepared, run_dir: Path, resume, explicit_checkpoint: Path | None, stop, echo
) -> tuple[Run, TrainingState]:
    """The model (with its adapter), batches, optimizer and schedule; the training state, from a checkpoint when
    resuming; the run directory opened for writing."""
    recipe, cfg = prepared.recipe, prepared.recipe.training
    # Accelerate sets up several CPU processes (gloo) only when told to use the CPU.
    cpu_processes = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    # A crashed or hung peer ends the run after collective_timeout_s instead of blocking forever.
    timeout = InitProcessGroupKwargs(timeout=datetime.timedelta(seconds=cfg.collective_timeout_s))
    accelerator = new_accelerator(
        kwargs_handlers=[timeout],
        mixed_precision=prepared.precision,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        cpu=cpu_processes,
        **tracking.accelerator_options(recipe.tracking, run_dir),
    )
    if zero.engaged(accelerator):
        zero.configure(accelerator, cfg)
    say = echo if accelerator.is_main_process and echo is not None else (lambda *args, **kwargs: None)
    resume_from = None
    if resume:
        checkpoints.check_same_recipe(run_dir, recipe)
        resume_from = checkpoints.find_resumable(run_dir, explicit_checkpoint)
    augmented = augment_train(prepared, accelerator, say)
    set_seed(cfg.seed)
    model, new_modules = load_model(prepared, say)
    features, sampler, train_loader, eval_loaders = make_batches(prepared, accelerator)
    if accelerator.device.type == "cuda":  # TF32 matmuls: fp32 parameters and optimizer, tensor-core speed (Ampere+)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    optimizer = make_optimizer(parameter_groups(model, cfg, new_modules), cfg)
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    # Seeded again: dropout must not depend on how many random numbers loading drew, which differs between
    # processes under FSDP's RAM-efficient loading (only the first one initialises a new head).
    set_seed(cfg.seed)
    if cfg.compile:
        model = torch.compile(model)
    steps_per_epoch = math.ceil(len(train_loader) / cfg.gradient_accumulation_steps)
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else math.ceil(cfg.warmup_ratio * total_steps)
    scheduler = get_scheduler(cfg.scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
    state, pending_rng = TrainingState(num_processes=accelerator.num_processes), None
    if resume_from is not None:
        state, pending_rng = checkpoints.load(resume_from, accelerator, model, optimizer, scheduler)
        say(f"resuming from {resume_from} (step {state.step})")
    if isinstance(state.window_loss, float):
        state.window_loss = torch.zeros((), device=accelerator.device)
    check_warmup(cfg, total_steps)
    progress = Progress(total_steps, enabled=accelerator.is_main_process and echo is not None, echo=say)
    run = Run(
        recipe,
        prepared.task,
        run_dir,
        accelerator,
        model,
        optimizer,
        scheduler,
        sampler,
        train_loader,
        prepared.splits,
        features,
        eval_loaders,
        prepared.tokenizer,
        total_steps,
        steps_per_epoch,
        progress,
        say,
        stop,
        pending_rng=pending_rng,
        examples_at_start=state.examples_seen,
        resumed=resume_from is not None,
        augmented=augmented,
    )
    say(
        f"training: {len(prepared.splits['train']):,} examples, {total_steps:,} steps of {step_size(run)}, "
        f"{accelerator.device}, {accelerator.num_processes} process(es), precision {accelerator.mixed_precision}"
    )
    return run, state


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
    if quantization:
        model = models.prepare_quantized(model, recipe.training.gradient_checkpointing)
    elif recipe.training.gradient_checkpointing:
        models.enable_gradient_checkpointing(model)
    model = models.apply_method(model, recipe.method, task.peft_task_type, new_modules)
    models.materialize_meta(model)
    trainable, total = models.count_parameters(model)
    say(
        f"method: {recipe.method.type}, training {trainable:,} of {total:,} parameters ({100 * trainable / total:.2f}%)"
    )
    return model, new_modules


def make_batches(prepared: Prepared, accelerator: Accelerator):
    """Tokenized features of every split, the training batch sampler and loader, and the evaluation loaders."""
    recipe, task, cfg = prepared.recipe, prepared.task, prepared.recipe.training
    tokenizer = prepared.tokenizer
    with accelerator.main_process_first():  # one process tokenizes, the others read its cache
        features = {
            split: task.preprocess(dataset, tokenizer, cfg.max_length) for split, dataset in prepared.splits.items()
        }
    collate = PadCollator(tokenizer.pad_token_id, tokenizer.padding_side)
    size = None if cfg.max_tokens else cfg.batch_size
    sampler = LengthGroupedBatches(features["train"]["length"], size, cfg.seed, max_tokens=cfg.max_tokens)
    train_loader = DataLoader(
        model_features(features["train"], task),
        batch_sampler=sampler,
        collate_fn=collate,
        pin_memory=accelerator.device.type == "cuda",
    )
    eval_loaders = {
        split: eval_loader(features[split], task, recipe.training, collate, accelerator)
        for split in ("validation", "test")
        if split in features
    }
    return features, sampler, train_loader, eval_loaders


def parameter_groups(model, training, new_modules: list[str]) -> list[dict]:
    """AdamW groups: no weight decay on biases and norms;
    the newly initialised head at its own learning rate if asked."""
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")
    head_lr = training.head_learning_rate or training.learning_rate
    groups: dict[tuple, list] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            is_head = any(f".{module}." in f".{name}" for module in new_modules)
            key = (
                head_lr if is_head else training.learning_rate,
                0.0 if name.endswith(no_decay) else training.weight_decay,
            )
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


@contextlib.contextmanager
def writing(run: Run, state: TrainingState):
    """The run directory, opened for this run: what happens inside either finishes the run, or leaves the directory
    as it was before the command (a new run's files removed, the run it replaced put back; a resumed run keeps its
    checkpoints). A signal stops with a resumable checkpoint; a full disk says so.

    Raises:
        UserError: the disk filled up (or the directory stopped being writable) while writing.
    """
    main = run.accelerator.is_main_process
    previous = open_run_dir(run, state.step) if main else None
    if not main:
        run.log = RunLog(run.run_dir, run.accelerator)
    tracking.start(run.accelerator, run.recipe.model_dump(mode="json"))
    try:
        yield
    except Interrupted:
        if main:
            runs.discard(previous)  # the new run can be resumed; the one it replaces is gone as asked
        raise
    except BaseException as error:
        if checkpoints.collective_failed(error, run.accelerator.num_processes):
            if main:  # like a signal: the run stays, resumable from its checkpoints
                run.log.close()
                runs.discard(previous)
            raise PeerLost(state.step, error) from None
        full = runs.is_disk_full(error, run.run_dir)  # before cleaning up frees the space again
        if main:
            run.log.close()
            if run.resumed:
                checkpoints.remove_leftovers(run.run_dir)
            else:
                runs.abandon(run.run_dir, previous, run.created_dir)
        if full:
            kept = "its checkpoints are as they were: continue with --resume" if run.resumed else "it is as it was"
            raise UserError(
                f"output_dir: the disk is full (no space left on device while writing {run.run_dir}); {kept}. Free "
                "some space, or choose another directory with --output DIR"
            ) from None
        raise
    if main:
        runs.discard(previous)


def open_run_dir(run: Run, step: int) -> Path | None:
    """A new run starts in an empty directory (a run it replaces is set aside until it finishes); a resumed one drops
    what was written after its checkpoint. Either way the resolved recipe is written and the log opened.
    Returns where the replaced run was set aside."""
    previous = None
    if run.resumed:
        checkpoints.remove_leftovers(run.run_dir)
        runs.reopen_run(run.run_dir, step)
    else:
        run.created_dir = not run.run_dir.exists()
        previous = runs.set_aside(run.run_dir)
    runs.write_atomic(run.run_dir / runs.RECIPE_FILE, dump_recipe(run.recipe))
    run.log = RunLog(run.run_dir, run.accelerator)
    return previous


def step_size(run: Run) -> str:
    cfg, processes = run.recipe.training, run.accelerator.num_processes
    if cfg.max_tokens:
        return f"{cfg.max_tokens * cfg.gradient_accumulation_steps * processes:,} tokens"
    return f"{cfg.batch_size * cfg.gradient_accumulation_steps * processes} examples"


# ---------------------------------------------------------------------------------------------- fit


def fit(run: Run, state: TrainingState) -> TrainingState:
    """The loop: forward, backward, step, log, evaluate, checkpoint, until the step budget or early stopping."""
    run.model.train()
    while state.step < run.total_steps and not stopping(run, state):
        for batch in epoch_batches(run, state):
            loss, grad_norm = train_step(run, batch)
            state.add_batch(loss, len(batch["index"]), run.accelerator.num_processes)
            if not run.accelerator.sync_gradients:
                continue  # accumulating gradients: not an optimizer step yet
            state.step += 1
            if state.step % run.recipe.training.log_every_n_steps == 0 or state.step == run.total_steps:
                log_training(run, state, grad_norm)
            improved = validate_if_due(run, state)
            checkpoint_if_due(run, state, improved)
            if state.step >= run.total_steps or stopping(run, state):
                break
        state.start_epoch()
    return state


def stopping(run: Run, state: TrainingState) -> bool:
    """Early stopping (evaluation.early_stopping_patience), or the caller's on_validation asked to stop."""
    return run.stop_requested or checkpoints.should_stop(run.recipe.evaluation, state)


def epoch_batches(run: Run, state: TrainingState):
    """The current epoch's training batches, after those a resumed run already trained on."""
    run.train_loader.set_epoch(state.epoch)  # Accelerate passes it on to the sampler, with one process
    run.sampler.set_epoch(state.epoch)
    run.sampler.skip = state.batches_done
    # The RNG states go back where the checkpoint took them: starting the loader draws from the RNG, which the
    # uninterrupted run did at the start of the epoch, not in its middle.
    if not run.sampler.skip:
        restore_rng(run)
    for batch in run.train_loader:
        restore_rng(run)
        yield batch


def restore_rng(run: Run) -> None:
    if run.pending_rng is not None:
        checkpoints.restore_rng(run.pending_rng)
        run.pending_rng = None


def train_step(run: Run, batch: dict):
    """Forward and backward of one batch; at the end of an accumulation, clip, step and schedule.
    Returns the batch's loss and the gradient norm before clipping (None when not clipped)."""
    accelerator, cfg = run.accelerator, run.recipe.training
    run.throughput.add(batch, run.encoder_decoder)
    grad_norm = None
    with accelerator.accumulate(run.model):
        loss = run.task.loss(run.model, batch)
        accelerator.backward(loss)
        if accelerator.sync_gradients and cfg.max_grad_norm:
            grad_norm = accelerator.clip_grad_norm_(run.model.parameters(), cfg.max_grad_norm)
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
    if accelerator.sync_gradients and not accelerator.optimizer_step_was_skipped:
        run.scheduler.step()
    return loss.detach(), grad_norm


def log_training(run: Run, state: TrainingState, grad_norm) -> None:
    """A log entry of the mean training loss since the last one, averaged over processes."""
    mean_loss = run.accelerator.reduce(state.window_loss, "mean").item() / state.window_batches
    check_finite(run, state, mean_loss)
    samples_per_s = (state.examples_seen - run.examples_at_start) / max(run.clock.training(), 1e-9)
    epoch = round(state.epoch + (state.step - state.epoch * run.steps_per_epoch) / run.steps_per_epoch, 4)
    entry = {
        "step": state.step,
        "epoch": epoch,
        "loss": mean_loss,
        "learning_rate": run.scheduler.get_last_lr()[0],
        "samples_per_s": samples_per_s,
    }
    if grad_norm is not None:
        entry["grad_norm"] = float(grad_norm)
    run.log.write(entry)
    run.progress.update(state.step, mean_loss, samples_per_s)
    state.window_loss, state.window_batches = torch.zeros((), device=run.accelerator.device), 0


def check_finite(run: Run, state: TrainingState, loss: float) -> None:
    """Stop a run whose loss became NaN or infinite, before it writes a checkpoint or a model of such weights.

    Raises:
        UserError: the step, the last finite loss, and what usually causes it.
    """
    if math.isfinite(loss):
        run.last_finite_loss = loss
        return
    last = f"{run.last_finite_loss:.4f}" if run.last_finite_loss is not None else "none logged yet"
    cfg = run.recipe.training
    raise UserError(
        f"training diverged at step {state.step}: the training loss is {loss} (last finite loss: {last}); nothing "
        f"was saved after the last checkpoint. Lower training.learning_rate (now {cfg.learning_rate:g}), add warmup, "
        f"or train in fp32 (training.precision, now {cfg.precision})"
    )


def validate_if_due(run: Run, state: TrainingState) -> bool:
    """Evaluate on validation every evaluation.every_n_steps (default: each epoch) and at the last step;
    True when the result is the best so far (evaluation.metric_for_best)."""
    every = run.recipe.evaluation.every_n_steps or run.steps_per_epoch
    if "validation" not in run.eval_loaders or not (state.step % every == 0 or state.step == run.total_steps):
        return False
    with run.clock.paused():
        metrics, predictions = evaluate_split(run, "validation", f"step {state.step}: validation", run.progress.note)
        run.last_validation = (state.step, metrics, predictions)
        run.log.write({"step": state.step, "split": "validation", **metrics})
        run.progress.note(f"step {state.step}: validation " + format_metrics(metrics))
    improved = checkpoints.update_best(run.recipe.evaluation, state, metrics)
    if run.on_validation is not None and run.on_validation(state.step, metrics):
        run.stop_requested = True
    return improved


def checkpoint_if_due(run: Run, state: TrainingState, improved: bool) -> None:
    """A checkpoint when the recipe asks for one, when validation improved, or when a signal asks to stop
    (then raising Interrupted, after the checkpoint)."""
    epoch_done = run.accelerator.gradient_state.end_of_dataloader
    signum = run.stop.requested(run.accelerator)
    if not (checkpoints.due(run.recipe, state.step, epoch_done) or signum or improved):
        return
    if state.window_batches:  # weights that diverged since the last log line are not worth keeping
        check_finite(run, state, run.accelerator.reduce(state.window_loss, "mean").item() / state.window_batches)
    # A checkpoint at an epoch's end resumes at the start of the next.
    position = dataclasses.replace(state, epoch=state.epoch + 1, batches_done=0) if epoch_done else state
    with run.clock.paused():
        saved = checkpoints.save(
            run.run_dir,
            run.accelerator,
            run.model,
            run.optimizer,
            run.scheduler,
            position,
            run.recipe.checkpointing.keep_last,
        )
    if signum:
        raise Interrupted(signum, state.step, saved)


def evaluate_split(run: Run, split: str, label: str, echo) -> tuple[dict, list[dict]]:
    return run_evaluation(
        run.model,
        run.eval_loaders[split],
        run.task,
        run.accelerator,
        run.splits[split],
        run.features[split],
        run.recipe.metrics,
        echo,
        label,
    )


# ---------------------------------------------------------------------------------------------- finish


def finish(run: Run, state: TrainingState) -> TrainResult:
    """The best (or last) weights evaluated on validation and test; the model, predictions, plots and metrics.json
    written (metrics.json last: its presence marks a finished run)."""
    accelerator, evaluation, say = run.accelerator, run.recipe.evaluation, run.say
    seconds = (run.clock.wall(), run.clock.training())
    run.progress.close()
    if checkpoints.should_stop(evaluation, state):
        say(
            f"early stopping at step {state.step}: {evaluation.metric_for_best} has not improved for "
            f"{evaluation.early_stopping_patience} evaluation(s)"
        )
    if run.stop_requested:
        say(f"stopped at step {state.step} of {run.total_steps}, as asked after the validation (a sweep's pruner)")
    if state.best_step is not None and state.best_step != state.step:  # the saved model is the best one
        best = run.run_dir / checkpoints.CHECKPOINTS_DIR / f"step-{state.best_step}"
        unwrapped = accelerator.unwrap_model(run.model, keep_torch_compile=False)
        checkpoints.load_weights(best, unwrapped, accelerator)
        run.last_validation = None
        say(f"using the best checkpoint: step {state.best_step}, {evaluation.metric_for_best}={state.best_value:.4f}")
    results = {"train": training_summary(run, state, *seconds)}
    say("throughput: " + speed.describe(results["train"]))
    predictions = None
    for split in run.eval_loaders:  # test last, so predictions.jsonl holds the test split when there is one
        if split == "validation" and run.last_validation and run.last_validation[0] == state.step:
            metrics, predictions = run.last_validation[1:]
        else:
            metrics, predictions = evaluate_split(run, split, split, say)
            run.log.write({"step": state.step, "split": split, **metrics})
        results[split] = metrics
    run.log.close()
    # Under FSDP or ZeRO every process takes part in gathering the whole weights, which the main process saves.
    whole = None
    if zero.engaged(accelerator):
        whole = zero.saved_state_dict(accelerator, run.model)
    elif checkpoints.sharded(accelerator):
        whole = accelerator.get_state_dict(run.model)
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(run.model, keep_torch_compile=False)
        save_model(unwrapped, run.tokenizer, run.run_dir, run.recipe, whole)
        if predictions is not None:
            runs.write_jsonl(run.run_dir / runs.PREDICTIONS_FILE, predictions)
        plots.save_plots(run.run_dir)
        runs.write_json(run.run_dir / runs.METRICS_FILE, results)
    tracking.finish(accelerator)
    accelerator.wait_for_everyone()
    for split in ("validation", "test"):
        if split in results:
            say(f"{split}: " + format_metrics(results[split]))
    say(f"run saved to {run.run_dir}")
    return TrainResult(run.run_dir, results)


def training_summary(run: Run, state: TrainingState, wall_seconds: float, train_seconds: float) -> dict:
    """metrics.json's "train" entry: steps, epochs, time (with and without evaluations and checkpoints) and the
    throughput figures, all processes counted."""
    accelerator, throughput = run.accelerator, run.throughput
    counts = [float(throughput.tokens), float(throughput.target_tokens), float(throughput.padded_tokens)]
    counts = accelerator.reduce(torch.tensor(counts, device=accelerator.device), "sum")
    throughput.tokens, throughput.target_tokens, throughput.padded_tokens = (int(count) for count in counts)
    examples = state.examples_seen - run.examples_at_start
    peak = speed.matmul_peak_flops(accelerator.device)
    return {
        "steps": state.step,
        "epochs": round(state.step / run.steps_per_epoch, 4),
        "examples": state.examples_seen,
        "runtime_s": round(wall_seconds, 2),
        **throughput.summary(examples, train_seconds, speed.flops_per_token(run.model), peak),
        **tracking.peak_memory(),
        **({"augmented_rows": run.augmented} if run.augmented else {}),
    }


def save_model(model, tokenizer, run_dir: Path, recipe: Recipe, state_dict: dict | None = None) -> None:
    """Save as plain transformers / peft files (safetensors); `state_dict`: the whole weights of a sharded model."""
    options = {}
    if hasattr(model, "peft_config"):
        # Point the adapter at the hub id, not this machine's cache path, so it loads anywhere.
        for config in model.peft_config.values():
            config.base_model_name_or_path = recipe.model.name
        # llmtune never resizes the vocabulary: no hub lookup (and two peft warnings offline) to ask whether it did.
        options["save_embedding_layers"] = False
    model.save_pretrained(run_dir, safe_serialization=True, state_dict=state_dict, **options)
    tokenizer.save_pretrained(run_dir)
