"""Evaluation of a split: batches sorted by length, each example counted once whatever the process count, through
the one batched no-grad loop (`run_batches`, which prediction runs too).

Training (validation and test), `llmtune eval` and the hub round trip all evaluate through `run_evaluation`."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path

from ..common import runs, sharding
from ..common.errors import UserError
from ..common.lazy import torch
from ..common.silence import quiet_libraries
from ..data import reading as data
from ..data.schema import DataSource, DataSpec
from ..tasks.base import Task
from . import devices
from .batches import PadCollator, SortedBatches
from .devices import mixed_precision, new_accelerator
from .saved import load_run

# A long evaluation (generating a test split can take many minutes) reports its progress this often.
EVAL_PROGRESS_EVERY_S = 30


def model_features(features, task: Task):
    """The columns batches are made of; tasks keep decoding metadata (e.g. QA offsets) out of the model's way."""
    return features.remove_columns(list(task.metadata_columns)) if task.metadata_columns else features


def tokenize_splits(splits: dict, task: Task, tokenizer, max_length: int, accelerator) -> dict:
    """Each split's features, as the task tokenizes them."""
    with accelerator.main_process_first():  # one process tokenizes, the others read its cache
        return {split: task.preprocess(dataset, tokenizer, max_length) for split, dataset in splits.items()}


def eval_batches(splits: dict, task: Task, tokenizer, training, accelerator) -> tuple[dict, dict]:
    """Each split's features and this process's evaluation loader of them: what training evaluates validation
    and test with, and `llmtune eval` its split. `training` is the recipe's training section, with the max_length
    the model allows."""
    features = tokenize_splits(splits, task, tokenizer, training.max_length, accelerator)
    return features, {split: eval_loader(features[split], task, training, tokenizer, accelerator) for split in features}


def eval_loader(features, task: Task, training, tokenizer, accelerator):
    """This process's share of the evaluation batches (not passed to `accelerator.prepare`: see run_evaluation).

    `training` is the recipe's training section: eval_batch_size, else twice the training batch (in
    examples, or in tokens with max_tokens).
    """
    from torch.utils.data import DataLoader

    size = training.eval_batch_size or (None if training.max_tokens else 2 * training.batch_size)
    budget = 2 * training.max_tokens if size is None else None
    collate = PadCollator(tokenizer.pad_token_id, tokenizer.padding_side)
    batches = SortedBatches(
        features["length"], size, accelerator.num_processes, accelerator.process_index, max_tokens=budget
    )
    return DataLoader(
        model_features(features, task),
        batch_sampler=batches,
        collate_fn=collate,
        pin_memory=accelerator.device.type == "cuda",
    )


def run_evaluation(
    model, loader, task: Task, accelerator, dataset, features, metric_names, echo=None, label: str = "evaluating"
) -> tuple[dict, list[dict]]:
    """Metrics and prediction rows over a whole split.

    Each process evaluates its own batches and the per-example outputs are gathered once at the end.
    (Accelerate's sharding pads uneven shards with repeated examples, and `gather_for_metrics` cannot
    drop them for batch samplers with varying batch sizes such as ours.)
    `echo`, on the main process: a progress line every EVAL_PROGRESS_EVERY_S.
    """
    import torch
    from accelerate.utils import gather_object

    started = last_line = time.perf_counter()
    total, done = len(loader.batch_sampler), 0
    # Not through DistributedDataParallel: its forward may broadcast buffers, a collective that deadlocks when the
    # processes have different numbers of batches, and evaluation needs none of its gradient synchronisation.
    model = getattr(model, "module", model) if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model

    def progress(number: int, examples: int) -> None:
        nonlocal last_line, done
        done += examples
        now = time.perf_counter()
        if (
            echo is not None
            and accelerator.is_main_process
            and now - last_line >= EVAL_PROGRESS_EVERY_S
            and number < total
        ):
            last_line, elapsed = now, now - started
            eta = elapsed / number * (total - number)
            echo(f"{label}: batch {number}/{total} ({done:,} examples)  elapsed {elapsed:.0f}s  eta {eta:.0f}s")

    sharded = sharding.sharded(model)
    batches = evened(loader, accelerator) if sharded else loader
    outputs = run_batches(task, model, batches, accelerator.device, progress)
    if sharded:
        del outputs[len(loader.batch_sampler) :]  # the repeats `evened` added
        resharded(model)
    accumulator = task.new_accumulator(metric_names)
    for result in gather_object(outputs) if accelerator.num_processes > 1 else outputs:
        accumulator.add(result)
    metrics, predictions = accumulator.result(dataset, features)
    return {**metrics, "runtime_s": round(time.perf_counter() - started, 2)}, predictions


