"""The training loop: one Accelerate loop for every task, on CPU, one GPU or many.

    train(recipe) = prepare  every check of the recipe, data, model config and tokenizer; nothing heavy
                    setup    the model (and adapter), batches, optimizer and schedule; the run directory
                    fit      the loop: forward, backward, step, log, evaluate, checkpoint
                    finish   the final evaluations, the saved model, predictions, plots and metrics.json

The loop works with a `Session` (session.py: the run's components and this session's bookkeeping) and changes
one `TrainingState` (state.py), which is what a checkpoint saves with the weights, the optimizer and the
schedule, so a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..common import runs
from ..common.errors import Interrupted, PeerLost, UserError
from ..common.silence import quiet_libraries
from ..inference import devices, evaluation
from ..recipe import Recipe, dump_recipe
from ..reports import plots
from . import allocator, builders, checkpoints, launch, memory, saving, speed, tracking
from .interruptions import StopSignals, collective_failed
from .preparation import prepare
from .progress import RunLog
from .session import Session
from .state import TrainingState, checkpoint_due, should_stop, update_best


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
    with StopSignals(announce=launch.is_first_process()) as stop:
        session, state = builders.setup(prepared, run_dir, resume, explicit_checkpoint, stop, echo)
        session.on_validation = on_validation
        with writing(session, state):
            state = fit(session, state)
            result = finish(session, state)
    del session, state  # the model, optimizer, batches and accelerator: nothing of them outlives the call
    devices.release()
    return result


@contextlib.contextmanager
def writing(session: Session, state: TrainingState):
    """The run directory opened for this run (runs.transaction), with its log and trackers. A process group that
    failed (a peer crashed or hung) ends the run as a signal does, resumable from its checkpoints (PeerLost).

    Raises:
        UserError: the disk filled up (or the directory stopped being writable) while writing.
    """
    main = session.accelerator.is_main_process

    def stays(error: BaseException) -> bool:
        return isinstance(error, (Interrupted, PeerLost)) or memory.resumable(
            error, session.run_dir, session.resumed, main
        )

    try:
        with runs.transaction(
            session.run_dir,
            dump_recipe(session.recipe),
            resumed=session.resumed,
            step=state.step,
            main=main,
            stays=stays,
            before_cleanup=lambda: session.log is not None and session.log.close(),
        ):
            session.log = RunLog(session.run_dir, session.accelerator)
            tracking.start(session.accelerator, session.recipe.model_dump(mode="json"))
            try:
                yield
            except BaseException as error:
                if collective_failed(error, session.accelerator.num_processes):
                    if main:
                        session.log.close()
                    raise PeerLost(state.step, error) from None
                raise
    except torch.OutOfMemoryError as error:
        session.log.close()
        kept = memory.resumable(error, session.run_dir, session.resumed, main)
        raise memory.out_of_memory(session.recipe, session.accelerator, state.step, kept) from None


# ---------------------------------------------------------------------------------------------- fit


def fit(session: Session, state: TrainingState) -> TrainingState:
    """The loop: forward, backward, step, log, evaluate, checkpoint, until the step budget or early stopping."""
    session.model.train()
    while state.step < session.total_steps and not stopping(session, state):
        for batch in epoch_batches(session, state):
            loss, grad_norm = train_step(session, batch)
            state.add_batch(loss, len(batch["index"]), session.accelerator.num_processes)
            if not session.accelerator.sync_gradients:
                continue  # accumulating gradients: not an optimizer step yet
            state.step += 1
            if state.step % session.recipe.training.log_every_n_steps == 0 or state.step == session.total_steps:
                log_training(session, state, grad_norm)
            improved = validate_if_due(session, state)
            checkpoint_if_due(session, state, improved)
            if state.step >= session.total_steps or stopping(session, state):
                break
        state.start_epoch()
    return state


def stopping(session: Session, state: TrainingState) -> bool:
    """Early stopping (evaluation.early_stopping_patience), or the caller's on_validation asked to stop."""
    return session.stop_requested or should_stop(session.recipe.evaluation, state)


def epoch_batches(session: Session, state: TrainingState):
    """The current epoch's training batches, after those a resumed run already trained on."""
    session.train_loader.set_epoch(state.epoch)  # Accelerate passes it on to the sampler, with one process
    session.sampler.set_epoch(state.epoch)
    session.sampler.skip = state.batches_done
    # The RNG states go back where the checkpoint took them: starting the loader draws from the RNG, which the
    # uninterrupted run did at the start of the epoch, not in its middle.
    if not session.sampler.skip:
        restore_rng(session)
    for batch in session.train_loader:
        restore_rng(session)
        yield batch


def restore_rng(session: Session) -> None:
    if session.pending_rng is not None:
        checkpoints.restore_rng(session.pending_rng)
        session.pending_rng = None


