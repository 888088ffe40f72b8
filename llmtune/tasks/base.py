"""The task contract: everything the training loop, evaluation, inference, the CLI, reports and the hub ask of a task.

A task is two classes in one module: its recipe section (a `TaskOptions` subclass whose `type` is the task's
name) and a `Task` subclass that does the work. Registering the task class in `tasks/__init__.py` adds its
section to the recipe schema, its inputs to `llmtune predict`, and its plots, report and model card everywhere.
Nothing outside `tasks/` names a task.

Prediction rows (predictions.jsonl, `llmtune predict`, and every report) have one shape for every task:

    {"index": 0, "inputs": {column: value, ...}, "reference": ..., "predicted": ..., "score": 0.93,
     "metrics": {name: value, ...}, ...task extras (probabilities, span, entities)}

`reference` and `metrics` (the per-example scores, such as F1 or ROUGE-L) appear when the example has a
reference; `score` is the model's confidence in `predicted`.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..common.errors import UserError
from ..common.lazy import datasets, torch
from ..common.section import Section
from ..data.augment import AugmentFields
from ..data.reading import in_memory, row_location, tokenization_fingerprint
from ..data.schema import DataSpec
from ..models.loading import is_decoder_only

if TYPE_CHECKING:
    from .card import PushedModel


class TaskOptions(Section):
    """The recipe's `task` section; each task narrows `type` to its own name."""

    type: str

    # The metrics the task can report, its main one first (plots draw it; evaluation.metrics picks among them).
    available_metrics: ClassVar[tuple[str, ...]] = ()

    # Whether the task runs on encoder-decoder models, so that `model.decoder` may warm-start one from two checkpoints.
    encoder_decoder: ClassVar[bool] = False

    # Fields that `Task.tune` settles after training (decision thresholds, a temperature): the run's recipe gains
    # them, and `--resume` does not count them as a change of recipe.
    tuned_fields: ClassVar[tuple[str, ...]] = ()

    def check_recipe(self, recipe) -> None:
        """Checks that involve other sections of the recipe (raise ValueError with the message)."""


