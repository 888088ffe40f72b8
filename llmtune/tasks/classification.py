"""Sentiment / text classification: single texts or text pairs, one label each."""

from __future__ import annotations

import datasets
import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification

from .. import metrics as metric_modules
from ..data import describe, require_columns, row_location, tokenization_fingerprint
from ..errors import UserError
from ..recipe import ClassificationTask, DataSpec
from .card import PushedModel
from .outputs import CollectedOutputs


class Classification:
    auto_class = AutoModelForSequenceClassification
    peft_task_type = "SEQ_CLS"
    metadata_columns: tuple[str, ...] = ()
    pipeline_tag = "text-classification"
    hub_task = ("text-classification", "Text Classification")
    predict_options = '--text "..."'

    def __init__(self, options: ClassificationTask):
        self.options = options
        self.label_names: list[str] | None = options.label_names
        # Integer labels index into label names that were given (recipe or dataset class names),
        # but must match by value when the names were read off the data.
        self.index_labels = options.label_names is not None
        self.position_ids = False  # set by setup() for decoder-only models

    # ------------------------------------------------------------------ checks

    def prepare(self, splits: dict[str, datasets.Dataset], spec: DataSpec) -> None:
        """Check the columns and the label values of every split and settle the label names.

        Raises:
            UserError: a missing column, an empty text, or a label outside the label names.
        """
        sources = spec.sources()
        for split, dataset in splits.items():
            where = describe(split, sources[split])
            require_columns(dataset, self._columns(), where)
            for column in filter(None, (self.options.text_column, self.options.text_pair_column)):
                for row, text in enumerate(dataset[column]):
                    if not isinstance(text, str):
                        raise UserError(
                            f"{where} {row_location(sources[split], row)}: column '{column}' holds {text!r}; expected text"
                        )
        if self.label_names is None:
            train = splits["train"] if "train" in splits else next(iter(splits.values()))
            self.index_labels = isinstance(train.features[self.options.label_column], datasets.ClassLabel)
            self.label_names = self._names_from_data(train)
        for split, dataset in splits.items():
            where = describe(split, sources[split])
            for row, value in enumerate(dataset[self.options.label_column]):
                if self.label_id(value) is None:
                    raise UserError(
                        f"{where} {row_location(sources[split], row)}: label {value!r} in column '{self.options.label_column}' is not among the "
                        f"label names {self.label_names}; expected one of them or an index 0..{len(self.label_names) - 1} (task.label_names)"
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
                f"task.label_column: the train split has only the label {names}; classification needs at least two labels"
            )
        return names

    def label_id(self, value) -> int | None:
        """A label value's class id: its name's position, or an integer index when label names were given."""
        names = self.label_names
        if isinstance(value, str) and value in names:
            return names.index(value)
        if isinstance(value, int) and not isinstance(value, bool):
            if str(value) in names:
                return names.index(str(value))
            if self.index_labels and 0 <= value < len(names):
                return value
        if isinstance(value, float) and value.is_integer():
            return self.label_id(int(value))
        return None

    # ------------------------------------------------------------------ model

    def model_kwargs(self) -> dict:
        return {
            "num_labels": len(self.label_names),
            "id2label": dict(enumerate(self.label_names)),
            "label2id": {name: index for index, name in enumerate(self.label_names)},
        }

    def setup(self, config, tokenizer) -> None:
        """Decoder-only models (GPT-2, Llama, ...) get explicit position ids, so an example is classified the
        same whether it is padded on the left, on the right, or not at all (the model pools its last
        non-pad token; absolute position embeddings would otherwise shift with left padding)."""
        from ..models import is_decoder_only

        self.position_ids = is_decoder_only(config)

    def _encode(self, tokenizer, texts, pairs, max_length: int) -> list[dict]:
        """Model inputs per text (position ids 0..n-1 for decoder-only models; the collator pads them with 0)."""
        encoded = tokenizer(texts, pairs, truncation=True, max_length=max_length)
        keep = set(tokenizer.model_input_names)
        features = [{key: encoded[key][i] for key in encoded if key in keep} for i in range(len(texts))]
        if self.position_ids:
            for feature in features:
                feature["position_ids"] = list(range(len(feature["input_ids"])))
        return features

    def preprocess(self, dataset: datasets.Dataset, tokenizer, max_length: int) -> datasets.Dataset:
        text, pair, label = self.options.text_column, self.options.text_pair_column, self.options.label_column
        has_labels = label in dataset.column_names

        def encode(batch, indices):
            encoded = self._encode(tokenizer, batch[text], batch[pair] if pair else None, max_length)
            features = {key: [example[key] for example in encoded] for key in encoded[0]}
            features["index"] = indices
            features["length"] = [len(ids) for ids in features["input_ids"]]
            if has_labels:
                features["labels"] = [self.label_id(value) for value in batch[label]]
            return features

        fingerprint = tokenization_fingerprint(
            dataset,
            tokenizer,
            "classification/2",
            self.options.model_dump(),
            self.label_names,
            max_length,
            self.position_ids,
        )
        return dataset.map(
            encode,
            batched=True,
            with_indices=True,
            remove_columns=dataset.column_names,
            desc="Tokenizing",
            new_fingerprint=fingerprint,
        )

    # ------------------------------------------------------------------ training and evaluation

    @staticmethod
    def _inputs(batch: dict) -> dict:
        return {key: value for key, value in batch.items() if key not in ("index", "length", "labels")}

    def loss(self, model, batch: dict) -> torch.Tensor:
        logits = model(**self._inputs(batch)).logits
        return F.cross_entropy(logits.float(), batch["labels"])

    def eval_step(self, model, batch: dict) -> dict[str, torch.Tensor]:
        logits = model(**self._inputs(batch)).logits.float()
        probabilities = logits.softmax(-1)
        outputs = {"index": batch["index"], "prediction": logits.argmax(-1), "confidence": probabilities.max(-1).values}
        if "labels" in batch:
            outputs["loss"] = F.cross_entropy(logits, batch["labels"], reduction="none")
            outputs["label"] = batch["labels"]
        return outputs

    def new_accumulator(self, metric_names: tuple[str, ...]) -> ClassificationAccumulator:
        return ClassificationAccumulator(self, metric_names)

    def predict(self, model, tokenizer, rows: list[dict], max_length: int, batch_size: int = 64) -> list[dict]:
        """Label and class probabilities for each row (a dict with the text column(s))."""
        from ..batching import PadCollator

        text, pair = self.options.text_column, self.options.text_pair_column
        collate = PadCollator(tokenizer.pad_token_id, tokenizer.padding_side)
        results = []
        device = next(model.parameters()).device
        model.eval()
        with torch.inference_mode():
            for start in range(0, len(rows), batch_size):
                chunk = rows[start : start + batch_size]
                features = self._encode(
                    tokenizer, [r[text] for r in chunk], [r[pair] for r in chunk] if pair else None, max_length
                )
                batch = {key: value.to(device) for key, value in collate(features).items()}
                probabilities = model(**batch).logits.float().softmax(-1).cpu()
                for row, probs in zip(chunk, probabilities):
                    best = int(probs.argmax())
                    results.append(
                        {
                            **row,
                            "label": self.label_names[best],
                            "score": round(float(probs[best]), 6),
                            "probabilities": {name: round(float(p), 6) for name, p in zip(self.label_names, probs)},
                        }
                    )
        return results

    # ------------------------------------------------------------------ model card

    def card_description(self) -> str:
        return f"text classification (labels: {', '.join(self.label_names)})"

    def usage_code(self, model: PushedModel, max_length: int) -> str:
        """Class probabilities of one text (or text pair) with plain transformers / peft."""
        auto = self.auto_class.__name__
        if model.adapter:  # the base model needs the label names to build its classification head
            labels = f"labels = {self.label_names!r}\n"
            load = labels + model.load(
                auto,
                ", num_labels=len(labels),\n    id2label=dict(enumerate(labels)), label2id={name: i for i, name in enumerate(labels)}",
            )
        else:
            load = model.load(auto) + "labels = [model.config.id2label[i] for i in range(model.config.num_labels)]\n"
        texts = '["first text"], ["second text"]' if self.options.text_pair_column else '["an example text"]'
        return (
            "import torch\n"
            + model.imports(auto)
            + "\n"
            + load
            + f'inputs = tokenizer({texts}, return_tensors="pt", truncation=True)\n'
            + "with torch.no_grad():\n    probabilities = model(**inputs).logits.softmax(-1)[0]\n"
            + "print({label: round(p.item(), 4) for label, p in zip(labels, probabilities)})\n"
        )


