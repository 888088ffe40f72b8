"""Sentiment / text classification: single texts or text pairs, one label each."""

from __future__ import annotations

import math
import warnings
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field, field_validator

from ..common import figures
from ..common.errors import DataWarning, Notice, UserError
from ..common.lazy import F, datasets, torch
from ..data.augment import AugmentFields
from ..data.reading import describe, require_columns, row_location
from ..data.schema import DataSpec
from ..metrics import classification as classification_metrics
from .base import (
    Accumulator,
    LabelledTask,
    RowStatistics,
    check_texts,
    f1_from_counts,
    prediction_row,
    text_encoder,
    text_inputs,
    tokenize,
)
from .calibration import CalibrationOptions, TemperatureScaled, calibration_bins, expected_calibration_error
from .card import PushedModel


class ClassificationOptions(CalibrationOptions):
    """Sentiment / text classification of single texts or text pairs."""

    available_metrics: ClassVar[tuple[str, ...]] = ("accuracy", "macro_f1", "cross_entropy")

    type: Literal["classification"] = Field(description="The task.")
    text_column: str = Field("text", description="Column holding the text to classify.")
    text_pair_column: str | None = Field(
        None, description="Second text column for pair tasks (NLI, paraphrase); null for single texts."
    )
    label_column: str = Field(
        "label", description="Column holding the label: a label name or an integer index into label_names."
    )
    label_names: list[str] | None = Field(
        None,
        description="Label names in index order. Default: the dataset's class names, else the sorted distinct labels "
        "of the train split.",
    )

    class_weights: Literal["balanced"] | dict[str, float] | None = Field(
        None,
        description="Weigh the training loss by label, for imbalanced data: `balanced` (n / (labels * count) on the "
        "train split, as scikit-learn does) or `{label: weight}` (labels left out weigh 1). The run's recipe holds "
        "the weights used, `balanced` resolved to its mapping. Validation cross-entropy stays unweighted.",
    )

    @field_validator("class_weights", mode="before")
    @classmethod
    def _balanced_or_positive_weights(cls, weights):
        """One message for either form, instead of one per member of the union."""
        if weights is None or weights == "balanced":
            return weights
        if not isinstance(weights, dict):
            raise ValueError(f"expected `balanced` or a mapping {{label: weight}}, got {weights!r}")
        for label, weight in weights.items():
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 < weight < math.inf:
                raise ValueError(f"the weight of label {label!r} is {weight!r}; expected a positive number")
        # YAML reads `{0: 2.0}` with an integer key; label names are text.
        return {str(label): float(weight) for label, weight in weights.items()}

    @field_validator("label_names")
    @classmethod
    def _distinct_labels(cls, names: list[str] | None) -> list[str] | None:
        if names is not None:
            if len(names) < 2:
                raise ValueError("expected at least two label names")
            if len(set(names)) != len(names):
                raise ValueError(f"label names must be distinct, got {names}")
        return names


