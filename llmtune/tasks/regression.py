"""Regression: a single text or a text pair mapped to a number (similarity scores, ratings), with a one-output
head trained on mean squared error. Targets may be scaled for training; the fitted scaling is saved in the run's
recipe and undone in every prediction, so metrics, `llmtune predict` and the server speak the data's scale."""

from __future__ import annotations

import math
import warnings
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from ..common import figures
from ..common.errors import UserError
from ..common.lazy import F, datasets, torch
from ..data.augment import AugmentFields
from ..data.reading import describe, require_columns, row_location
from ..data.schema import DataSpec
from ..models.loading import is_decoder_only
from .base import (
    Accumulator,
    RowStatistics,
    Task,
    TaskOptions,
    check_texts,
    prediction_row,
    text_encoder,
    text_inputs,
    tokenize,
)
from .card import PushedModel, literal


class RegressionOptions(TaskOptions):
    """Regression of single texts or text pairs onto a number."""

    available_metrics: ClassVar[tuple[str, ...]] = ("pearson", "spearman", "mse", "mae")

    type: Literal["regression"] = Field(description="The task.")
    text_column: str = Field("text", description="Column holding the text.")
    text_pair_column: str | None = Field(
        None, description="Second text column for pair tasks (sentence similarity); null for single texts."
    )
    label_column: str = Field("score", description="Column holding the target number.")
    target_scaling: Literal["none", "standard", "minmax"] = Field(
        "none",
        description="How targets are scaled for training, fitted on the train split: standard (zero mean, unit "
        "variance), minmax (onto 0..1) or none. Predictions and metrics are always on the data's own scale.",
    )
    target_shift: float | None = Field(
        None,
        description="The fitted scaling, target = (score - target_shift) / target_scale; written into the run's "
        "recipe by training (leave null to fit it on train).",
    )
    target_scale: float | None = Field(None, gt=0, description="See target_shift.")

    @model_validator(mode="after")
    def _scaling_complete(self) -> RegressionOptions:
        given = (self.target_shift is not None, self.target_scale is not None)
        if any(given) and not all(given):
            raise ValueError("target_shift and target_scale go together: set both, or neither to fit them on train")
        if all(given) and self.target_scaling == "none":
            raise ValueError("target_shift and target_scale need target_scaling: standard or minmax")
        return self


