"""Multi-label text classification: any number of labels per text (emotions, topics, tags).

Labels arrive in one of three layouts: a list column (`"labels": ["joy", "love"]`, names or, under a hub
`Sequence(ClassLabel)` feature, integer ids), a delimited text column (`"joy,love"`, `task.label_delimiter`), or one
0/1 column per label (`task.label_columns`). The model gives each label its own sigmoid and learns with binary
cross-entropy (`task.pos_weight` weighs each label's positives); a label is predicted when its probability reaches its
decision threshold. After training the thresholds are tuned on the validation split (`task.threshold`) and saved in
the run's recipe (`task.thresholds`), so evaluate, predict, serve and export decide as the tuned run does.

Prediction rows: `probabilities` holds every label's probability, `predicted` the labels at or above their
thresholds, `reference` the gold labels, and `score` the probability the model gives the predicted label set as a
whole (labels taken as independent: the product of p over the predicted labels and of 1 - p over the others).
"""

from __future__ import annotations

import json
import warnings
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from ..common import figures
from ..common.errors import DataWarning, Notice, UserError
from ..common.lazy import F, datasets, torch
from ..data.augment import AugmentFields
from ..data.reading import describe, require_columns, row_location
from ..data.schema import DataSpec
from .base import Accumulator, LabelledTask, TaskOptions, check_texts, prediction_row, text_encoder, tokenize
from .card import PushedModel, literal

DEFAULT_THRESHOLD = 0.5
# The thresholds tuning tries: fine enough to matter, coarse enough not to fit the validation split's noise.
THRESHOLD_GRID = tuple(round(0.05 * step, 2) for step in range(1, 20))  # 0.05 .. 0.95
TUNE_CHOICES = ("tune-per-label", "tune-global")


class MultiLabelOptions(TaskOptions):
    """Multi-label text classification: any number of labels per text."""

    available_metrics: ClassVar[tuple[str, ...]] = (
        "macro_f1",
        "micro_f1",
        "samples_f1",
        "subset_accuracy",
        "jaccard",
        "cross_entropy",
    )
    tuned_fields: ClassVar[tuple[str, ...]] = ("thresholds",)

    type: Literal["multi_label"] = Field(description="The task.")
    text_column: str = Field("text", description="Column holding the text to classify.")
    label_column: str = Field(
        "labels",
        description="Column holding each text's labels: a list of label names (or integer ids under a hub "
        "Sequence(ClassLabel) feature), or one text of names separated by label_delimiter. Unused with label_columns.",
    )
    label_delimiter: str = Field(",", min_length=1, description="What separates the labels in a text label_column.")
    label_columns: list[str] | None = Field(
        None,
        description="One 0/1 column per label instead of label_column; the column names are the label names. A row "
        "may have no label.",
    )
    label_names: list[str] | None = Field(
        None,
        description="Label names in index order. Default: the dataset's class names, else the sorted distinct labels "
        "of the train split (label_columns: the column names).",
    )
    pos_weight: Literal["balanced"] | dict[str, float] | None = Field(
        None,
        description="Weight of each label's positive examples in the loss: balanced (negatives / positives of the "
        "label in train), or {label: weight} (unnamed labels 1); null: 1 for all. The run's recipe saves the weights "
        "used.",
    )
    threshold: Literal["tune-per-label", "tune-global"] | float | None = Field(
        None,
        description="How labels are decided: tune-per-label (each label's threshold maximises its F1 on validation), "
        "tune-global (one threshold maximising macro-F1 on validation) or a probability for every label. Default: "
        "tune-per-label with data.validation, else 0.5.",
    )
    thresholds: dict[str, float] | None = Field(
        None,
        description="Decision threshold of each label, set by training when task.threshold tunes them (edit it in a "
        "run's recipe.yaml to change what the run predicts); when set it overrides a numeric task.threshold.",
    )

    @field_validator("label_names", "label_columns")
    @classmethod
    def _distinct(cls, names: list[str] | None) -> list[str] | None:
        if names is not None:
            if len(names) < 2:
                raise ValueError("expected at least two labels")
            if len(set(names)) != len(names):
                raise ValueError(f"labels must be distinct, got {names}")
        return names

    @field_validator("threshold")
    @classmethod
    def _a_probability(cls, value):
        if isinstance(value, float) and not 0 < value < 1:
            raise ValueError(
                f"expected a probability between 0 and 1 (exclusive) or one of {TUNE_CHOICES}, got {value}"
            )
        return value

    @field_validator("thresholds")
    @classmethod
    def _probabilities(cls, values: dict[str, float] | None) -> dict[str, float] | None:
        for label, value in (values or {}).items():
            if not 0 <= value <= 1:
                raise ValueError(f"label '{label}': expected a probability between 0 and 1, got {value}")
        return values

    @field_validator("pos_weight")
    @classmethod
    def _positive_weights(cls, values):
        for label, value in values.items() if isinstance(values, dict) else ():
            if value <= 0:
                raise ValueError(f"label '{label}': expected a weight above 0, got {value}")
        return values

    @model_validator(mode="after")
    def _known_labels(self) -> MultiLabelOptions:
        if self.label_columns is not None and self.label_names not in (None, self.label_columns):
            raise ValueError(
                "label_names: with label_columns the column names are the label names; leave label_names out"
            )
        names = self.label_names or self.label_columns
        if names is None:
            return self
        for key, values in (("pos_weight", self.pos_weight), ("thresholds", self.thresholds)):
            unknown = [label for label in values or () if label not in names] if isinstance(values, dict) else []
            if unknown:
                raise ValueError(f"{key}: '{unknown[0]}' is not among the label names {names}")
        if self.thresholds is not None and set(self.thresholds) != set(names):
            missing = [label for label in names if label not in self.thresholds]
            raise ValueError(f"thresholds: no threshold for {missing}; expected one for every label")
        return self


