"""Tasks plug into the one training loop through a small interface.

A task module provides a class with:

- `auto_class`, `peft_task_type`: how to load the model and which peft task type adapters use;
- `prepare(splits, spec)`: check columns and label values before anything heavy is loaded;
- `model_kwargs()`: extra `from_pretrained` arguments (e.g. label names);
- `setup(config, tokenizer)`: adapt to the model config and tokenizer (e.g. decoder-only models) before preprocessing; check the tokenizer;
- `preprocess(dataset, tokenizer, max_length)`: tokenized features with `index` and `length` columns;
- `loss(model, batch)`: the training loss of one batch;
- `eval_step(model, batch)`: per-example tensors (loss, prediction, ...) for one batch;
- `metadata_columns`: feature columns kept for decoding but not fed to the model;
- `new_accumulator(metric_names)`: an object with `add(outputs)` and `result(dataset, features)` -> (metrics, predictions);
- `predict(model, tokenizer, rows)`: predictions for raw input rows;
- for the pushed model's card: `pipeline_tag` (the Hub pipeline: text-generation for any causal LM), `hub_task`
  (model-index task type and name of what the metrics measure), `card_description()`, `predict_options` (how
  `llmtune predict` is called) and `usage_code(model, max_length)`: a snippet that runs one example with plain
  transformers / peft and prints what `llmtune predict` gives (helpers in `card.py`).

A new task is one module here and one entry in TASKS.
"""

from __future__ import annotations

from ..recipe import Task
from .classification import Classification
from .question_answering import GenerativeQuestionAnswering, QuestionAnswering
from .seq2seq import Summarization, Translation

TASKS = {
    "classification": Classification,
    "question_answering": QuestionAnswering,
    "summarization": Summarization,
    "translation": Translation,
}
# Tasks whose prompt -> completion form (`task.generative`, a causal LM) is a class of its own. Summarization and
# translation instead swap their model family (encoder-decoder or causal LM) inside one class.
GENERATIVE_TASKS = {"question_answering": GenerativeQuestionAnswering}


def create(options: Task):
    """The task object for the recipe's `task` section."""
    if getattr(options, "generative", False) and options.type in GENERATIVE_TASKS:
        return GENERATIVE_TASKS[options.type](options)
    return TASKS[options.type](options)