def train_step(session: Session, batch: dict):
    """Forward and backward of one batch; at the end of an accumulation, clip, step and schedule.
    Returns the batch's loss and the gradient norm before clipping (None when not clipped)."""
    accelerator, training = session.accelerator, session.recipe.training
    session.throughput.add(batch, session.encoder_decoder)
    grad_norm = None
    with accelerator.accumulate(session.model):
        loss = session.task.loss(session.model, batch)
        accelerator.backward(loss)
        if accelerator.sync_gradients and training.max_grad_norm:
            grad_norm = accelerator.clip_grad_norm_(session.model.parameters(), training.max_grad_norm)
        session.optimizer.step()
        session.optimizer.zero_grad(set_to_none=True)
    if accelerator.sync_gradients and not accelerator.optimizer_step_was_skipped:
        session.scheduler.step()
    return loss.detach(), grad_norm


def log_training(session: Session, state: TrainingState, grad_norm) -> None:
    """A log entry of the mean training loss since the last one, averaged over processes."""
    mean_loss = session.accelerator.reduce(state.window_loss, "mean").item() / state.window_batches
    check_finite(session, state, mean_loss)
    samples_per_s = (state.examples_seen - session.examples_at_start) / max(session.clock.training(), 1e-9)
    epoch = round(state.epoch + (state.step - state.epoch * session.steps_per_epoch) / session.steps_per_epoch, 4)
    entry = {
        "step": state.step,
        "epoch": epoch,
        "loss": mean_loss,
        "learning_rate": session.scheduler.get_last_lr()[0],
        "samples_per_s": samples_per_s,
    }
    if grad_norm is not None:
        entry["grad_norm"] = float(grad_norm)
    session.log.write(entry)
    session.progress.update(state.step, mean_loss, samples_per_s)
    state.window_loss, state.window_batches = torch.zeros((), device=session.accelerator.device), 0


def check_finite(session: Session, state: TrainingState, loss: float) -> None:
    """Stop a run whose loss became NaN or infinite, before it writes a checkpoint or a model of such weights.

    Checked where the loss is read anyway, at logging steps and before each checkpoint, so a run stops at most
    log_every_n_steps - 1 steps after its loss diverged: reading the loss every step would make the host wait for
    the GPU every step.

    Raises:
        UserError: the step, the last finite loss, and what usually causes it.
    """
    if math.isfinite(loss):
        session.last_finite_loss = loss
        return
    last = f"{session.last_finite_loss:.4f}" if session.last_finite_loss is not None else "none logged yet"
    training = session.recipe.training
    raise UserError(
        f"training diverged at step {state.step}: the training loss is {loss} (last finite loss: {last}); nothing "
        f"was saved after the last checkpoint. Lower training.learning_rate (now {training.learning_rate:g}), add "
        f"warmup, or train in fp32 (training.precision, now {training.precision})"
    )


def validate_if_due(session: Session, state: TrainingState) -> bool:
    """Evaluate on validation every evaluation.every_n_steps (default: each epoch) and at the last step;
    True when the result is the best so far (evaluation.metric_for_best)."""
    every = session.recipe.evaluation.every_n_steps or session.steps_per_epoch
    if "validation" not in session.eval_loaders or not (state.step % every == 0 or state.step == session.total_steps):
        return False
    with session.clock.paused():
        metrics, predictions = evaluate_split(
            session, "validation", f"step {state.step}: validation", session.progress.note
        )
        session.last_validation = (state.step, metrics, predictions)
        session.log.write({"step": state.step, "split": "validation", **metrics})
        session.progress.note(f"step {state.step}: validation " + evaluation.format_metrics(metrics))
    improved = update_best(session.recipe.evaluation, state, metrics)
    if session.on_validation is not None and session.on_validation(state.step, metrics):
        session.stop_requested = True
    return improved


def checkpoint_if_due(session: Session, state: TrainingState, improved: bool) -> None:
    """A checkpoint when the recipe asks for one, when validation improved, or when a signal asks to stop
    (then raising Interrupted, after the checkpoint)."""
    epoch_done = session.accelerator.gradient_state.end_of_dataloader
    signum = session.stop.requested(session.accelerator)
    if not (checkpoint_due(session.recipe, state.step, epoch_done) or signum or improved):
        return
    if state.window_batches:  # weights that diverged since the last log line are not worth keeping
        check_finite(
            session, state, session.accelerator.reduce(state.window_loss, "mean").item() / state.window_batches
        )
    # A checkpoint at an epoch's end resumes at the start of the next.
    position = dataclasses.replace(state, epoch=state.epoch + 1, batches_done=0) if epoch_done else state
    with session.clock.paused():
        saved = checkpoints.save(
            session.run_dir,
            session.accelerator,
            session.model,
            session.optimizer,
            session.scheduler,
            position,
            session.recipe.checkpointing.keep_last,
        )
    if signum:
        raise Interrupted(signum, state.step, saved)