def parse_score(value) -> float | None:
    """A target as a finite float, or None (empty, not a number, NaN or infinite)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def fit_scaling(scores: list[float], kind: str) -> tuple[float, float]:
    """(shift, scale) of the train scores for `kind`.

    Raises:
        UserError: every train score is the same, so there is nothing to scale (or learn).
    """
    if kind == "standard":
        shift = sum(scores) / len(scores)
        scale = math.sqrt(sum((s - shift) ** 2 for s in scores) / len(scores))
    else:
        shift, scale = min(scores), max(scores) - min(scores)
    if scale == 0:
        raise UserError(f"task.target_scaling: every train score is {scores[0]:g}; a regression needs varied targets")
    return shift, scale


class Regression(Task):
    name = "regression"
    options_class = RegressionOptions
    auto_class = "AutoModelForSequenceClassification"
    peft_task_type = "SEQ_CLS"
    # No architectures: a bare sequence-classification checkpoint is classification's unless --set task.type says.
    predict_fields = {
        "text": "Text to score (repeatable: one prediction each).",
        "text_pair": "Text pairs: the second text of each --text.",
    }
    example_metric = "absolute_error"
    example_metric_higher_is_better = False
    metric_labels = {"pearson": "Pearson r", "spearman": "Spearman rho", "mse": "MSE", "mae": "MAE"}
    # What the Hub files sentence-similarity regressions (STS-B cross-encoders) under.
    pipeline_tag = "text-classification"
    hub_task = ("text-classification", "Text Classification")

    def __init__(self, options: RegressionOptions):
        super().__init__(options)
        self.shift = options.target_shift if options.target_shift is not None else 0.0
        self.scale = options.target_scale if options.target_scale is not None else 1.0
        self.position_ids = False  # set by setup() for decoder-only models

    # ------------------------------------------------------------------ checks

    def prepare(self, splits: dict[str, datasets.Dataset], spec: DataSpec) -> None:
        """Check the columns, texts and scores of every split and fit the target scaling on train.

        Raises:
            UserError: a missing column, an empty text, or a score that is empty, not a number, NaN or infinite.
        """
        sources = spec.sources()
        scores = {}
        for split, dataset in splits.items():
            where = describe(split, sources[split])
            require_columns(dataset.column_names, self._columns(), where)
            scores[split] = self._checked_scores(dataset, where, sources[split])
        o = self.options
        if o.target_scaling != "none" and o.target_shift is None:
            train = scores["train"] if "train" in scores else next(iter(scores.values()))
            self.shift, self.scale = fit_scaling(train, o.target_scaling)

    def _checked_scores(self, dataset: datasets.Dataset, where: str, source) -> list[float]:
        check_texts(dataset, (self.options.text_column, self.options.text_pair_column), where, source)
        scores = []
        for row, value in enumerate(dataset[self.options.label_column]):
            score = parse_score(value)
            if score is None:
                empty = value is None or (isinstance(value, str) and not value.strip())
                raise UserError(
                    f"{where} {row_location(source, row)}: column '{self.options.label_column}' "
                    f"{'is empty' if empty else f'holds {value!r}'}; expected a finite number (task.label_column)"
                )
            scores.append(score)
        return scores

    def _columns(self) -> dict[str, str]:
        columns = {"task.text_column": self.options.text_column, "task.label_column": self.options.label_column}
        if self.options.text_pair_column:
            columns["task.text_pair_column"] = self.options.text_pair_column
        return columns

    def resolved_options(self) -> RegressionOptions:
        if self.options.target_scaling == "none":
            return self.options
        return self.options.model_copy(update={"target_shift": self.shift, "target_scale": self.scale})

    # ------------------------------------------------------------------ model

    def model_kwargs(self) -> dict:
        return {"num_labels": 1, "problem_type": "regression", "id2label": {0: "score"}, "label2id": {"score": 0}}

    def setup(self, config, tokenizer) -> None:
        self.position_ids = is_decoder_only(config)

    def preprocess(self, dataset: datasets.Dataset, tokenizer, max_length: int) -> datasets.Dataset:
        o = self.options

        def targets(batch):  # what the head is trained towards: the scaled scores
            return [(parse_score(value) - self.shift) / self.scale for value in batch[o.label_column]]

        has_labels = o.label_column in dataset.column_names
        columns = (o.text_column, o.text_pair_column)
        encode = text_encoder(tokenizer, max_length, columns, self.position_ids, targets if has_labels else None)
        settings = (self.options.model_dump(), self.shift, self.scale, max_length, self.position_ids)
        return tokenize(dataset, tokenizer, encode, "regression/1", settings)

    # ------------------------------------------------------------------ training and evaluation

    @staticmethod
    def _inputs(batch: dict) -> dict:
        return {key: value for key, value in batch.items() if key not in ("index", "length", "labels")}

    def loss(self, model, batch: dict) -> torch.Tensor:
        outputs = model(**self._inputs(batch)).logits.float().squeeze(-1)
        return F.mse_loss(outputs, batch["labels"].float())

    def eval_step(self, model, batch: dict) -> dict[str, torch.Tensor]:
        outputs = model(**self._inputs(batch)).logits.float().squeeze(-1)
        # On the data's scale: the accumulator compares it with the scores as the data writes them.
        return {"index": batch["index"], "prediction": outputs * self.scale + self.shift}

    def new_accumulator(self, metric_names: tuple[str, ...]) -> RegressionAccumulator:
        return RegressionAccumulator(self, metric_names)

    def augment_fields(self, column_names: list[str]) -> AugmentFields:
        o = self.options
        return AugmentFields(texts=tuple(column for column in (o.text_column, o.text_pair_column) if column))

    def input_columns(self) -> dict[str, str]:
        return text_inputs(self.options.text_column, self.options.text_pair_column)

    # ------------------------------------------------------------------ reports and model card

    def row_statistics(self, rows: list[dict]) -> RowStatistics:
        """Pearson, MSE and MAE from per-row sums (x, y, x², y², xy, squared and absolute error, 1), so `compare`
        resamples them as sums; Spearman ranks the whole sample and has no such form, so it is not resampled."""
        x = np.array([row["predicted"] for row in rows], dtype=np.float64)
        y = np.array([row["reference"] for row in rows], dtype=np.float64)
        values = np.stack([x, y, x * x, y * y, x * y, (x - y) ** 2, np.abs(x - y), np.ones_like(x)], axis=-1)
        return RowStatistics(("pearson", "mse", "mae"), values.reshape(len(rows), 8), pearson_mse_mae)

    def plots(self, predictions: list[dict], split: str) -> dict[str, bytes]:
        """predicted_vs_gold.png: each example's prediction against its reference, with the diagonal."""
        rows = [row for row in predictions if "reference" in row]
        if not rows:
            return {}
        gold, predicted = [row["reference"] for row in rows], [row["predicted"] for row in rows]
        title = f"Predicted against gold ({split}, n={len(rows)})"
        return {"predicted_vs_gold.png": figures.scatter(gold, predicted, "gold", "predicted", title)}

    def card_description(self) -> str:
        pair = " pairs" if self.options.text_pair_column else "s"
        return f"regression of text{pair} onto a score"

    def usage_code(self, model: PushedModel, max_length: int) -> str:
        """The score of one text (or text pair) with plain transformers / peft, on the training data's scale."""
        texts = '["first text"], ["second text"]' if self.options.text_pair_column else '["an example text"]'
        head = ', num_labels=1, problem_type="regression"' if model.adapter else ""
        return (
            "import torch\n"
            + model.imports(self.auto_class)
            + "\n"
            + model.load(self.auto_class, head)
            + f'inputs = tokenizer({texts}, return_tensors="pt", truncation=True, max_length={max_length})\n'
            + "with torch.no_grad():\n    output = model(**inputs).logits[0, 0].item()\n"
            + f"print(round(output * {literal(self.scale)} + {literal(self.shift)}, 6))"
            + ("  # training scaled the scores\n" if self.options.target_scaling != "none" else "\n")
        )