def run_batches(task: Task, model, batches: Iterable[dict], device, on_batch: Callable | None = None) -> list[dict]:
    """eval_step over batches without gradients, outputs moved to the CPU: the one batched inference loop
    (evaluation and prediction both use it). `on_batch(number, examples)` is called after each batch."""
    was_training = model.training
    if was_training:  # walking every module costs ~2 ms, a fifth of a served request's time
        model.eval()
    outputs = []
    # Not inference mode under ZeRO-3: the weights it gathers for the forward pass would become inference tensors,
    # which training's next backward cannot record.
    no_gradients = torch.no_grad() if sharding.partitioned_by_zero3(model) else torch.inference_mode()
    try:
        with no_gradients:
            for number, batch in enumerate(batches, 1):
                batch = {key: value.to(device, non_blocking=True) for key, value in batch.items()}
                outputs.append({key: value.detach().cpu() for key, value in task.eval_step(model, batch).items()})
                if on_batch is not None:
                    on_batch(number, len(batch["input_ids"]))
    finally:
        if was_training:
            model.train()
    return outputs


def evened(loader, accelerator):
    """This process's batches, then repeats of a one-example batch until every process has run as many: under FSDP
    (or ZeRO stage 3) each forward pass gathers the weights from all processes, so a process that stopped early
    would leave the others waiting forever. The caller drops the repeats' outputs."""
    import torch

    own = len(loader.batch_sampler)
    most = int(accelerator.reduce(torch.tensor([own], device=accelerator.device), "max").item())
    yield from loader
    for _ in range(most - own):
        yield loader.collate_fn([loader.dataset[0]])


def resharded(model) -> None:
    """FSDP keeps the outermost module's weights gathered after a forward pass without backward (it expects the
    backward next), registered in place of the shards: put the shards back, so that the optimizer, checkpoints and
    the saved model see the parameters they hold."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def format_metrics(metrics: dict) -> str:
    """One line of a split's metrics: numbers to 4 decimals, text (sacreBLEU's signature) as it is."""
    shown = {k: v for k, v in metrics.items() if runs.is_metric(k) and isinstance(v, (int, float, str))}
    values = "  ".join(f"{k}={v}" if isinstance(v, str) else f"{k}={v:.4f}" for k, v in shown.items())
    return values + f"  (n={metrics.get('num_examples', '?')})"


@quiet_libraries
def evaluate(
    target: str | Path,
    split: str = "test",
    data_file: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    echo=None,
) -> tuple[dict, list[dict]]:
    """Metrics and per-example predictions of a run or checkpoint on one split or a data file.

    Args:
        target: run directory, checkpoint directory, hub id or recipe file.
        split: the run recipe's split to use (train, validation, test) when no data_file is given.
        data_file: a local file with the task's columns, instead of the recipe's split.
        echo: receives a progress line every 30 s while the evaluation runs (e.g. `print`).

    Raises:
        UserError: unknown split, bad data, unloadable model.
    """
    loaded = load_run(target, overrides)
    recipe, task = loaded.recipe, loaded.task
    if data_file is not None:
        source, split = DataSource(path=str(Path(data_file).resolve())), "test"
    else:
        source = getattr(recipe.data, split, None) if split in ("train", "validation", "test") else None
        if source is None:
            raise UserError(
                f"--split {split}: the recipe has no data.{split}; choose another split or pass --data FILE"
            )
    spec = DataSpec(**{split: source}, columns=recipe.data.columns, drop_empty=recipe.data.drop_empty)
    splits = data.load_splits(spec, task.file_readers)
    task.prepare(splits, spec)
    training = recipe.training.model_copy(update={"max_length": loaded.max_length})
    accelerator = new_accelerator(mixed_precision=mixed_precision(recipe.training.precision, evaluating=True))
    features, loaders = eval_batches({split: splits[split]}, task, loaded.tokenizer, training, accelerator)
    model = accelerator.prepare(loaded.model)
    label = "data" if data_file else split
    result = run_evaluation(
        model, loaders[split], task, accelerator, splits[split], features[split], recipe.metrics, echo, label
    )
    del model, loaded, accelerator, loaders  # nothing of the model outlives the call
    devices.release()
    return result
