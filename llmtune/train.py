"""The training loop: one Accelerate loop for every task, on CPU, one GPU or many."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object, send_to_device, set_seed
from torch.utils.data import DataLoader
from transformers import get_scheduler

from . import checkpoints, data, models, plots, runs, speed, tasks, tracking
from .batching import LengthGroupedBatches, PadCollator, SortedBatches
from .errors import UserError
from .quiet import quiet_libraries
from .recipe import Recipe, dump_recipe


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict  # per split: {"validation": {...}, "test": {...}, "train": {...}}


def mixed_precision(precision: str) -> str:
    """Accelerate's mixed_precision for the recipe's `training.precision`."""
    if precision == "fp32":
        return "no"
    if precision == "fp16" and not torch.cuda.is_available():
        raise UserError(
            "training.precision: fp16 needs a GPU and none is available; use auto or fp32 (bf16 runs on CPU, but slowly)"
        )
    if precision in ("bf16", "fp16"):
        return precision
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"  # bf16 on CPU is far slower than fp32


def parameter_groups(model, training, new_modules: list[str]) -> list[dict]:
    """AdamW groups: no weight decay on biases and norms; the newly initialised head at its own learning rate if asked."""
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
            groups.setdefault(key, []).append(param)
    return [{"params": params, "lr": lr, "weight_decay": decay} for (lr, decay), params in groups.items()]


def model_features(features, task):
    """The columns batches are made of; tasks keep decoding metadata (e.g. QA offsets) out of the model's way."""
    return features.remove_columns(list(task.metadata_columns)) if task.metadata_columns else features


def eval_loader(features, task, training, collate, accelerator: Accelerator) -> DataLoader:
    """This process's share of the evaluation batches (not passed to `accelerator.prepare`: see run_evaluation).

    `training` is the recipe's training section: eval_batch_size, else twice the training batch (in
    examples, or in tokens with max_tokens).
    """
    size = training.eval_batch_size or (None if training.max_tokens else 2 * training.batch_size)
    budget = 2 * training.max_tokens if size is None else None
    batches = SortedBatches(
        features["length"], size, accelerator.num_processes, accelerator.process_index, max_tokens=budget
    )
    return DataLoader(
        model_features(features, task),
        batch_sampler=batches,
        collate_fn=collate,
        pin_memory=accelerator.device.type == "cuda",
    )


EVAL_PROGRESS_EVERY_S = 30


def run_evaluation(
    model, loader, task, accelerator: Accelerator, dataset, features, metric_names, echo=None, label: str = "evaluating"
) -> tuple[dict, list[dict]]:
    """Metrics and predictions over a whole split; every example counted once, whatever the process count.

    Each process evaluates its own batches and the per-example outputs are gathered once at the end.
    (Accelerate's sharding pads uneven shards with repeated examples, and `gather_for_metrics` cannot
    drop them for batch samplers with varying batch sizes such as ours.)
    `echo`, on the main process: a progress line every EVAL_PROGRESS_EVERY_S (generating a test split can take many minutes).
    """
    started = last_line = time.perf_counter()
    total, done = len(loader.batch_sampler), 0
    model.eval()
    outputs = []
    with torch.inference_mode():
        for number, batch in enumerate(loader, 1):
            result = task.eval_step(model, send_to_device(batch, accelerator.device))
            outputs.append({key: value.detach().cpu() for key, value in result.items()})
            done += len(batch["input_ids"])
            now = time.perf_counter()
            if (
                echo is not None
                and accelerator.is_main_process
                and now - last_line >= EVAL_PROGRESS_EVERY_S
                and number < total
            ):
                last_line, elapsed = now, now - started
                echo(
                    f"{label}: batch {number}/{total} ({done:,} examples)  elapsed {elapsed:.0f}s  eta {elapsed / number * (total - number):.0f}s"
                )
    model.train()
    accumulator = task.new_accumulator(metric_names)
    for result in gather_object(outputs) if accelerator.num_processes > 1 else outputs:
        accumulator.add(result)
    metrics, predictions = accumulator.result(dataset, features)
    return {**metrics, "runtime_s": round(time.perf_counter() - started, 2)}, predictions


