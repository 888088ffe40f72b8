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
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader

from ..common import runs
from ..common.errors import Interrupted, PeerLost, UserError
from ..common.silence import quiet_libraries
from ..inference import devices, evaluation
from ..recipe import Recipe, dump_recipe
from ..reports import plots
from ..tasks.base import Task
from . import allocator, checkpoints, components, launch, memory, speed, tracking
from .batches import LengthGroupedBatches
from .checkpoints import TrainingState
from .preparation import Prepared, check_warmup, count_steps, prepare
from .progress import Clock, Progress, RunLog


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
        resume: continue from the run directory's newest complete checkpoint (True), or from this run or checkpoint.
        on_validation: called (in every process) after each validation with (step, metrics); returning True stops
            training there and the run finishes as usual (a sweep's pruner uses it).

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
    with checkpoints.StopSignals(announce=launch.is_first_process()) as stop:
        run, state = setup(prepared, run_dir, resume, explicit_checkpoint, stop, echo)
        run.on_validation = on_validation
        with writing(run, state):
            state = fit(run, state)
            result = finish(run, state)
    del run, state  # the model, optimizer, batches and accelerator: nothing of them outlives the call
    devices.release()
    return result


# ---------------------------------------------------------------------------------------------- setup


@dataclass(kw_only=True)
class Run:
    """What `fit` and `finish` work with, built by `setup` (by keyword: 27 fields are too many to wire by position)."""

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
    log: RunLog | None = None  # opened by `writing`, with the run directory
    last_validation: tuple | None = None  # (step, metrics, prediction rows) of the newest validation
    on_validation: Callable[[int, dict], bool] | None = None  # the caller's hook; True asks training to stop
    stop_requested: bool = False  # on_validation asked to stop
    augmented: dict = dataclasses.field(default_factory=dict)  # rows data.augment added, by method
    leakage: dict = dataclasses.field(default_factory=dict)  # prepare's leakage audit: metrics.json's "leakage"

    @functools.cached_property
    def encoder_decoder(self) -> bool:
        return bool(getattr(self.accelerator.unwrap_model(self.model).config, "is_encoder_decoder", False))


def setup(
    prepared: Prepared, run_dir: Path, resume, explicit_checkpoint: Path | None, stop, echo
) -> tuple[Run, TrainingState]:
    """The model with its adapter, batches, optimizer, schedule and training state (a checkpoint's when resuming)."""
    recipe, cfg = prepared.recipe, prepared.recipe.training
    accelerator = components.training_accelerator(prepared, run_dir)
    say = echo if accelerator.is_main_process and echo is not None else (lambda *args, **kwargs: None)
    resume_from = components.resume_point(recipe, run_dir, explicit_checkpoint) if resume else None
    augmented = components.augment_train(prepared, accelerator, say)
    set_seed(cfg.seed)  # a newly initialised head starts from the recipe's seed
    model, new_modules = components.load_model(prepared, say)
    features, sampler, train_loader, eval_loaders = components.make_batches(prepared, accelerator)
    optimizer = components.make_optimizer(components.parameter_groups(model, cfg, new_modules), cfg)
    model, optimizer, train_loader = components.prepare_for_training(accelerator, model, optimizer, train_loader, cfg)
    steps_per_epoch, total_steps = count_steps(len(train_loader), cfg)
    scheduler = components.make_scheduler(optimizer, cfg, total_steps)
    state, pending_rng = components.starting_state(resume_from, accelerator, model, optimizer, scheduler, say)
    if cfg.max_tokens:  # a token budget's steps are known once the data is tokenized; prepare checked the others
        check_warmup(cfg, total_steps)
    progress = Progress(total_steps, enabled=accelerator.is_main_process and echo is not None, echo=say)
    run = Run(
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
        say=say,
        stop=stop,
        pending_rng=pending_rng,
        examples_at_start=state.examples_seen,
        resumed=resume_from is not None,
        augmented=augmented,
        leakage={name: pair.as_dict() for name, pair in prepared.leakage.items()},
    )
    say(components.training_line(run))
    return run, state


@contextlib.contextmanager
def writing(run: Run, state: TrainingState):
    """The run directory opened for this run (runs.transaction), with its log and trackers. A process group that
    failed (a peer crashed or hung) ends the run as a signal does, resumable from its checkpoints (PeerLost).

    Raises:
        UserError: the disk filled up (or the directory stopped being writable) while writing.
    """
    main = run.accelerator.is_main_process

    def stays(error: BaseException) -> bool:
        return isinstance(error, (Interrupted, PeerLost)) or memory.resumable(error, run.run_dir, run.resumed, main)

    try:
        with runs.transaction(
            run.run_dir,
            dump_recipe(run.recipe),
            resumed=run.resumed,
            step=state.step,
            main=main,
            stays=stays,
            before_cleanup=lambda: run.log is not None and run.log.close(),
        ):
            run.log = RunLog(run.run_dir, run.accelerator)
            tracking.start(run.accelerator, run.recipe.model_dump(mode="json"))
            try:
                yield
            except BaseException as error:
                if checkpoints.collective_failed(error, run.accelerator.num_processes):
                    if main:
                        run.log.close()
                    raise PeerLost(state.step, error) from None
                raise
    except torch.OutOfMemoryError as error:
        run.log.close()
        kept = memory.resumable(error, run.run_dir, run.resumed, main)
        raise memory.out_of_memory(run.recipe, run.accelerator, state.step, kept) from None


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

    Checked where the loss is read anyway, at logging steps and before each checkpoint, so a run stops at most
    log_every_n_steps - 1 steps after its loss diverged: reading the loss every step would make the host wait for
    the GPU every step.

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
        run.progress.note(f"step {state.step}: validation " + evaluation.format_metrics(metrics))
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
    loader, examples, features = run.eval_loaders[split], run.splits[split], run.features[split]
    return evaluation.run_evaluation(
        run.model, loader, run.task, run.accelerator, examples, features, run.recipe.metrics, echo, label
    )


# ---------------------------------------------------------------------------------------------- finish


def finish(run: Run, state: TrainingState) -> TrainResult:
    """The best (or last) weights evaluated on validation and test; the model, predictions, plots and metrics.json
    written (metrics.json last: its presence marks a finished run)."""
    accelerator, best_options, say = run.accelerator, run.recipe.evaluation, run.say
    seconds = (run.clock.wall(), run.clock.training())
    run.progress.close()
    if checkpoints.should_stop(best_options, state):
        say(
            f"early stopping at step {state.step}: {best_options.metric_for_best} has not improved for "
            f"{best_options.early_stopping_patience} evaluation(s)"
        )
    if run.stop_requested:
        say(f"stopped at step {state.step} of {run.total_steps}, as asked after the validation (a sweep's pruner)")
    if state.best_step is not None and state.best_step != state.step:  # the saved model is the best one
        best = run.run_dir / checkpoints.CHECKPOINTS_DIR / f"step-{state.best_step}"
        unwrapped = accelerator.unwrap_model(run.model, keep_torch_compile=False)
        checkpoints.load_weights(best, unwrapped, accelerator)
        run.last_validation = None
        say(f"using the best checkpoint: step {state.best_step}, {best_options.metric_for_best}={state.best_value:.4f}")
    results = {"train": training_summary(run, state, *seconds), **({"leakage": run.leakage} if run.leakage else {})}
    say("throughput: " + speed.describe(results["train"]))
    predictions = None
    for split in run.eval_loaders:  # test last, so predictions.jsonl holds the test split when there is one
        if split == "validation" and run.last_validation and run.last_validation[0] == state.step:
            metrics, predictions = run.last_validation[1:]
        else:
            metrics, predictions = evaluate_split(run, split, split, say)
            run.log.write({"step": state.step, "split": split, **metrics})
        if split == "validation" and components.tune(run, predictions):  # scored again with what it settled
            metrics, predictions = evaluate_split(run, split, split, say)
        results[split] = metrics
    run.log.close()
    whole = components.whole_weights(accelerator, run.model)
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(run.model, keep_torch_compile=False)
        components.save_model(unwrapped, run.tokenizer, run.run_dir, run.recipe, whole)
        if predictions is not None:
            runs.write_jsonl(run.run_dir / runs.PREDICTIONS_FILE, predictions)
        plots.save_plots(run.run_dir)
        runs.write_json(run.run_dir / runs.METRICS_FILE, results)
    tracking.finish(accelerator)
    accelerator.wait_for_everyone()
    for split in ("validation", "test"):
        if split in results:
            say(f"{split}: " + evaluation.format_metrics(results[split]))
    say(f"run saved to {run.run_dir}")
    return TrainResult(run.run_dir, results)


def training_summary(run: Run, state: TrainingState, wall_seconds: float, train_seconds: float) -> dict:
    """metrics.json's "train" entry: steps, epochs, times and the throughput figures, all processes counted."""
    accelerator, throughput = run.accelerator, run.throughput
    throughput.reduce(accelerator)
    examples = state.examples_seen - run.examples_at_start
    peak = speed.matmul_peak_flops(accelerator.device)
    return {
        "steps": state.step,
        "epochs": round(state.step / run.steps_per_epoch, 4),
        "examples": state.examples_seen,
        "runtime_s": round(wall_seconds, 2),
        "precision": devices.precision_label(run.recipe.training.precision, accelerator.mixed_precision),
        **throughput.summary(examples, train_seconds, speed.flops_per_token(run.model), peak),
        **tracking.peak_memory(),
        **({"augmented_rows": run.augmented} if run.augmented else {}),
    }