class Task:
    """What a task does. Subclasses set the class attributes and implement the methods marked abstract."""

    name: ClassVar[str]  # the recipe's task.type
    options_class: ClassVar[type[TaskOptions]]

    # ------------------------------------------------------------------ model
    auto_class: str  # the transformers auto class that loads the model, e.g. "AutoModelForSequenceClassification"
    peft_task_type: str  # the peft task type adapters are built for
    # Bare checkpoints: the class names (suffixes of config.architectures) this task's models have.
    architectures: ClassVar[tuple[str, ...]] = ()
    # Whether predict writes text token by token. A decoding step reads all the weights whether it extends one
    # text or many, so a server batches these by count; one forward pass per input costs by padded tokens.
    generates_text: ClassVar[bool] = False
    # Feature columns decoding needs but the model must not see.
    metadata_columns: ClassVar[tuple[str, ...]] = ()
    # Whether `llmtune audit` can rank the task's training rows for label noise: one label per row in
    # `options.label_column`, read by `label_id` into `label_names`, and prediction rows with `probabilities`.
    audits_labels: ClassVar[bool] = False
    # Data file layouts the task reads besides csv/tsv/json/jsonl/parquet: {suffix: reader(path, where) -> Dataset};
    # a reader returns None for a file that is not in its layout, which then reads as the built-in format.
    file_readers: ClassVar[dict[str, Callable]] = {}

    # ------------------------------------------------------------------ predict
    # `llmtune predict` options, {field: help}; each field names one input (see input_columns).
    predict_fields: ClassVar[dict[str, str]] = {"text": "Text to predict for (repeatable: one prediction each)."}

    # ------------------------------------------------------------------ reports
    example_metric: ClassVar[str]  # the per-example metric that ranks prediction rows, worst first
    example_metric_higher_is_better: ClassVar[bool] = True
    example_noun: ClassVar[str] = "predictions"  # what a prediction row is, for report titles
    metric_labels: ClassVar[dict[str, str]] = {}  # display names of the task's metrics (cards, reports)

    # ------------------------------------------------------------------ hub
    pipeline_tag: str  # the Hub pipeline (text-generation for any causal LM)
    hub_task: tuple[str, str]  # model-index task type and name

    # What a registered task (a class that sets `name`) must have besides the methods marked abstract.
    REQUIRED: ClassVar[tuple[str, ...]] = (
        "options_class",
        "auto_class",
        "peft_task_type",
        "example_metric",
        "pipeline_tag",
        "hub_task",
    )

    def __init__(self, options: TaskOptions):
        self.options = options

    def __init_subclass__(cls, **kwargs):
        """A task that misses part of the contract fails when its module is imported, not in the middle of a run."""
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            return
        missing = [name for name in dir(cls) if getattr(getattr(cls, name, None), "__isabstractmethod__", False)]
        missing += [name for name in cls.REQUIRED if not hasattr(cls, name)]
        if missing:
            raise TypeError(f"task {cls.__name__} lacks {', '.join(sorted(missing))} of the contract (tasks/base.py)")

    @classmethod
    def create(cls, options: TaskOptions) -> Task:
        """The task object for a recipe section; a task with several forms (extractive or generative) picks one here."""
        return cls(options)

    @classmethod
    def from_model_config(cls, options: TaskOptions, config) -> TaskOptions:
        """The options of a bare checkpoint's task, completed from its config (e.g. label names from id2label)."""
        return options

    # ------------------------------------------------------------------ data

    @abstractmethod
    def prepare(self, splits: dict[str, datasets.Dataset], spec: DataSpec) -> None:
        """Check every split's columns and values before anything heavy is loaded, and settle what the data decides
        (label names). May replace splits in `splits` (rows left out, with a warning).

        Raises:
            UserError: one line naming the key, file, line and what was expected.
        """

    def resolved_options(self) -> TaskOptions:
        """The options after `prepare` saw the data; saved in the run's recipe so eval and predict need no data."""
        return self.options

    def tune(self, rows: list[dict]) -> str | None:
        """After training, settle what held-out data decides (multi-label decision thresholds, a temperature) from
        the validation split's prediction rows, into the options' `tuned_fields`. `resolved_options()` then carries
        it into the run's recipe, so evaluate, predict, serve and export apply it; the validation split is scored
        again with it before the test split. Returns one line saying what was settled, or None (nothing to settle)."""
        return None

    def augment_fields(self, column_names: list[str]) -> AugmentFields | None:
        """What `data.augment` may rewrite in a training row (of a split with these columns) with its reference
        unchanged (a classified text, a question but not the context its answer points into); None: the task
        takes no augmentation."""
        return None

    def leakage_fields(self, column_names: list[str]) -> list[tuple[str | tuple[str, str], ...]]:
        """The texts that identify an example, for the leakage audit between splits (`data.leakage`): a list of
        groups, each compared on its own; a group's texts (a column, or (column, key) inside a nested column) are
        joined. Default: every input column present, joined (a sentence pair compares as one text)."""
        present = tuple(column for column in self.input_columns().values() if column in column_names)
        return [present] if present else []

    # ------------------------------------------------------------------ model

    def model_kwargs(self) -> dict:
        """Extra `from_pretrained` arguments (e.g. the label names of a classification head)."""
        return {}

    def setup(self, config, tokenizer) -> None:
        """Adapt to the model config and tokenizer before preprocessing (e.g. decoder-only models);
        check the tokenizer."""

    @abstractmethod
    def preprocess(self, dataset: datasets.Dataset, tokenizer, max_length: int) -> datasets.Dataset:
        """Tokenized features, with an `index` column (the example, or window, number) and `length` (input tokens)."""

    @abstractmethod
    def loss(self, model, batch: dict) -> torch.Tensor:
        """The training loss of one batch."""

    @abstractmethod
    def eval_step(self, model, batch: dict) -> dict[str, torch.Tensor]:
        """Per-example (or per-window) tensors of one batch: small ones (ids, losses, candidates), never full logits.
        Batches may lack the references (prediction); the outputs then lack what needs them."""

    @abstractmethod
    def new_accumulator(self, metric_names: tuple[str, ...]) -> Accumulator:
        """An accumulator for eval_step's outputs; `metric_names` are the corpus metrics to compute."""

    # ------------------------------------------------------------------ predict

    @abstractmethod
    def input_columns(self) -> dict[str, str]:
        """{predict field: data column} of the inputs a prediction needs, e.g. {"text": "sentence"}."""

    def input_row(self, value: str | dict, number: int) -> dict:
        """A data row from one input of `predict`: a text (the first field), or a mapping of fields or columns.

        Raises:
            UserError: not a text or a mapping, or an input the task needs is missing or empty.
        """
        columns = self.input_columns()
        if isinstance(value, str):
            value = {next(iter(columns)): value}
        if not isinstance(value, dict):
            raise UserError(
                f"input row {number}: expected a text or a mapping with {list(columns)}, got {type(value).__name__}"
            )
        row = {columns.get(key, key): item for key, item in value.items()}
        for field, column in columns.items():
            if not isinstance(row.get(column), str) or not row[column].strip():
                shown = f"'{field}'" + (f" (column '{column}')" if column != field else "")
                raise UserError(f"input row {number}: missing or empty {shown}; expected a non-empty text")
        return row

    def input_truncated(self, row: dict, tokenizer, max_length: int) -> bool:
        """Whether a prediction input is longer than the model reads, so that it was cut (as in training)."""
        texts = [row[column] for column in self.input_columns().values() if isinstance(row.get(column), str)]
        return len(tokenizer(*texts[:2])["input_ids"]) > max_length

    # ------------------------------------------------------------------ reports and hub

    def plots(self, predictions: list[dict], split: str) -> dict[str, bytes]:
        """The task's own plots of a split's prediction rows, as PNG bytes by file name."""
        return {}

    def row_statistics(self, rows: list[dict]) -> RowStatistics:
        """Per-row sufficient statistics of the corpus metrics of scored prediction rows (those with `metrics`), in
        their order: a metric of any multiset of the rows is `combine` of the sum of their rows' vectors, so a
        bootstrap resample (`llmtune compare`) costs a matrix product instead of a metric call.

        Default: the mean of each per-example metric (right where the corpus metric is that mean: QA's exact match
        and F1, ROUGE). A corpus metric that is not a mean overrides it: accuracy and macro-F1 from per-class
        counts, entity F1 from entity counts, BLEU from n-gram counts; a correlation would sum x, y, x², y², xy.
        """
        names = list(rows[0]["metrics"]) if rows else []
        values = np.array([[row["metrics"][name] for name in names] + [1.0] for row in rows], dtype=np.float64)
        return RowStatistics(tuple(names), values.reshape(len(rows), len(names) + 1), mean_of_columns)

    def corpus_metrics(self, rows: list[dict]) -> dict[str, float]:
        """The corpus metrics of scored prediction rows, from `row_statistics` (what compare resamples)."""
        statistics = self.row_statistics(rows)
        return statistics.metrics(statistics.values.sum(axis=0))

    def metric_tables(self, metrics: dict) -> list[tuple[str, list[str], list[list]]]:
        """Tables (title, header, rows) of a split's structured metrics (e.g. per entity type) for reports."""
        return []

    @abstractmethod
    def card_description(self) -> str:
        """What the model does, for the model card: "text classification (labels: ...)"."""

    @abstractmethod
    def usage_code(self, model: PushedModel, max_length: int) -> str:
        """A snippet that runs one example with plain transformers / peft and prints what `llmtune predict` gives."""