def evaluate_split(session: Session, split: str, label: str, echo) -> tuple[dict, list[dict]]:
    loader, examples, features = session.eval_loaders[split], session.splits[split], session.features[split]
    return evaluation.run_evaluation(
        session.model,
        loader,
        session.task,
        session.accelerator,
        examples,
        features,
        session.recipe.metrics,
        echo,
        label,
    )


# ---------------------------------------------------------------------------------------------- finish


def finish(session: Session, state: TrainingState) -> TrainResult:
    """The best (or last) weights evaluated on validation and test; the model, predictions, plots and metrics.json
    written (metrics.json last: its presence marks a finished run)."""
    accelerator, best_options, echo = session.accelerator, session.recipe.evaluation, session.echo
    seconds = (session.clock.wall(), session.clock.training())
    session.progress.close()
    if should_stop(best_options, state):
        echo(
            f"early stopping at step {state.step}: {best_options.metric_for_best} has not improved for "
            f"{best_options.early_stopping_patience} evaluation(s)"
        )
    if session.stop_requested:
        echo(f"stopped at step {state.step} of {session.total_steps}, as asked after the validation (a sweep's pruner)")
    if state.best_step is not None and state.best_step != state.step:  # the saved model is the best one
        best = session.run_dir / checkpoints.CHECKPOINTS_DIR / f"step-{state.best_step}"
        unwrapped = accelerator.unwrap_model(session.model, keep_torch_compile=False)
        checkpoints.load_weights(best, unwrapped, accelerator)
        session.last_validation = None
        echo(
            f"using the best checkpoint: step {state.best_step}, {best_options.metric_for_best}={state.best_value:.4f}"
        )
    results = {
        "train": training_summary(session, state, *seconds),
        **({"leakage": session.leakage} if session.leakage else {}),
    }
    echo("throughput: " + speed.describe(results["train"]))
    predictions = None
    for split in session.eval_loaders:  # test last, so predictions.jsonl holds the test split when there is one
        if split == "validation" and session.last_validation and session.last_validation[0] == state.step:
            metrics, predictions = session.last_validation[1:]
        else:
            metrics, predictions = evaluate_split(session, split, split, echo)
            session.log.write({"step": state.step, "split": split, **metrics})
        if split == "validation" and tune(session, predictions):  # scored again with what it settled
            metrics, predictions = evaluate_split(session, split, split, echo)
        results[split] = metrics
    session.log.close()
    whole = saving.whole_weights(accelerator, session.model)
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(session.model, keep_torch_compile=False)
        saving.save_model(unwrapped, session.tokenizer, session.run_dir, session.recipe, whole)
        if predictions is not None:
            runs.write_jsonl(session.run_dir / runs.PREDICTIONS_FILE, predictions)
        plots.save_plots(session.run_dir)
        runs.write_json(session.run_dir / runs.METRICS_FILE, results)
    tracking.finish(accelerator)
    accelerator.wait_for_everyone()
    for split in ("validation", "test"):
        if split in results:
            echo(f"{split}: " + evaluation.format_metrics(results[split]))
    echo(f"run saved to {session.run_dir}")
    return TrainResult(session.run_dir, results)


def tune(session: Session, rows: list[dict]) -> bool:
    """The task's after-training step (`Task.tune`) on the validation split's prediction rows; what it settled goes
    into the run's recipe, in memory and in the run directory, so every later load applies it."""
    settled = session.task.tune(rows)
    if settled is None:
        return False
    session.recipe = session.recipe.model_copy(update={"task": session.task.resolved_options()})
    if session.accelerator.is_main_process:
        runs.write_atomic(session.run_dir / runs.RECIPE_FILE, dump_recipe(session.recipe))
    session.echo(settled)
    return True


def training_summary(session: Session, state: TrainingState, wall_seconds: float, train_seconds: float) -> dict:
    """metrics.json's "train" entry: steps, epochs, times and the throughput figures, all processes counted."""
    accelerator, throughput = session.accelerator, session.throughput
    throughput.reduce(accelerator)
    examples = state.examples_seen - session.examples_at_start
    peak = speed.matmul_peak_flops(accelerator.device)
    return {
        "steps": state.step,
        "epochs": round(state.step / session.steps_per_epoch, 4),
        "examples": state.examples_seen,
        "runtime_s": round(wall_seconds, 2),
        "precision": devices.precision_label(session.recipe.training.precision, accelerator.mixed_precision),
        **throughput.summary(examples, train_seconds, speed.flops_per_token(session.model), peak),
        **tracking.peak_memory(),
        **({"augmented_rows": session.augmented} if session.augmented else {}),
    }