def shown_names(names: list[str], limit: int = 12) -> str:
    """Label names for a message: all of them, or the first `limit` and how many more."""
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return "[" + ", ".join(names[:limit]) + more + "]"


class MultiLabelClassification(LabelledTask):
    name = "multi_label"
    options_class = MultiLabelOptions
    auto_class = "AutoModelForSequenceClassification"
    peft_task_type = "SEQ_CLS"
    # No architectures: a bare *ForSequenceClassification checkpoint reads as single-label classification;
    # `--set task.type=multi_label` says otherwise.
    predict_fields = {"text": "Text to classify (repeatable: one prediction each)."}
    example_metric = "jaccard"
    metric_labels = {
        "macro_f1": "macro-F1",
        "micro_f1": "micro-F1",
        "samples_f1": "samples-F1",
        "subset_accuracy": "subset accuracy",
        "jaccard": "Jaccard (samples)",
    }
    pipeline_tag = "text-classification"
    hub_task = ("text-classification", "Multi-label Text Classification")

    def __init__(self, options: MultiLabelOptions):
        super().__init__(options)
        self.label_names = options.label_names or options.label_columns
        # Integer labels index into label names that were given (recipe or a hub ClassLabel feature); otherwise
        # they are labels of their own, matched by value.
        self.index_labels = options.label_names is not None
        self.threshold = options.threshold
        self.thresholds = options.thresholds
        self.pos_weight = options.pos_weight

    # ------------------------------------------------------------------ checks

    def prepare(self, splits: dict[str, datasets.Dataset], spec: DataSpec) -> None:
        """Check every split's texts and labels; settle the label names, the threshold policy and the weights.

        Raises:
            UserError: a missing column, an empty text, a label outside the label names, a row with no label (list
                and text layouts), or a label column value other than 0 or 1; each with its row and column.
        """
        o, sources = self.options, spec.sources()
        for split, dataset in splits.items():
            where = describe(split, sources[split])
            require_columns(dataset.column_names, self._columns(), where)
            check_texts(dataset, (o.text_column,), where, sources[split])
        if self.label_names is None:
            train = splits["train"] if "train" in splits else next(iter(splits.values()))
            self.label_names = self._names_from_data(train)
        targets = {}
        for split, dataset in splits.items():
            labels = {column: dataset[column] for column in self.label_sources()}
            targets[split] = self._targets(labels, describe(split, sources[split]), sources[split])
        if "train" in targets:
            self._warn_unseen(targets["train"], describe("train", sources["train"]))
        self._check_label_keys()
        if self.threshold is None:
            self.threshold = "tune-per-label" if "validation" in splits else DEFAULT_THRESHOLD
        if self.threshold in TUNE_CHOICES and "validation" not in splits and "train" in splits:
            raise UserError(
                f"task.threshold: {self.threshold} tunes the decision thresholds on data.validation, which the recipe "
                "lacks; add data.validation or give a fixed threshold (e.g. task.threshold: 0.5)"
            )
        if self.pos_weight is not None and "train" in targets:
            self.pos_weight = self._settle_pos_weight(targets["train"])
            shown = ", ".join(f"{label}={weight:g}" for label, weight in self.pos_weight.items())
            warnings.warn(f"task.pos_weight: positive examples weighed per label in the loss: {shown}", Notice)

    def _check_label_keys(self) -> None:
        """The recipe's per-label mappings against label names read off the data (given names are checked with the
        recipe).

        Raises:
            UserError: a label the data does not have, or (thresholds) a label without a threshold.
        """
        names = self.label_names
        for key, values in (("pos_weight", self.pos_weight), ("thresholds", self.thresholds)):
            if not isinstance(values, dict):
                continue
            unknown = [label for label in values if label not in names]
            missing = [label for label in names if label not in values] if key == "thresholds" else []
            if unknown or missing:
                problem = f"'{unknown[0]}' is not a label" if unknown else f"no threshold for {missing}"
                raise UserError(f"task.{key}: {problem}; the labels are {shown_names(names)}")

    def _columns(self) -> dict[str, str]:
        o = self.options
        if o.label_columns is not None:
            return {"task.text_column": o.text_column, **{"task.label_columns": column for column in o.label_columns}}
        return {"task.text_column": o.text_column, "task.label_column": o.label_column}

    def _names_from_data(self, dataset: datasets.Dataset) -> list[str]:
        """A hub Sequence(ClassLabel)'s class names, else the sorted distinct labels of the split."""
        feature = dataset.features[self.options.label_column]
        names = getattr(getattr(feature, "feature", None), "names", None)
        if names:
            self.index_labels = True
            return list(names)
        found = set()
        for value in dataset[self.options.label_column]:
            found.update(str(label) for label in self._raw_labels(value) or ())
        if len(found) < 2:
            raise UserError(
                f"task.label_column: the train split has only the labels {sorted(found)}; multi-label classification "
                "needs at least two (or give task.label_names)"
            )
        return sorted(found)

    def _raw_labels(self, value) -> list | None:
        """A label column's value as a list of labels: a list as it is, a JSON list in a text, or a delimited text;
        None for anything else."""
        if isinstance(value, (list, tuple)):
            return list(value)
        if not isinstance(value, str):
            return None
        text = value.strip()
        if text.startswith("["):
            try:
                parsed = json.loads(text)
            except ValueError:
                return None
            return parsed if isinstance(parsed, list) else None
        return [part.strip() for part in text.split(self.options.label_delimiter) if part.strip()]

    def label_id(self, label) -> int | None:
        """A label's index: its name's position, or an integer index into label names that were given."""
        names = self.label_names
        if isinstance(label, str) and label in names:
            return names.index(label)
        if isinstance(label, bool) or not isinstance(label, (int, float)) or not float(label).is_integer():
            return None
        if str(int(label)) in names:
            return names.index(str(int(label)))
        return int(label) if self.index_labels and 0 <= label < len(names) else None

    def label_sources(self) -> list[str]:
        """The columns the labels are read from."""
        return self.options.label_columns or [self.options.label_column]

    def _targets(self, columns: dict[str, list], where: str, source) -> list[list[float]]:
        """Every row's labels (`columns`: the label_sources' values) as a 0/1 vector over the label names.

        Raises:
            UserError: the first bad row, with its location and column.
        """
        o = self.options
        if o.label_columns is not None:
            return [
                [self._flag(value, row, column, where, source) for value, column in zip(values, o.label_columns)]
                for row, values in enumerate(zip(*(columns[column] for column in o.label_columns)))
            ]
        return [self._target(value, row, where, source) for row, value in enumerate(columns[o.label_column])]

    @staticmethod
    def _flag(value, row: int, column: str, where: str, source) -> float:
        if not isinstance(value, bool) and isinstance(value, (int, float)) and value in (0, 1):
            return float(value)
        if isinstance(value, str) and value.strip() in ("0", "1"):
            return float(value.strip())
        raise UserError(
            f"{where} {row_location(source, row)}: column '{column}' holds {value!r}; expected 0 or 1 "
            "(task.label_columns: one 0/1 column per label)"
        )

    def _target(self, value, row: int, where: str, source) -> list[float]:
        column, delimiter = self.options.label_column, self.options.label_delimiter
        at = f"{where} {row_location(source, row) if source is not None else f'row {row + 1}'}"
        labels = self._raw_labels(value)
        if labels is None:
            raise UserError(
                f"{at}: column '{column}' holds {value!r}; expected a list of label names or a text of names "
                f"separated by '{delimiter}' (task.label_delimiter)"
            )
        if not labels:
            raise UserError(
                f"{at}: column '{column}' holds no label ({value!r}); expected at least one label name (rows without "
                "labels: use one 0/1 column per label, task.label_columns)"
            )
        target = [0.0] * len(self.label_names)
        for label in labels:
            index = self.label_id(label)
            if index is None:
                raise UserError(
                    f"{at}: label {label!r} in column '{column}' is not among the label names "
                    f"{shown_names(self.label_names)}; expected one of them (task.label_names)"
                )
            target[index] = 1.0
        return target

    def _warn_unseen(self, targets: list[list[float]], where: str) -> None:
        counts = [sum(column) for column in zip(*targets)] if targets else [0] * len(self.label_names)
        missing = [name for name, count in zip(self.label_names, counts) if count == 0]
        if missing:
            warnings.warn(
                f"{where}: no training example has the label {', '.join(map(repr, missing))}; the model cannot "
                "learn to predict it",
                DataWarning,
                stacklevel=3,
            )

    def _settle_pos_weight(self, targets: list[list[float]]) -> dict[str, float]:
        """The weights in use, by label: balanced ones from train's counts (1 for a label train never shows), or the
        recipe's mapping completed with 1."""
        if isinstance(self.pos_weight, dict):
            return {name: float(self.pos_weight.get(name, 1.0)) for name in self.label_names}
        positives = [sum(column) for column in zip(*targets)]
        return {
            name: round((len(targets) - count) / count, 4) if count else 1.0
            for name, count in zip(self.label_names, positives)
        }

    def resolved_options(self) -> MultiLabelOptions:
        return self.options.model_copy(
            update={
                "label_names": self.label_names,
                "threshold": self.threshold,
                "thresholds": self.thresholds,
                "pos_weight": self.pos_weight,
            }
        )

    # ------------------------------------------------------------------ thresholds

    def decision_thresholds(self) -> list[float]:
        """Each label's threshold: the tuned (or edited) `thresholds`, else a fixed `threshold`, else 0.5."""
        if self.thresholds is not None:
            return [float(self.thresholds[name]) for name in self.label_names]
        fixed = self.threshold if isinstance(self.threshold, float) else DEFAULT_THRESHOLD
        return [fixed] * len(self.label_names)

    def tune(self, rows: list[dict]) -> str | None:
        """Decision thresholds from the validation split's probabilities (task.threshold tune-per-label or
        tune-global); None when the thresholds are fixed or the rows carry no gold labels."""
        rows = [row for row in rows if "reference" in row]
        if self.threshold not in TUNE_CHOICES or not rows:
            return None
        names = self.label_names
        probabilities = torch.tensor([[row["probabilities"][name] for name in names] for row in rows])
        gold = torch.tensor([[float(name in row["reference"]) for name in names] for row in rows])
        before = macro_f1(probabilities >= torch.tensor(self.decision_thresholds()), gold)
        if self.threshold == "tune-per-label":
            chosen = tune_per_label(probabilities, gold)
            how = f"per label, each maximising its F1 (range {min(chosen):g}..{max(chosen):g})"
        else:
            chosen = [tune_global(probabilities, gold)] * len(names)
            how = f"one for all labels, maximising macro-F1 ({chosen[0]:g})"
        self.thresholds = dict(zip(names, chosen))
        after = macro_f1(probabilities >= torch.tensor(chosen), gold)
        return (
            f"decision thresholds tuned on validation {how}: macro-F1 {before:.4f} -> {after:.4f}; saved as "
            "task.thresholds in the run's recipe"
        )

    # ------------------------------------------------------------------ model

    def model_kwargs(self) -> dict:
        # Saved in the model's config: plain transformers (the text-classification pipeline) then uses sigmoids.
        return {**super().model_kwargs(), "problem_type": "multi_label_classification"}

    def preprocess(self, dataset: datasets.Dataset, tokenizer, max_length: int) -> datasets.Dataset:
        o = self.options
        has_labels = all(column in dataset.column_names for column in self.label_sources())

        def targets(batch):  # checked by prepare; a prediction input has none
            return self._targets(batch, "data", None)

        encode = text_encoder(
            tokenizer, max_length, (o.text_column, None), self.position_ids, targets if has_labels else None
        )

        settings = (o.model_dump(exclude={"thresholds"}), self.label_names, max_length, self.position_ids)
        return tokenize(dataset, tokenizer, encode, "multi_label/1", settings)

    # ------------------------------------------------------------------ training and evaluation

    @staticmethod
    def _inputs(batch: dict) -> dict:
        return {key: value for key, value in batch.items() if key not in ("index", "length", "labels")}

    def loss(self, model, batch: dict) -> torch.Tensor:
        logits = model(**self._inputs(batch)).logits.float()
        weights = None
        if self.pos_weight is not None:
            weights = torch.tensor([self.pos_weight[name] for name in self.label_names], device=logits.device)
        return F.binary_cross_entropy_with_logits(logits, batch["labels"].float(), pos_weight=weights)

    def eval_step(self, model, batch: dict) -> dict[str, torch.Tensor]:
        """Per example: every label's probability, and with gold labels those and the mean binary cross-entropy."""
        logits = model(**self._inputs(batch)).logits.float()
        outputs = {"index": batch["index"], "probabilities": logits.sigmoid()}
        if "labels" in batch:
            targets = batch["labels"].float()
            losses = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
            outputs["loss"] = losses.mean(-1)
            outputs["gold"] = targets
        return outputs

    def new_accumulator(self, metric_names: tuple[str, ...]) -> MultiLabelAccumulator:
        return MultiLabelAccumulator(self, metric_names)

    def augment_fields(self, column_names: list[str]) -> AugmentFields:
        return AugmentFields(texts=(self.options.text_column,))

    def input_columns(self) -> dict[str, str]:
        return {"text": self.options.text_column}

    # ------------------------------------------------------------------ reports and model card

    def metric_tables(self, metrics: dict) -> list[tuple[str, list[str], list[list]]]:
        per_label = metrics.get("per_label")
        if not per_label:
            return []
        thresholds = dict(zip(self.label_names, self.decision_thresholds()))
        rows = [
            [label, v["precision"], v["recall"], v["f1"], v["support"], thresholds.get(label, "")]
            for label, v in per_label.items()
        ]
        return [("Labels", ["label", "precision", "recall", "F1", "support", "threshold"], rows)]

    def plots(self, predictions: list[dict], split: str) -> dict[str, bytes]:
        """label_f1.png: each label's F1 on the split, with its number of gold examples."""
        rows = [row for row in predictions if "reference" in row]
        if not rows:
            return {}
        names = self.label_names
        gold = torch.tensor([[float(name in row["reference"]) for name in names] for row in rows])
        found = torch.tensor([[float(name in row["predicted"]) for name in names] for row in rows])
        scores = [100 * value for value in label_f1(found.bool(), gold)]
        support = gold.sum(0).int().tolist()
        figure, axes = figures.new_figure(7, 0.3 * len(names) + 1.5)
        axes.barh(names, scores, color="tab:blue")
        for y, (score, count) in enumerate(zip(scores, support)):
            axes.text(score + 1, y, f"{score:.1f} (n={count})", va="center", fontsize=8)
        axes.set(xlim=(0, 115), xlabel="F1 (%)", title=f"F1 by label ({split}, n={len(rows)})")
        axes.invert_yaxis()
        return {"label_f1.png": figures.to_png(figure)}

    def card_description(self) -> str:
        return f"multi-label text classification (labels: {', '.join(self.label_names)})"

    def usage_code(self, model: PushedModel, max_length: int) -> str:
        """Every label's probability and the labels at or above their thresholds, with plain transformers / peft."""
        thresholds = dict(zip(self.label_names, self.decision_thresholds()))
        return (
            "import torch\n"
            + model.imports(self.auto_class)
            + "\n"
            + self.load_snippet(model)
            + f"thresholds = {thresholds!r}  # the run's decision thresholds (task.thresholds)\n"
            + f"inputs = tokenizer({literal('an example text')}, return_tensors='pt', truncation=True, "
            + f"max_length={max_length})\n"
            + "with torch.no_grad():\n    probabilities = model(**inputs).logits.sigmoid()[0]\n"
            + "print([label for label, p in zip(labels, probabilities.tolist()) if p >= thresholds[label]])\n"
        )


