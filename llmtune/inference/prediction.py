"""Prediction rows for raw inputs (texts, or mappings of a task's inputs): `llmtune predict`, the server's
batches and the Python API's `predict`, all batched by length like evaluation."""

from __future__ import annotations

from pathlib import Path

from ..common.silence import quiet_libraries
from ..data.reading import in_memory
from ..tasks.base import Task
from .batches import PadCollator, SortedBatches
from .evaluation import model_features, run_batches
from .saved import LoadedRun, load_run


@quiet_libraries
def predict(
    target: str | Path | LoadedRun, rows: list[dict] | list[str], overrides: list[str] | tuple[str, ...] = ()
) -> list[dict]:
    """Prediction rows for raw inputs: texts, or mappings of the task's predict fields (e.g. question and context)
    or of its data columns. Rows that carry references get them and the per-example metrics too.

    Raises:
        UserError: unloadable model, or an input the task needs is missing.
    """
    loaded = target if isinstance(target, LoadedRun) else load_run(target, overrides)
    task = loaded.task
    rows = [task.input_row(row, number) for number, row in enumerate(rows, 1)]
    return predict_rows(task, loaded.model, loaded.tokenizer, rows, loaded.max_length)


def predict_rows(
    task: Task, model, tokenizer, rows: list[dict], max_length: int, batch_size: int = 32, max_tokens: int | None = None
) -> list[dict]:
    """Prediction rows for data rows (see `Task.input_row`), in their order, batched by length like evaluation
    (`batch_size` rows a batch, or with `max_tokens` as many as fit in that many padded tokens)."""
    dataset = in_memory({key: [row.get(key) for row in rows] for key in rows[0]})
    features = task.preprocess(dataset, tokenizer, max_length)
    collate = PadCollator(tokenizer.pad_token_id, tokenizer.padding_side)
    order = SortedBatches(features["length"], batch_size, max_tokens=max_tokens)
    inputs = model_features(features, task)
    batches = (collate([inputs[i] for i in batch]) for batch in order)
    accumulator = task.new_accumulator(())
    for outputs in run_batches(task, model, batches, next(model.parameters()).device):
        accumulator.add(outputs)
    return accumulator.result(dataset, features)[1]