@quiet_libraries
def train(
    recipe: Recipe,
    output_dir: str | Path | None = None,
    overwrite: bool = False,
    echo=None,
    resume: bool | str | Path = False,
) -> TrainResult:
    """Fine-tune as the recipe says and write the run directory.

    Every recipe and data problem is found before the model is loaded and before anything is written.
    Silent unless `echo` is given (e.g. `echo=print`): progress and summary lines go to it.
    SIGINT / SIGTERM stop training after the current step with a checkpoint (raising Interrupted).

    Args:
        resume: continue from the newest complete checkpoint of the run directory (True), or from the
            run directory or checkpoint at this path.

    Raises:
        UserError: bad recipe, data, model or output directory; nothing to resume, or a recipe that
            differs from the resumed run's.
        checkpoints.Interrupted: stopped by a signal; a checkpoint was saved.
    """
    with checkpoints.StopSignals(announce=os.environ.get("RANK", "0") == "0") as stop:
        return _train(recipe, output_dir, overwrite, echo, resume, stop)


def _train(recipe: Recipe, output_dir, overwrite: bool, echo, resume, stop: checkpoints.StopSignals) -> TrainResult:
    run_dir = Path(output_dir or recipe.output_dir)
    explicit_checkpoint = None
    if resume:
        run_dir, explicit_checkpoint = checkpoints.resume_target(resume, run_dir)
    else:
        runs.check_output_dir(run_dir, overwrite)
    precision = mixed_precision(recipe.training.precision)
    tracking.check_installed(recipe.tracking)
    if recipe.data.train is None:
        raise UserError("data.train: missing; training needs a train split")
    task = tasks.create(recipe.task)
    splits = data.load_splits(recipe.data)
    task.prepare(splits, recipe.data)
    checkpoint = models.resolve_checkpoint(recipe.model)
    decoder = models.resolve_decoder(recipe.model)
    if "label_names" in type(recipe.task).model_fields:  # saved with the run, so eval/predict need no data to know them
        recipe = recipe.model_copy(update={"task": recipe.task.model_copy(update={"label_names": task.label_names})})
    cfg = recipe.training
    if recipe.evaluation.metric_for_best and "validation" not in splits:
        raise UserError("evaluation.metric_for_best: needs data.validation, the split the best checkpoint is chosen on")

    # Accelerate sets up several CPU processes (gloo) only when told to use the CPU.
    launched_cpu_processes = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    accelerator = Accelerator(
        mixed_precision=precision,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        cpu=launched_cpu_processes,
        **tracking.accelerator_options(recipe.tracking, run_dir),
    )
    say = echo if accelerator.is_main_process and echo is not None else (lambda *args, **kwargs: None)
    resume_from = None
    if resume:
        checkpoints.check_same_recipe(run_dir, recipe)
        resume_from = checkpoints.find_resumable(run_dir, explicit_checkpoint, say)
    set_seed(cfg.seed)
    tokenizer = models.load_tokenizer(checkpoint, recipe.model.trust_remote_code)
    task.setup(models.load_config(checkpoint, recipe.model.trust_remote_code), tokenizer)
    say(
        f"model: {checkpoint.name} ({checkpoint.origin})"
        + (f", decoder warm-started from {decoder.name} ({decoder.origin})" if decoder else "")
    )
    model, new_modules = models.load_model(
        checkpoint,
        task.auto_class,
        recipe.model.trust_remote_code,
        tokenizer.pad_token_id,
        decoder=decoder,
        **task.model_kwargs(),
    )
    model = models.apply_method(model, recipe.method, task.peft_task_type, new_modules)
    trainable, total = models.count_parameters(model)
    say(
        f"method: {recipe.method.type}, training {trainable:,} of {total:,} parameters ({100 * trainable / total:.2f}%)"
    )

    max_length = min(cfg.max_length, getattr(model.config, "max_position_embeddings", None) or cfg.max_length)
    with accelerator.main_process_first():
        features = {split: task.preprocess(dataset, tokenizer, max_length) for split, dataset in splits.items()}
    collate = PadCollator(tokenizer.pad_token_id, tokenizer.padding_side)
    sampler = LengthGroupedBatches(
        features["train"]["length"], None if cfg.max_tokens else cfg.batch_size, cfg.seed, max_tokens=cfg.max_tokens
    )
    on_gpu = accelerator.device.type == "cuda"
    train_loader = DataLoader(
        model_features(features["train"], task), batch_sampler=sampler, collate_fn=collate, pin_memory=on_gpu
    )
    eval_loaders = {
        split: eval_loader(features[split], task, cfg, collate, accelerator)
        for split in ("validation", "test")
        if split in features
    }

    if on_gpu:  # TF32 matmuls: fp32 parameters and optimizer, tensor-core speed (Ampere and newer)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    # The fused kernel updates every tensor in one pass: on CPU 5x faster than the multi-tensor (foreach)
    # path for MiniLM (49 vs 277 ms a step), which is a quarter of a step on short sentences.
    optimizer = torch.optim.AdamW(parameter_groups(model, cfg, new_modules), lr=cfg.learning_rate, fused=True)
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    if cfg.compile:
        model = torch.compile(model)
    flops_parameters = speed.non_embedding_parameters(model)
    peak_flops = speed.matmul_peak_flops(accelerator.device)
    throughput = speed.Throughput()
    steps_per_epoch = math.ceil(len(train_loader) / cfg.gradient_accumulation_steps)
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else math.ceil(cfg.warmup_ratio * total_steps)
    scheduler = get_scheduler(cfg.scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
    eval_every = recipe.evaluation.every_n_steps or steps_per_epoch
    state, process_state = checkpoints.TrainingState(), None
    if resume_from is not None:
        state, process_state = checkpoints.load(resume_from, accelerator, model, optimizer)
        scheduler.load_state_dict(state.scheduler)
        say(f"resuming from {resume_from} (step {state.step})")
    best = checkpoints.BestCheckpoint(recipe.evaluation, state.best)

    if accelerator.is_main_process:
        if resume_from is None:
            runs.clear_output_dir(run_dir)
        else:
            checkpoints.remove_leftovers(run_dir)
            runs.reopen_run(run_dir, state.step)
        runs.write_atomic(run_dir / runs.RECIPE_FILE, dump_recipe(recipe))
    tracking.start(accelerator, recipe.model_dump(mode="json"))
    log_file = open(run_dir / runs.LOG_FILE, "a", encoding="utf-8") if accelerator.is_main_process else None

    def log(entry: dict) -> None:
        if log_file:
            log_file.write(json.dumps(entry) + "\n")
            log_file.flush()
        accelerator.log(tracking.scalars(entry), step=entry["step"])

    per_step = (
        f"{cfg.max_tokens * cfg.gradient_accumulation_steps * accelerator.num_processes:,} tokens"
        if cfg.max_tokens
        else f"{cfg.batch_size * cfg.gradient_accumulation_steps * accelerator.num_processes} examples"
    )
    say(
        f"training: {len(splits['train']):,} examples, {total_steps:,} steps of {per_step}, "
        f"{accelerator.device}, {accelerator.num_processes} process(es), precision {accelerator.mixed_precision}"
    )
    progress = Progress(total_steps, enabled=accelerator.is_main_process and echo is not None, echo=say)
    history: dict[str, dict] = {}
    step, epoch, examples_seen, started = state.step, state.epoch, state.examples_seen, time.perf_counter()
    examples_before, paused = (
        examples_seen,
        0.0,
    )  # paused: seconds spent evaluating and checkpointing, left out of throughput
    window_loss, window_batches = torch.zeros((), device=accelerator.device), state.window_batches
    pending_rng = None
    if process_state is not None:
        window_loss += process_state["window_loss"].to(accelerator.device)
        pending_rng = process_state["rng"]
    model.train()
    while step < total_steps and not best.should_stop:
        train_loader.set_epoch(epoch)  # Accelerate passes it on to the sampler, with one process
        sampler.set_epoch(epoch)
        sampler.skip = batches_done = state.batches_done if epoch == state.epoch else 0
        # Restore the RNG states where the checkpoint took them: starting the loader draws from the RNG,
        # which the uninterrupted run did at the start of the epoch, not in its middle.
        if pending_rng is not None and not sampler.skip:
            checkpoints.restore_rng(pending_rng)
            pending_rng = None
        for batch in train_loader:
            if pending_rng is not None:
                checkpoints.restore_rng(pending_rng)
                pending_rng = None
            throughput.add(batch)
            with accelerator.accumulate(model):
                loss = task.loss(model, batch)
                accelerator.backward(loss)
                grad_norm = None
                if accelerator.sync_gradients and cfg.max_grad_norm:
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            window_loss += loss.detach()
            window_batches += 1
            batches_done += accelerator.num_processes
            examples_seen += len(batch["index"]) * accelerator.num_processes
            if not accelerator.sync_gradients:
                continue
            if not accelerator.optimizer_step_was_skipped:
                scheduler.step()
            step += 1
            if step % cfg.log_every_n_steps == 0 or step == total_steps:
                mean_loss = accelerator.reduce(window_loss, "mean").item() / window_batches
                elapsed = time.perf_counter() - started - paused
                entry = {
                    "step": step,
                    "epoch": round(epoch + (step - epoch * steps_per_epoch) / steps_per_epoch, 4),
                    "loss": mean_loss,
                    "learning_rate": scheduler.get_last_lr()[0],
                    "samples_per_s": (examples_seen - examples_before) / elapsed,
                }
                if grad_norm is not None:
                    entry["grad_norm"] = float(grad_norm)
                log(entry)
                progress.update(step, mean_loss, entry["samples_per_s"])
                window_loss, window_batches = torch.zeros((), device=accelerator.device), 0
            improved, pause_started = False, time.perf_counter()
            if "validation" in eval_loaders and (step % eval_every == 0 or step == total_steps):
                metrics, predictions = run_evaluation(
                    model,
                    eval_loaders["validation"],
                    task,
                    accelerator,
                    splits["validation"],
                    features["validation"],
                    recipe.metrics,
                    progress.note,
                    f"step {step}: validation",
                )
                history["validation"] = {"step": step, "metrics": metrics, "predictions": predictions}
                log({"step": step, "split": "validation", **metrics})
                progress.note(f"step {step}: validation " + format_metrics(metrics))
                improved = best.update(step, metrics)
            epoch_done = accelerator.gradient_state.end_of_dataloader
            signum = stop.requested(accelerator)
            if checkpoints.due(recipe, step, epoch_done) or signum or improved:
                position = (
                    {"epoch": epoch + 1, "batches_done": 0}
                    if epoch_done
                    else {"epoch": epoch, "batches_done": batches_done}
                )
                saved = checkpoints.save(
                    run_dir,
                    accelerator,
                    model,
                    optimizer,
                    checkpoints.TrainingState(
                        step=step,
                        **position,
                        examples_seen=examples_seen,
                        window_batches=window_batches,
                        best=best.state(),
                        scheduler=scheduler.state_dict(),
                        num_processes=accelerator.num_processes,
                    ),
                    window_loss,
                    recipe.checkpointing.keep_last,
                    best.step,
                )
                if signum:
                    raise checkpoints.Interrupted(signum, step, saved)
            paused += time.perf_counter() - pause_started
            if step >= total_steps or best.should_stop:
                break
        epoch += 1
    train_seconds = time.perf_counter() - started
    progress.close()
    if best.should_stop:
        say(f"early stopping at step {step}: {best.metric} has not improved for {best.patience} evaluation(s)")
    if best.enabled and best.step != step:  # the saved model and the final evaluations use the best weights
        checkpoints.load_weights(
            run_dir / checkpoints.CHECKPOINTS_DIR / f"step-{best.step}", accelerator.unwrap_model(model)
        )
        history.pop("validation", None)
        say(f"using the best checkpoint: step {best.step}, {best.metric}={best.value:.4f}")

    counts = accelerator.reduce(
        torch.tensor([float(throughput.tokens), float(throughput.padded_tokens)], device=accelerator.device), "sum"
    )
    throughput.tokens, throughput.padded_tokens = int(counts[0]), int(counts[1])
    results = {
        "train": {
            "steps": step,
            "epochs": round(step / steps_per_epoch, 4),
            "examples": examples_seen,
            "runtime_s": round(train_seconds, 2),
            **throughput.summary(examples_seen - examples_before, train_seconds - paused, flops_parameters, peak_flops),
            "peak_memory_mb": tracking.peak_memory_mb(),
        }
    }
    say("throughput: " + speed.describe(results["train"]))
    final_predictions = None
    for split in eval_loaders:  # test last, so predictions.jsonl holds the test split when there is one
        if split == "validation" and history.get("validation", {}).get("step") == step:
            metrics, final_predictions = history["validation"]["metrics"], history["validation"]["predictions"]
        else:
            metrics, final_predictions = run_evaluation(
                model,
                eval_loaders[split],
                task,
                accelerator,
                splits[split],
                features[split],
                recipe.metrics,
                say,
                split,
            )
            log({"step": step, "split": split, **metrics})
        results[split] = metrics

    if accelerator.is_main_process:
        log_file.close()
        save_model(accelerator.unwrap_model(model), tokenizer, run_dir, recipe)
        if final_predictions is not None:
            runs.write_jsonl(run_dir / runs.PREDICTIONS_FILE, final_predictions)
        plots.save_plots(run_dir)
        runs.write_json(run_dir / runs.METRICS_FILE, results)
    tracking.finish(accelerator)
    accelerator.wait_for_everyone()
    for split in ("validation", "test"):
        if split in results:
            say(f"{split}: " + format_metrics(results[split]))
    say(f"run saved to {run_dir}")
    return TrainResult(run_dir, results)


def save_model(model, tokenizer, run_dir: Path, recipe: Recipe) -> None:
    """Save as plain transformers / peft files (safetensors)."""
    if hasattr(model, "peft_config"):
        # Point the adapter at the hub id, not this machine's cache path, so it loads anywhere.
        for config in model.peft_config.values():
            config.base_model_name_or_path = recipe.model.name
    model.save_pretrained(run_dir, safe_serialization=True)
    tokenizer.save_pretrained(run_dir)


def format_metrics(metrics: dict) -> str:
    shown = {k: v for k, v in metrics.items() if k not in runs.NOT_METRICS}
    # Text values (sacrebleu's signature) are shown as they are.
    return (
        "  ".join(f"{k}={v}" if isinstance(v, str) else f"{k}={v:.4f}" for k, v in shown.items())
        + f"  (n={metrics.get('num_examples', '?')})"
    )


class Progress:
    """A progress bar on a terminal; plain log lines otherwise, so CI logs stay readable."""

    def __init__(self, total: int, enabled: bool, echo, stream=None):
        self.total, self.echo, self.enabled = total, echo, enabled
        stream = stream or sys.stderr
        self.interactive = enabled and stream.isatty()
        self.started = time.perf_counter()
        self.last_line = 0.0
        self.bar = None
        if self.interactive:
            from tqdm.auto import tqdm

            # tqdm's own meter shows step/total, elapsed<ETA and steps/s; the postfix adds loss and samples/s.
            self.bar = tqdm(total=total, unit="step", dynamic_ncols=True, file=stream)

    def update(self, step: int, loss: float, samples_per_s: float) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(loss=f"{loss:.4f}", samples_s=f"{samples_per_s:.1f}", refresh=True)
            return
        now = time.perf_counter()
        if now - self.last_line >= 10 or step == self.total:
            self.last_line = now
            elapsed = now - self.started
            eta = elapsed / step * (self.total - step)
            self.echo(
                f"step {step}/{self.total}  loss={loss:.4f}  {samples_per_s:.1f} samples/s  elapsed {elapsed:.0f}s  eta {eta:.0f}s"
            )

    def note(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            self.echo(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