# ---------------------------------------------------------------------------------------------- threshold tuning


def label_f1(predicted: torch.Tensor, gold: torch.Tensor) -> list[float]:
    """Each label's F1 (columns of boolean predictions against 0/1 gold); 0 where a label is neither predicted nor
    gold, as scikit-learn's zero_division=0 counts it."""
    hits = (predicted & gold.bool()).sum(0).double()
    denominator = predicted.sum(0).double() + gold.sum(0).double()
    return torch.where(denominator > 0, 2 * hits / denominator.clamp(min=1), 0.0).tolist()


def macro_f1(predicted: torch.Tensor, gold: torch.Tensor) -> float:
    scores = label_f1(predicted, gold)
    return sum(scores) / len(scores)


def _best(scores: list[float]) -> float:
    """The grid threshold with the highest score; among equals, the one nearest 0.5 (the least extreme)."""
    top = max(scores)
    ties = [t for t, score in zip(THRESHOLD_GRID, scores) if score >= top - 1e-12]
    return min(ties, key=lambda t: (abs(t - DEFAULT_THRESHOLD), t))


def tune_per_label(probabilities: torch.Tensor, gold: torch.Tensor) -> list[float]:
    """Each label's threshold maximising its own F1 on the grid; 0.5 for a label the rows never show (its F1 is 0
    at every threshold, so the data says nothing)."""
    scores = [label_f1(probabilities >= t, gold) for t in THRESHOLD_GRID]  # [threshold][label]
    positives = gold.sum(0).tolist()
    return [
        _best([row[label] for row in scores]) if positives[label] else DEFAULT_THRESHOLD
        for label in range(gold.shape[1])
    ]