class Classification(TemperatureScaled, LabelledTask):
    name = "classification"
    options_class = ClassificationOptions
    auto_class = "AutoModelForSequenceClassification"
    peft_task_type = "SEQ_CLS"
    architectures = ("ForSequenceClassification",)
    audits_labels = True
    predict_fields = {
        "text": "Text to classify (repeatable: one prediction each).",
        "text_pair": "Classification of text pairs: the second text of each --text.",
    }
    example_metric = "correct"
    metric_labels = {"accuracy": "accuracy", "macro_f1": "macro-F1", "ece": "ECE (15 bins)"}
    pipeline_tag = "text-classification"
    hub_task = ("text-classification", "Text Classification")

    def __init__(self, options: ClassificationOptions):
        super().__init__(options)
        # Integer labels index into label names that were given (recipe or dataset class names),
        # but must match by value when the names were read off the data.
        self.index_labels = options.label_names is not None
        # {label name: loss weight}: a mapping from the recipe (a run's recipe holds `balanced` resolved); `prepare`
        # settles `balanced` on train.
        self.class_weights: dict[str, float] | None = (
            options.class_weights if isinstance(options.class_weights, dict) else None
        )
        self._weight_tensor = None  # the weights in label order, on the device of the first batch

    # ------------------------------------------------------------------ checks

    def prepare(self, splits: dict[str, datasets.Dataset], spec: DataSpec) -> None:
        """Check the columns, texts and labels of every split and settle the label names.

        Raises:
            UserError: a missing column, an empty text, or a label outside the label names.
        """
        sources = spec.sources()
        for split, dataset in splits.items():
            require_columns(dataset.column_names, self._columns(), describe(split, sources[split]))
            columns = (self.options.text_column, self.options.text_pair_column)
            check_texts(dataset, columns, describe(split, sources[split]), sources[split])
        if self.label_names is None:
            train = splits["train"] if "train" in splits else next(iter(splits.values()))
            self.index_labels = isinstance(train.features[self.options.label_column], datasets.ClassLabel)
            self.label_names = self._names_from_data(train)
        for split, dataset in splits.items():
            self._check_labels(dataset, split, describe(split, sources[split]), sources[split])
        if self.options.class_weights is not None:
            self._settle_class_weights(splits["train"] if "train" in splits else next(iter(splits.values())))

    def _settle_class_weights(self, train: datasets.Dataset) -> None:
        """Resolve `balanced` on the train split's label counts, check a mapping's label names, and say once which
        weights the loss uses.

        Raises:
            UserError: a label in the mapping that is not among the label names.
        """
        names, weights = self.label_names, self.options.class_weights
        if weights == "balanced":
            counts = [0] * len(names)
            for value in train[self.options.label_column]:
                counts[self.label_id(value)] += 1
            total, present = sum(counts), sum(1 for count in counts if count)
            # A label train never shows adds nothing to the loss whatever its weight; 1 keeps the mapping finite.
            weights = {name: total / (present * count) if count else 1.0 for name, count in zip(names, counts)}
        unknown = [name for name in weights if name not in names]
        if unknown:
            raise UserError(
                f"task.class_weights: label {unknown[0]!r} is not among the label names {names}; "
                "expected weights for those labels (or `balanced`)"
            )
        self.class_weights = {name: round(float(weights.get(name, 1.0)), 6) for name in names}
        shown = ", ".join(f"{name!r}: {weight:g}" for name, weight in self.class_weights.items())
        how = " (balanced on the train split)" if self.options.class_weights == "balanced" else ""
        warnings.warn(f"task.class_weights: the training loss weighs {shown}{how}", Notice, stacklevel=3)

    def resolved_options(self) -> ClassificationOptions:
        return super().resolved_options().model_copy(update={"class_weights": self.class_weights})

    def _check_labels(self, dataset: datasets.Dataset, split: str, where: str, source) -> None:
        """Every label is a known name (or index); a label name that train never shows is worth a warning."""
        seen = set()
        for row, value in enumerate(dataset[self.options.label_column]):
            seen.add(self.label_id(value))
            if None in seen:
                indexes = f" or an index 0..{len(self.label_names) - 1}" if self.index_labels else ""
                raise UserError(
                    f"{where} {row_location(source, row)}: label {value!r} in column '{self.options.label_column}' is "
                    f"not among the label names {self.label_names}; expected one of them{indexes} (task.label_names)"
                )
        self._warn_mixed_labels(dataset[self.options.label_column], where)
        missing = [name for index, name in enumerate(self.label_names) if index not in seen]
        if split == "train" and missing:
            warnings.warn(
                f"{where}: no training example has the label {', '.join(map(repr, missing))} (task.label_names); the "
                "model cannot learn to predict it",
                DataWarning,
                stacklevel=3,
            )

    def _warn_mixed_labels(self, values: list, where: str) -> None:
        """A column of label names with integers among them (`positive`, `0`, `1`) is most likely two conventions
        mixed by mistake: the integers count as indices, or as labels of their own, without a word otherwise."""
        integers, names = set(), set()
        for value in values:
            text = str(value).strip()
            if isinstance(value, bool) or value is None:
                continue
            if isinstance(value, int) or (isinstance(value, float) and value.is_integer()) or text.isdigit():
                integers.add(int(float(text)))
            elif isinstance(value, str):
                names.add(text)
        if not integers or not names:
            return
        reading = (
            f"the integers are read as indices into {self.label_names}"
            if self.index_labels
            else f"each integer is a label of its own, so the labels are {self.label_names}"
        )
        warnings.warn(
            f"{where}: column '{self.options.label_column}' mixes label names ({', '.join(sorted(names)[:5])}) with "
            f"integers ({', '.join(map(str, sorted(integers)[:5]))}); {reading}. Use one kind of label",
            DataWarning,
            stacklevel=4,
        )

    def _columns(self) -> dict[str, str]:
        columns = {"task.text_column": self.options.text_column, "task.label_column": self.options.label_column}
        if self.options.text_pair_column:
            columns["task.text_pair_column"] = self.options.text_pair_column
        return columns

    def _names_from_data(self, dataset: datasets.Dataset) -> list[str]:
        feature = dataset.features[self.options.label_column]
        if isinstance(feature, datasets.ClassLabel):
            return list(feature.names)
        values = {value for value in dataset[self.options.label_column] if value is not None}
        numeric = all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in values)
        names = [str(value) for value in sorted(values, key=float if numeric else str)]
        if len(names) < 2:
            raise UserError(
                f"task.label_column: the train split has only the label {names}; "
                "classification needs at least two labels"
            )
        return names

    def label_id(self, value) -> int | None:
        """A label value's class id: its name's position, or an integer index when label names were given."""
        names = self.label_names
        if isinstance(value, bool):  # a CSV cell True / False: the names read off such data are "True" / "False"
            return names.index(str(value)) if str(value) in names else None
        if isinstance(value, str) and value in names:
            return names.index(value)
        if isinstance(value, str) and value.strip().isdigit() and self.index_labels:
            return self.label_id(int(value))
        if isinstance(value, int):
            if str(value) in names:
                return names.index(str(value))
            if self.index_labels and 0 <= value < len(names):
                return value
        if isinstance(value, float) and value.is_integer():
            return self.label_id(int(value))
        return None

    # ------------------------------------------------------------------ model

    def preprocess(self, dataset: datasets.Dataset, tokenizer, max_length: int) -> datasets.Dataset:
        o = self.options

        def labels(batch):
            return [self.label_id(value) for value in batch[o.label_column]]

        has_labels = o.label_column in dataset.column_names
        columns = (o.text_column, o.text_pair_column)
        encode = text_encoder(tokenizer, max_length, columns, self.position_ids, labels if has_labels else None)
        settings = (self.options.model_dump(), self.label_names, max_length, self.position_ids)
        return tokenize(dataset, tokenizer, encode, "classification/3", settings)

    # ------------------------------------------------------------------ training and evaluation

    @staticmethod
    def _inputs(batch: dict) -> dict:
        return {key: value for key, value in batch.items() if key not in ("index", "length", "labels")}

    def loss(self, model, batch: dict) -> torch.Tensor:
        logits = model(**self._inputs(batch)).logits
        return F.cross_entropy(logits.float(), batch["labels"], weight=self._loss_weights(logits.device))

    def _loss_weights(self, device) -> torch.Tensor | None:
        """task.class_weights in label order, as a tensor on the batch's device; None: every label weighs 1."""
        if self.class_weights is None:
            return None
        if self._weight_tensor is None or self._weight_tensor.device != device:
            weights = [self.class_weights.get(name, 1.0) for name in self.label_names]
            self._weight_tensor = torch.tensor(weights, dtype=torch.float32, device=device)
        return self._weight_tensor

    def eval_step(self, model, batch: dict) -> dict[str, torch.Tensor]:
        # The fitted temperature (1 before calibration) scales the probabilities and the per-example loss alike.
        logits = model(**self._inputs(batch)).logits.float() / self.temperature()
        outputs = {"index": batch["index"], "probabilities": logits.softmax(-1)}
        if "labels" in batch:
            outputs["loss"] = F.cross_entropy(logits, batch["labels"], reduction="none")
            outputs["label"] = batch["labels"]
        return outputs

    def new_accumulator(self, metric_names: tuple[str, ...]) -> ClassificationAccumulator:
        return ClassificationAccumulator(self, metric_names)

    def augment_fields(self, column_names: list[str]) -> AugmentFields:
        o = self.options
        return AugmentFields(texts=tuple(column for column in (o.text_column, o.text_pair_column) if column))

    def leakage_fields(self, column_names: list[str]) -> list[tuple[str, ...]]:
        """The text, and its pair joined to it: a pair is a duplicate only when both texts are."""
        return [tuple(column for column in (self.options.text_column, self.options.text_pair_column) if column)]

    def input_columns(self) -> dict[str, str]:
        return text_inputs(self.options.text_column, self.options.text_pair_column)

    def row_statistics(self, rows: list[dict]) -> RowStatistics:
        """Accuracy and macro-F1 (over every label name, as evaluation computes it) from per-class hits, predictions
        and references; cross-entropy as a mean."""
        position = {name: number for number, name in enumerate(self.label_names)}
        classes = len(position)
        values = np.zeros((len(rows), 3 + 3 * classes))
        for number, row in enumerate(rows):
            predicted, reference = position[row["predicted"]], position[row["reference"]]
            values[number, :3] = row["metrics"]["correct"], row["metrics"]["cross_entropy"], 1.0
            values[number, 3 + predicted] = 1.0  # predicted as this class
            values[number, 3 + classes + reference] = 1.0  # is this class
            values[number, 3 + 2 * classes + predicted] = float(predicted == reference)  # hit

        def combine(sums: np.ndarray) -> np.ndarray:
            count = np.maximum(sums[..., 2], 1)
            predicted, gold, hits = np.split(sums[..., 3:], 3, axis=-1)
            macro_f1 = f1_from_counts(hits, predicted, gold).mean(axis=-1)
            return np.stack([sums[..., 0] / count, macro_f1, sums[..., 1] / count], axis=-1)

        return RowStatistics(("accuracy", "macro_f1", "cross_entropy"), values, combine)

    # ------------------------------------------------------------------ reports and model card

    def plots(self, predictions: list[dict], split: str) -> dict[str, bytes]:
        """confusion_matrix.png: gold against predicted labels; reliability.png: accuracy against confidence."""
        rows = [row for row in predictions if "reference" in row]
        if not rows:
            return {}
        counts = confusion_counts(rows, self.label_names)
        title = f"Confusion matrix ({split}, n={len(rows)})"
        confidences, correct = self.calibration_pairs(rows)
        ece = expected_calibration_error(confidences, correct)
        return {
            "confusion_matrix.png": figures.heatmap(counts, self.label_names, "predicted", "gold", title),
            figures.RELIABILITY_PNG: figures.reliability(
                calibration_bins(confidences, correct), f"Reliability ({split}, n={len(rows)}, ECE={ece:.4f})"
            ),
        }

    def card_description(self) -> str:
        return f"text classification (labels: {', '.join(self.label_names)})"

    def usage_code(self, model: PushedModel, max_length: int) -> str:
        """Class probabilities of one text (or text pair) with plain transformers / peft."""
        texts = '["first text"], ["second text"]' if self.options.text_pair_column else '["an example text"]'
        return (
            "import torch\n"
            + model.imports(self.auto_class)
            + "\n"
            + self.load_snippet(model)
            + f'inputs = tokenizer({texts}, return_tensors="pt", truncation=True)\n'
            + "with torch.no_grad():\n    logits = model(**inputs).logits\n"
            + (
                f"logits = logits / {self.options.temperature!r}  # the temperature fitted on validation\n"
                if self.options.temperature
                else ""
            )
            + "probabilities = logits.softmax(-1)[0]\n"
            + "print({label: round(p.item(), 4) for label, p in zip(labels, probabilities)})\n"
        )