class LabelledTask(Task):
    """A task whose model has a classification head over named labels (`options.label_names`): text classification
    and token classification. The names come from the recipe, the data (`prepare`) or a bare checkpoint's config;
    decoder-only models get explicit position ids, so padding on either side leaves every position alike."""

    def __init__(self, options: TaskOptions):
        super().__init__(options)
        self.label_names: list[str] | None = options.label_names
        self.position_ids = False  # set by setup() for decoder-only models

    @classmethod
    def from_model_config(cls, options: TaskOptions, config) -> TaskOptions:
        if options.label_names is not None:
            return options
        return options.model_copy(update={"label_names": [config.id2label[i] for i in range(config.num_labels)]})

    def resolved_options(self) -> TaskOptions:
        return self.options.model_copy(update={"label_names": self.label_names})

    def model_kwargs(self) -> dict:
        names = self.label_names
        return {
            "num_labels": len(names),
            "id2label": dict(enumerate(names)),
            "label2id": {n: i for i, n in enumerate(names)},
        }

    def setup(self, config, tokenizer) -> None:
        self.position_ids = is_decoder_only(config)

    def with_position_ids(self, features: dict) -> dict:
        """Tokenized features with position ids 0..n-1 for decoder-only models (the collator pads them with 0)."""
        if self.position_ids:
            features["position_ids"] = [list(range(len(ids))) for ids in features["input_ids"]]
        return features

    def load_snippet(self, model: PushedModel) -> str:
        """Usage-snippet lines that leave `model`, `tokenizer` and the label names in `labels`."""
        auto = self.auto_class
        if not model.adapter:
            return model.load(auto) + "labels = [model.config.id2label[i] for i in range(model.config.num_labels)]\n"
        # the base model needs the label names to build its head
        head = (
            ", num_labels=len(labels),\n"
            "    id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)}"
        )
        return f"labels = {self.label_names!r}\n" + model.load(auto, head)