def tune_global(probabilities: torch.Tensor, gold: torch.Tensor) -> float:
    """One threshold for every label, maximising macro-F1: the main metric, and one that weighs rare labels like
    frequent ones, so the threshold is not set by the few labels most examples carry (micro-F1 would be)."""
    return _best([macro_f1(probabilities >= t, gold) for t in THRESHOLD_GRID])


# ---------------------------------------------------------------------------------------------- accumulator


class MultiLabelAccumulator(Accumulator):
    """Keeps ids, every label's probability and the gold vectors; the decisions apply the task's thresholds."""

    def result(self, dataset: datasets.Dataset, features: datasets.Dataset) -> tuple[dict, list[dict]]:
        task = self.task
        columns = self.columns()
        probabilities = columns["probabilities"]
        predicted = probabilities >= torch.tensor(task.decision_thresholds())
        # The probability of the predicted set as a whole, labels taken as independent.
        score = torch.where(predicted, probabilities, 1 - probabilities).double().log().sum(-1).exp()
        gold = columns.get("gold")
        metrics: dict = {"num_examples": len(probabilities)}
        if gold is not None:
            metrics.update(corpus_metrics(predicted, gold, columns["loss"], task.label_names, self.metric_names))
        names, text_column = task.label_names, task.options.text_column
        texts = dataset[text_column]
        rows = []
        for position, index in enumerate(columns["index"].tolist()):
            chosen = [name for name, on in zip(names, predicted[position].tolist()) if on]
            reference = example_metrics = None
            if gold is not None:
                reference = [name for name, on in zip(names, gold[position].tolist()) if on]
                example_metrics = example_scores(set(chosen), set(reference), float(columns["loss"][position]))
            rows.append(
                prediction_row(
                    index,
                    {text_column: texts[index]},
                    chosen,
                    score[position],
                    reference,
                    example_metrics,
                    probabilities={name: round(float(p), 6) for name, p in zip(names, probabilities[position])},
                )
            )
        return metrics, rows


