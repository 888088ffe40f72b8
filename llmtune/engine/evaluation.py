"""Evaluation of a split: batches sorted by length, each example counted once whatever the process count.

Training (validation and test), `llmtune eval` and the hub round trip all evaluate through `run_evaluation`.
"""

from __future__ import annotations

import time

from ..common import runs, sharding
from ..common.errors import UserError
from ..tasks.base import Task, run_batches
from .batching import PadCollator, SortedBatches

# A long evaluation (generating a test split can take many minutes) reports its progress this often.
EVAL_PROGRESS_EVERY_S = 30


def new_accelerator(**options):
    """An Accelerator with these options, whatever the process ran before. Accelerate keeps one precision per
    process and refuses another; a notebook or a sweep trains and evaluates run after run in one process, each
    with its own. The process group (PartialState) stays."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state()
    GradientState._reset_state()
    return Accelerator(**options)


def precision_label(recipe_precision: str, accelerate_precision: str) -> str:
    """What a run trains in: fp32, bf16-mixed or fp16-mixed (fp32 master weights under autocast), or bf16-pure;
    from the recipe's training.precision and Accelerate's mixed_precision (`mixed_precision`)."""
    if recipe_precision == "bf16-pure":
        return "bf16-pure"
    return "fp32" if accelerate_precision == "no" else f"{accelerate_precision}-mixed"


def mixed_precision(precision: str, evaluating: bool = False) -> str:
    """Accelerate's mixed_precision for the recipe's `training.precision`.

    Training and `llmtune eval` of its run use the same one, so that eval reproduces the run's metrics (on a GPU,
    validation during training runs under bf16 autocast). Evaluating on a machine that lacks the run's fp16 (it
    needs a GPU) falls back to fp32 instead of failing.
    """
    import torch

    if precision == "fp32":
        return "no"
    if precision == "bf16-pure":
        if torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
            raise UserError("training.precision: bf16-pure needs a GPU with bf16 (Ampere or later); use fp16 or fp32")
        # The weights themselves are bf16 (models.set_precision): no autocast needed while training. The saved
        # model keeps the checkpoint's dtype, so evaluating it runs under bf16 autocast instead.
        return "bf16" if evaluating else "no"
    if precision == "fp16" and not torch.cuda.is_available():
        if evaluating:
            return "no"
        raise UserError(
            "training.precision: fp16 needs a GPU and none is available; "
            "use auto or fp32 (bf16 runs on CPU, but slowly)"
        )
    if precision in ("bf16", "fp16"):
        return precision
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"  # bf16 on CPU is far slower than fp32


def model_features(features, task: Task):
    """The columns batches are made of; tasks keep decoding metadata (e.g. QA offsets) out of the model's way."""
    return features.remove_columns(list(task.metadata_columns)) if task.metadata_columns else features


def tokenize(splits: dict, task: Task, tokenizer, max_length: int, accelerator) -> dict:
    """Each split's features, as the task tokenizes them."""
    with accelerator.main_process_first():  # one process tokenizes, the others read its cache
        return {split: task.preprocess(dataset, tokenizer, max_length) for split, dataset in splits.items()}


def eval_batches(splits: dict, task: Task, tokenizer, training, accelerator) -> tuple[dict, dict]:
    """Each split's features and this process's evaluation loader of them: what training evaluates validation
    and test with, and `llmtune eval` its split. `training` is the recipe's training section, with the max_length
    the model allows."""
    features = tokenize(splits, task, tokenizer, training.max_length, accelerator)
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
