"""The training loop: one Accelerate loop for every task, on CPU, one GPU or many."""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from transformers import get_scheduler

from . import data, models, plots, runs, tasks, tracking
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
        raise UserError("training.precision: fp16 needs a GPU and none is available; use auto or fp32 (bf16 runs on CPU, but slowly)")
    if precision in ("bf16", "fp16"):
        return precision
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"  # bf16 on CPU is far slower than fp32


def eval_loader(features, batch_size: int, collate) -> DataLoader:
    return DataLoader(features, batch_sampler=SortedBatches(features["length"], batch_size), collate_fn=collate)


def run_evaluation(model, loader, task, accelerator: Accelerator, dataset, metric_names) -> tuple[dict, list[dict]]:
    """Metrics and predictions over a whole split; every example counted once, whatever the process count."""
    model.eval()
    accumulator = task.new_accumulator(metric_names)
    with torch.inference_mode():
        for batch in loader:
            accumulator.add(accelerator.gather_for_metrics(task.eval_step(model, batch)))
    model.train()
    return accumulator.result(dataset)


@quiet_libraries
def train(recipe: Recipe, output_dir: str | Path | None = None, overwrite: bool = False, echo=None) -> TrainResult:
    """Fine-tune as the recipe says and write the run directory.

    Every recipe and data problem is found before the model is loaded and before anything is written.
    Silent unless `echo` is given (e.g. `echo=print`): progress and summary lines go to it.

    Raises:
        UserError: bad recipe, data, model or output directory.
    """
    run_dir = Path(output_dir or recipe.output_dir)
    runs.check_output_dir(run_dir, overwrite)
    precision = mixed_precision(recipe.training.precision)
    tracking.check_installed(recipe.tracking)
    if recipe.data.train is None:
        raise UserError("data.train: missing; training needs a train split")
    task = tasks.create(recipe.task)
    splits = data.load_splits(recipe.data)
    task.prepare(splits, recipe.data)
    checkpoint = models.resolve_checkpoint(recipe.model)
    recipe = recipe.model_copy(update={"task": recipe.task.model_copy(update={"label_names": task.label_names})})
    cfg = recipe.training

    accelerator = Accelerator(mixed_precision=precision, gradient_accumulation_steps=cfg.gradient_accumulation_steps,
                              **tracking.accelerator_options(recipe.tracking, run_dir))
    say = echo if accelerator.is_main_process and echo is not None else (lambda *args, **kwargs: None)
    set_seed(cfg.seed)
    say(f"model: {checkpoint.name} ({checkpoint.origin})")
    tokenizer = models.load_tokenizer(checkpoint, recipe.model.trust_remote_code)
    model, new_modules = models.load_model(checkpoint, task.auto_class, recipe.model.trust_remote_code, **task.model_kwargs())
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model = models.apply_method(model, recipe.method, task.peft_task_type, new_modules)
    trainable, total = models.count_parameters(model)
    say(f"method: {recipe.method.type}, training {trainable:,} of {total:,} parameters ({100 * trainable / total:.2f}%)")

    max_length = min(cfg.max_length, getattr(model.config, "max_position_embeddings", None) or cfg.max_length)
    with accelerator.main_process_first():
        features = {split: task.preprocess(dataset, tokenizer, max_length) for split, dataset in splits.items()}
    collate = PadCollator(tokenizer.pad_token_id, tokenizer.padding_side)
    sampler = LengthGroupedBatches(features["train"]["length"], cfg.batch_size, cfg.seed)
    train_loader = DataLoader(features["train"], batch_sampler=sampler, collate_fn=collate)
    eval_batch_size = cfg.eval_batch_size or 2 * cfg.batch_size
    eval_loaders = {split: eval_loader(features[split], eval_batch_size, collate) for split in ("validation", "test") if split in features}

    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")
    params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for n, p in params if not n.endswith(no_decay)], "weight_decay": cfg.weight_decay},
            {"params": [p for n, p in params if n.endswith(no_decay)], "weight_decay": 0.0},
        ],
        lr=cfg.learning_rate,
    )
    model, optimizer, train_loader, *prepared = accelerator.prepare(model, optimizer, train_loader, *eval_loaders.values())
    eval_loaders = dict(zip(eval_loaders, prepared))
    steps_per_epoch = math.ceil(len(train_loader) / cfg.gradient_accumulation_steps)
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else math.ceil(cfg.warmup_ratio * total_steps)
    scheduler = get_scheduler(cfg.scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
    eval_every = recipe.evaluation.every_n_steps or steps_per_epoch

    if accelerator.is_main_process:
        runs.clear_output_dir(run_dir)
        runs.write_atomic(run_dir / runs.RECIPE_FILE, dump_recipe(recipe))
    tracking.start(accelerator, recipe.model_dump(mode="json"))
    log_file = open(run_dir / runs.LOG_FILE, "a", encoding="utf-8") if accelerator.is_main_process else None

    def log(entry: dict) -> None:
        if log_file:
            log_file.write(json.dumps(entry) + "\n")
            log_file.flush()
        accelerator.log(tracking.scalars(entry), step=entry["step"])

    say(f"training: {len(splits['train']):,} examples, {total_steps:,} steps of {cfg.batch_size * cfg.gradient_accumulation_steps * accelerator.num_processes} examples, "
        f"{accelerator.device}, {accelerator.num_processes} process(es), precision {accelerator.mixed_precision}")
    progress = Progress(total_steps, enabled=accelerator.is_main_process and echo is not None, echo=say)
    history: dict[str, dict] = {}
    step, epoch, examples_seen, started = 0, 0, 0, time.perf_counter()
    window_loss, window_batches = torch.zeros((), device=accelerator.device), 0
    model.train()
    while step < total_steps:
        sampler.set_epoch(epoch)
        for batch in train_loader:
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
            examples_seen += len(batch["index"]) * accelerator.num_processes
            if not accelerator.sync_gradients:
                continue
            if not accelerator.optimizer_step_was_skipped:
                scheduler.step()
            step += 1
            if step % cfg.log_every_n_steps == 0 or step == total_steps:
                mean_loss = accelerator.reduce(window_loss, "mean").item() / window_batches
                elapsed = time.perf_counter() - started
                entry = {"step": step, "epoch": round(epoch + (step - epoch * steps_per_epoch) / steps_per_epoch, 4), "loss": mean_loss,
                         "learning_rate": scheduler.get_last_lr()[0], "samples_per_s": examples_seen / elapsed}
                if grad_norm is not None:
                    entry["grad_norm"] = float(grad_norm)
                log(entry)
                progress.update(step, mean_loss, entry["samples_per_s"])
                window_loss, window_batches = torch.zeros((), device=accelerator.device), 0
            if "validation" in eval_loaders and (step % eval_every == 0 or step == total_steps):
                metrics, predictions = run_evaluation(model, eval_loaders["validation"], task, accelerator, splits["validation"], recipe.metrics)
                history["validation"] = {"step": step, "metrics": metrics, "predictions": predictions}
                log({"step": step, "split": "validation", **metrics})
                progress.note(f"step {step}: validation " + format_metrics(metrics))
            if step >= total_steps:
                break
        epoch += 1
    train_seconds = time.perf_counter() - started
    progress.close()

    results = {"train": {"steps": step, "epochs": round(step / steps_per_epoch, 4), "examples": examples_seen,
                         "runtime_s": round(train_seconds, 2), "samples_per_s": round(examples_seen / train_seconds, 2),
                         "peak_memory_mb": tracking.peak_memory_mb()}}
    final_predictions = None
    for split in eval_loaders:  # test last, so predictions.jsonl holds the test split when there is one
        if split == "validation" and history.get("validation", {}).get("step") == step:
            metrics, final_predictions = history["validation"]["metrics"], history["validation"]["predictions"]
        else:
            metrics, final_predictions = run_evaluation(model, eval_loaders[split], task, accelerator, splits[split], recipe.metrics)
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
    shown = {k: v for k, v in metrics.items() if k not in ("step", "num_examples")}
    return "  ".join(f"{k}={v:.4f}" for k, v in shown.items()) + f"  (n={metrics.get('num_examples', '?')})"


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
            self.echo(f"step {step}/{self.total}  loss={loss:.4f}  {samples_per_s:.1f} samples/s  elapsed {elapsed:.0f}s  eta {eta:.0f}s")

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