def confusion_counts(rows: list[dict], names: list[str]) -> list[list[int]]:
    """counts[gold][predicted] over label names, from prediction rows with references."""
    index = {name: i for i, name in enumerate(names)}
    counts = [[0] * len(names) for _ in names]
    for row in rows:
        counts[index[row["reference"]]][index[row["predicted"]]] += 1
    return counts


class ClassificationAccumulator(Accumulator):
    """Keeps ids, class probabilities and losses; never logits."""

    def result(self, dataset: datasets.Dataset, features: datasets.Dataset) -> tuple[dict, list[dict]]:
        columns = self.columns()
        probabilities = columns["probabilities"]
        predictions = probabilities.argmax(-1).tolist()
        names, options = self.task.label_names, self.task.options
        metrics: dict[str, float] = {"num_examples": len(predictions)}
        labels = columns["label"].tolist() if "label" in columns else None
        if labels is not None:
            if "accuracy" in self.metric_names:
                metrics["accuracy"] = classification_metrics.accuracy(predictions, labels)
            if "macro_f1" in self.metric_names:
                metrics["macro_f1"] = classification_metrics.macro_f1(predictions, labels, list(range(len(names))))
            if "cross_entropy" in self.metric_names:
                metrics["cross_entropy"] = float(columns["loss"].double().mean())
            top = probabilities.max(-1).values.tolist()  # ECE (tasks/calibration.py) whatever the metrics asked
            metrics["ece"] = expected_calibration_error(top, [float(p == g) for p, g in zip(predictions, labels)])
        input_columns = [column for column in (options.text_column, options.text_pair_column) if column]
        texts = {column: dataset[column] for column in input_columns}
        rows = []
        for position, index in enumerate(columns["index"].tolist()):
            predicted = predictions[position]
            reference = example_metrics = None
            if labels is not None:
                reference = names[labels[position]]
                loss = float(columns["loss"][position])
                example_metrics = {"correct": float(predicted == labels[position]), "cross_entropy": loss}
            rows.append(
                prediction_row(
                    index,
                    {column: texts[column][index] for column in input_columns},
                    names[predicted],
                    probabilities[position, predicted],
                    reference,
                    example_metrics,
                    probabilities={name: round(float(p), 6) for name, p in zip(names, probabilities[position])},
                )
            )
        return metrics, rows