class ClassificationAccumulator(CollectedOutputs):
    """Streams per-example results; keeps only ids, losses and confidences, never logits."""

    def result(self, dataset: datasets.Dataset, features: datasets.Dataset | None = None) -> tuple[dict, list[dict]]:
        """Metrics over everything added, and one prediction row per example in dataset order."""
        columns = self.columns()
        order = columns["index"].argsort()
        columns = {key: value[order] for key, value in columns.items()}
        predictions = columns["prediction"].tolist()
        metrics: dict[str, float] = {"num_examples": len(predictions)}
        if "label" in columns:
            labels = columns["label"].tolist()
            if "accuracy" in self.metric_names:
                metrics["accuracy"] = metric_modules.load("accuracy").compute(
                    predictions=predictions, references=labels
                )["accuracy"]
            if "macro_f1" in self.metric_names:
                scores = metric_modules.load("f1").compute(
                    predictions=predictions,
                    references=labels,
                    average="macro",
                    labels=list(range(len(self.task.label_names))),
                )
                metrics["macro_f1"] = scores["f1"]
            if "cross_entropy" in self.metric_names:
                metrics["cross_entropy"] = float(columns["loss"].double().mean())
        names = self.task.label_names
        options = self.task.options
        texts = dataset[options.text_column]
        pairs = dataset[options.text_pair_column] if options.text_pair_column else None
        rows = []
        for position, index in enumerate(columns["index"].tolist()):
            row = {"index": index, "text": texts[index]}
            if pairs is not None:
                row["text_pair"] = pairs[index]
            if "label" in columns:
                row["label"] = names[columns["label"][position]]
            row["predicted"] = names[predictions[position]]
            row["score"] = round(float(columns["confidence"][position]), 6)
            rows.append(row)
        return metrics, rows