@dataclass
class RowStatistics:
    """Sufficient statistics of corpus metrics, one vector per prediction row (see Task.row_statistics)."""

    names: tuple[str, ...]  # the corpus metrics, the main one first
    values: np.ndarray  # (rows, statistics)
    combine: Callable[[np.ndarray], np.ndarray]  # summed statistics (..., statistics) -> metrics (..., len(names))

    def metrics(self, sums: np.ndarray) -> dict[str, float]:
        """{name: value} of one vector of summed statistics."""
        return {name: float(value) for name, value in zip(self.names, self.combine(sums[None])[0])}


def mean_of_columns(sums: np.ndarray) -> np.ndarray:
    """Means from sums whose last statistic counts the rows."""
    return sums[..., :-1] / np.maximum(sums[..., -1:], 1)


def f1_from_counts(hits: np.ndarray, predicted: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """F1 = 2 hits / (predicted + gold), 0 where both are 0 (scikit-learn's and seqeval's zero_division)."""
    total = predicted + gold
    return np.where(total > 0, 2 * hits / np.maximum(total, 1e-12), 0.0)


# Display names of metrics every task may report.
COMMON_METRIC_LABELS = {
    "cross_entropy": "cross-entropy",
    "perplexity": "perplexity",
    "distinct_outputs": "distinct outputs (share)",
}


def metric_label(task: type[Task] | Task, name: str) -> str:
    return {**COMMON_METRIC_LABELS, **task.metric_labels}.get(name, name)


def prediction_row(
    index: int,
    inputs: dict,
    predicted: Any,
    score: float | None,
    reference: Any = None,
    metrics: dict | None = None,
    **extra,
) -> dict:
    """One prediction row (the shape in this module's docstring); `reference` and `metrics` only when there is one."""
    row: dict = {"index": index, "inputs": inputs}
    if reference is not None:
        row["reference"] = reference
    row["predicted"] = predicted
    row["score"] = None if score is None else round(float(score), 6)
    if metrics is not None:
        row["metrics"] = {name: round(float(value), 6) for name, value in metrics.items()}
    return {**row, **extra}


class Accumulator:
    """Collects eval_step outputs batch by batch (on the CPU); `result` turns them into metrics and prediction rows."""

    def __init__(self, task: Task, metric_names: tuple[str, ...]):
        self.task = task
        self.metric_names = metric_names
        self.parts: dict[str, list[torch.Tensor]] = {}

    def add(self, outputs: dict[str, torch.Tensor]) -> None:
        for key, value in outputs.items():
            self.parts.setdefault(key, []).append(value.detach().cpu())

    def columns(self) -> dict[str, torch.Tensor]:
        """Everything added, one tensor per key, ordered by `index` (batches come sorted by length)."""
        columns = {key: torch.cat(values) for key, values in self.parts.items()}
        order = columns["index"].argsort()
        return {key: value[order] for key, value in columns.items()}

    @abstractmethod
    def result(self, dataset: datasets.Dataset, features: datasets.Dataset) -> tuple[dict, list[dict]]:
        """(corpus metrics with `num_examples`, one prediction row per example in dataset order)."""


MAP_BATCH = 1000  # datasets' default batch size for map


def check_texts(dataset, columns: tuple[str | None, ...], where: str, source) -> None:
    """Every row of the text columns (None entries skipped: an absent pair column) holds a non-empty text.

    Raises:
        UserError: the file, row and column of the first that does not.
    """
    for column in filter(None, columns):
        for row, text in enumerate(dataset[column]):
            if not isinstance(text, str) or not text.strip():
                what = "an empty text" if isinstance(text, str) else repr(text)
                raise UserError(f"{where} {row_location(source, row)}: column '{column}' holds {what}; expected text")


def text_inputs(text_column: str, text_pair_column: str | None) -> dict[str, str]:
    """`Task.input_columns` of a task that reads a text or a text pair: `predict`'s --text (and --text-pair)."""
    return {"text": text_column, **({"text_pair": text_pair_column} if text_pair_column else {})}


def text_encoder(
    tokenizer, max_length: int, columns: tuple[str, str | None], position_ids: bool, labels: Callable | None = None
) -> Callable:
    """`encode(batch, indices)` for `tokenize`, for tasks that read one text or a text pair per row (classification,
    multi-label, regression): the tokenizer's model inputs, explicit position ids 0..n-1 for decoder-only models (the
    collator pads them with 0, so padding on either side leaves every position alike), `index`, `length`, and
    `labels` from `labels(batch)` when given (None: prediction inputs, which have no references)."""
    text, pair = columns
    keep = set(tokenizer.model_input_names)

    def encode(batch, indices):
        encoded = tokenizer(batch[text], batch[pair] if pair else None, truncation=True, max_length=max_length)
        features = {key: encoded[key] for key in encoded if key in keep}
        if position_ids:
            features["position_ids"] = [list(range(len(ids))) for ids in features["input_ids"]]
        features["index"] = indices
        features["length"] = [len(ids) for ids in features["input_ids"]]
        if labels is not None:
            features["labels"] = labels(batch)
        return features

    return encode


def tokenize(
    dataset: datasets.Dataset, tokenizer, encode: Callable, version: str, *settings, windows: bool = False
) -> datasets.Dataset:
    """`encode(batch, indices)` mapped over the dataset in batches, cached by a fingerprint of the data, the
    tokenizer, `version` and `settings`. With `windows` (an example may become several rows), the rows are
    numbered in an `index` column of their own, so evaluation outputs can be put back in order."""
    if not dataset.cache_files and 0 < len(dataset) <= MAP_BATCH:
        # In memory and one map batch (prediction inputs, a served request): the same call map would make,
        # without map's fingerprints and writers, which cost more than the tokenizing (~5 ms a request).
        features = in_memory(encode(dataset.to_dict(), list(range(len(dataset)))))
        fingerprint = features._fingerprint
    else:
        fingerprint = tokenization_fingerprint(dataset, tokenizer, version, *settings)
        features = dataset.map(
            encode,
            batched=True,
            batch_size=MAP_BATCH,
            with_indices=True,
            remove_columns=dataset.column_names,
            desc="Tokenizing",
            new_fingerprint=fingerprint,
        )
    if windows:
        features = features.add_column("index", list(range(len(features))), new_fingerprint=fingerprint + "-index")
    return features