def pearson_mse_mae(sums: np.ndarray) -> np.ndarray:
    """(..., 8) summed statistics of Regression.row_statistics -> (..., 3): Pearson (0 when a side is constant,
    as the task reports it), MSE, MAE."""
    sx, sy, sxx, syy, sxy, squared, absolute, n = np.moveaxis(sums, -1, 0)
    n = np.maximum(n, 1)
    spread = (n * sxx - sx * sx) * (n * syy - sy * sy)
    pearson = np.where(spread > 0, (n * sxy - sx * sy) / np.sqrt(np.maximum(spread, 1e-300)), 0.0)
    return np.stack([pearson, squared / n, absolute / n], axis=-1)


def correlation(first, second, kind: str) -> float:
    """Pearson or Spearman correlation; 0.0 when either side is constant (no correlation is defined)."""
    from scipy import stats

    if len(first) < 2 or min(first) == max(first) or min(second) == max(second):
        return 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = stats.pearsonr(first, second) if kind == "pearson" else stats.spearmanr(first, second)
    return float(result[0])


class RegressionAccumulator(Accumulator):
    """Keeps ids and predicted numbers; references are read from the data as written."""

    def result(self, dataset: datasets.Dataset, features: datasets.Dataset) -> tuple[dict, list[dict]]:
        columns = self.columns()
        predictions = columns["prediction"].double().tolist()
        indexes = columns["index"].tolist()
        options = self.task.options
        metrics: dict[str, float] = {"num_examples": len(predictions)}
        references = None
        if options.label_column in dataset.column_names:
            scores = dataset[options.label_column]
            references = [parse_score(scores[index]) for index in indexes]
            errors = [p - r for p, r in zip(predictions, references)]
            corpus = {
                "pearson": lambda: correlation(predictions, references, "pearson"),
                "spearman": lambda: correlation(predictions, references, "spearman"),
                "mse": lambda: sum(e * e for e in errors) / len(errors),
                "mae": lambda: sum(abs(e) for e in errors) / len(errors),
            }
            metrics.update({name: compute() for name, compute in corpus.items() if name in self.metric_names})
        input_columns = [column for column in (options.text_column, options.text_pair_column) if column]
        texts = {column: dataset[column] for column in input_columns}
        rows = []
        for position, index in enumerate(indexes):
            reference = example_metrics = None
            if references is not None:
                reference = references[position]
                example_metrics = {"absolute_error": abs(predictions[position] - reference)}
            inputs = {column: texts[column][index] for column in input_columns}
            rows.append(
                prediction_row(index, inputs, round(predictions[position], 6), None, reference, example_metrics)
            )
        return metrics, rows