def example_scores(chosen: set[str], reference: set[str], loss: float) -> dict:
    """One example's Jaccard index (1 when both sets are empty), exact match and mean binary cross-entropy."""
    union = chosen | reference
    return {
        "jaccard": len(chosen & reference) / len(union) if union else 1.0,
        "exact_match": float(chosen == reference),
        "cross_entropy": loss,
    }


def corpus_metrics(
    predicted: torch.Tensor, gold: torch.Tensor, losses: torch.Tensor, names: list[str], metric_names: tuple[str, ...]
) -> dict:
    """scikit-learn's multi-label scores. F1 over labels (micro, macro) counts a label neither predicted nor gold as 0
    (zero_division=0, the usual convention for GoEmotions); per example (samples F1, Jaccard), an example with no gold
    label and none predicted is right (1)."""
    from sklearn.metrics import accuracy_score, f1_score, jaccard_score, precision_recall_fscore_support

    y_true, y_pred = gold.int().numpy(), predicted.int().numpy()
    scorers = {
        "macro_f1": lambda: f1_score(y_true, y_pred, average="macro", zero_division=0),
        "micro_f1": lambda: f1_score(y_true, y_pred, average="micro", zero_division=0),
        "samples_f1": lambda: f1_score(y_true, y_pred, average="samples", zero_division=1),
        "subset_accuracy": lambda: accuracy_score(y_true, y_pred),
        "jaccard": lambda: jaccard_score(y_true, y_pred, average="samples", zero_division=1),
        "cross_entropy": lambda: losses.double().mean(),
    }
    metrics = {name: float(scorer()) for name, scorer in scorers.items() if name in metric_names}
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, average=None, zero_division=0)
    metrics["per_label"] = {
        name: {
            "precision": round(float(p), 6),
            "recall": round(float(r), 6),
            "f1": round(float(f), 6),
            "support": int(s),
        }
        for name, p, r, f, s in zip(names, precision, recall, f1, support)
    }
    return metrics
