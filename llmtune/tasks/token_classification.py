"""Token classification (named-entity recognition): an IOB2 tag for every word of a sentence.

Data: the CoNLL layout (one `token<TAB>tag` or `token tag` per line, a blank line, or one holding only white
space, between sentences, `-DOCSTART-` lines skipped), rows holding `tokens: [...]` and `tags: [...]` (tag
names or integer ids) in JSON, JSONL or Parquet, or a hub dataset in the conll2003 layout (set
`task.tags_column: ner_tags`).

The words of a sentence are joined with spaces and tokenized as text, so every tokenizer sees what it saw in
pretraining; each sub-token maps back to its word through the character offsets. A word's tag is taught on its
first sub-token (on every one with `task.label_all_subtokens`, B- turning into I- after the first). A sentence
longer than max_length becomes overlapping windows, and each word is predicted from the window that gives it
the most context. Metrics: seqeval's entity-level precision, recall and F1 (micro and per type; IOB2, strict
with `task.strict`), token accuracy, and cross-entropy per labelled token.
"""

from __future__ import annotations

import bisect
import re
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field, field_validator

from ..common import figures
from ..common.errors import UserError
from ..common.lazy import F, datasets, torch
from ..data.augment import AugmentFields
from ..data.reading import describe, require_columns, row_location
from ..data.schema import DataSpec
from ..metrics.entities import entity_scores
from .base import Accumulator, LabelledTask, RowStatistics, TaskOptions, f1_from_counts, prediction_row, tokenize
from .card import PushedModel, literal

IGNORE = -100
TAG = re.compile(r"O|[BI]-\S+")
# How `llmtune predict --text` splits a text into words: @handles, #tags and words with inner ' - . stay whole.
WORD = re.compile(r"[@#]?\w+(?:['\-.]\w+)*|\S")


class TokenClassificationOptions(TaskOptions):
    """Named-entity recognition (token classification): an IOB2 tag for every word."""

    available_metrics: ClassVar[tuple[str, ...]] = ("f1", "precision", "recall", "token_accuracy", "cross_entropy")

    type: Literal["token_classification"] = Field(description="The task.")
    tokens_column: str = Field(
        "tokens", description="Column holding each sentence's words (a list); a .conll file gives it as `tokens`."
    )
    tags_column: str = Field(
        "tags",
        description="Column holding each word's IOB2 tag (O, B-TYPE, I-TYPE), as names or integer ids into "
        "label_names; a .conll file gives it as `tags`; the conll2003 hub layout calls it `ner_tags`.",
    )
    label_names: list[str] | None = Field(
        None,
        description="Tag names in index order. Default: the dataset's class names, else the distinct tags of the "
        "train split (O first, then sorted).",
    )
    label_all_subtokens: bool = Field(
        False,
        description="Teach the tag on every sub-token of a word (B- becomes I- after the first) instead of the first "
        "sub-token only.",
    )
    stride: int = Field(
        32, ge=0, description="Tokens shared by consecutive windows when a sentence is longer than max_length."
    )
    strict: bool = Field(
        False,
        description="Score entities by IOB2 to the letter (seqeval's strict mode: a span opened by an I- tag is not "
        "an entity); default: as conlleval does.",
    )

    @field_validator("label_names")
    @classmethod
    def _iob2_names(cls, names: list[str] | None) -> list[str] | None:
        if names is not None:
            if len(set(names)) != len(names):
                raise ValueError(f"label names must be distinct, got {names}")
            bad = [name for name in names if not TAG.fullmatch(name)]
            if bad:
                raise ValueError(f"'{bad[0]}' is not an IOB2 tag; expected O, B-TYPE or I-TYPE")
        return names

    def check_recipe(self, recipe) -> None:
        if self.stride >= recipe.training.max_length // 2:
            raise ValueError(
                f"task.stride ({self.stride}) must be less than half of training.max_length "
                f"({recipe.training.max_length}): it is the overlap between consecutive windows of a long sentence"
            )


def read_conll(path: Path, where: str) -> datasets.Dataset:
    """A CoNLL file as rows of `tokens`, `tags` and the `line` each sentence starts on.

    Raises:
        UserError: a line without exactly two fields (file and line named), or a file without sentences.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{where}: cannot read {path.name} as UTF-8 text: {exc}") from None
    rows, tokens, tags, start = [], [], [], 0
    for number, line in enumerate([*lines, ""], 1):
        if not line.strip() or line.startswith("-DOCSTART-"):
            if tokens:
                rows.append({"tokens": tokens, "tags": tags, "line": start})
            tokens, tags = [], []
            continue
        fields = line.split("\t") if "\t" in line else line.split()
        if len(fields) != 2 or not all(field.strip() for field in fields):
            raise UserError(
                f"{where} line {number}: expected a token and its tag separated by a tab or a space, got "
                f"{len(fields)} field(s): {line[:80]!r}"
            )
        start = start if tokens else number
        tokens.append(fields[0].strip())
        tags.append(fields[1].strip())
    if not rows:
        raise UserError(f"{where}: {path.name} has no sentences (0 examples); expected at least one example")
    return datasets.Dataset.from_list(rows)


def entities(tags: list[str], strict: bool) -> list[tuple[str, int, int]]:
    """(type, first word, last word) of every entity in a tag sequence, as seqeval reads it."""
    from seqeval.metrics.sequence_labeling import get_entities
    from seqeval.scheme import IOB2, Entities

    if strict:
        return [
            (kind, start, end - 1)
            for _, kind, start, end in (
                entity.to_tuple() for entity in Entities([tags], IOB2, suffix=False).entities[0]
            )
        ]
    return [(kind, start, end) for kind, start, end in get_entities(tags)]


def word_spans(words: list[str]) -> tuple[str, list[tuple[int, int]]]:
    """The words joined with single spaces, and each word's character span in that text."""
    spans, position = [], 0
    for word in words:
        spans.append((position, position + len(word)))
        position += len(word) + 1
    return " ".join(words), spans


class TokenClassification(LabelledTask):
    name = "token_classification"
    options_class = TokenClassificationOptions
    auto_class = "AutoModelForTokenClassification"
    peft_task_type = "TOKEN_CLS"
    architectures = ("ForTokenClassification",)
    metadata_columns = ("example_index", "word_ids")
    file_readers = {".conll": read_conll}
    predict_fields = {"text": "Text whose entities to find (repeatable: one prediction each)."}
    example_metric = "entity_errors"
    example_metric_higher_is_better = False
    example_noun = "sentences"
    metric_labels = {
        "f1": "entity F1",
        "precision": "entity precision",
        "recall": "entity recall",
        "token_accuracy": "token accuracy",
    }
    pipeline_tag = "token-classification"
    hub_task = ("token-classification", "Named Entity Recognition")

    # ------------------------------------------------------------------ checks

    def prepare(self, splits: dict[str, datasets.Dataset], spec: DataSpec) -> None:
        """Check every sentence's words and tags, and settle the tag names.

        Raises:
            UserError: a missing column, a sentence whose tags do not match its words, a tag outside the label set.
        """
        o, sources = self.options, spec.sources()
        for split, dataset in splits.items():
            required = {"task.tokens_column": o.tokens_column}
            if split == "train" or o.tags_column in dataset.column_names:
                required["task.tags_column"] = o.tags_column
            require_columns(dataset.column_names, required, describe(split, sources[split]))
        if self.label_names is None:
            split = "train" if "train" in splits else next(iter(splits))
            self.label_names = self._names_from_data(splits[split], sources[split], describe(split, sources[split]))
        for split, dataset in splits.items():
            where = describe(split, sources[split])
            for row, example in enumerate(dataset):
                self._check_sentence(example, where, sources[split], row)

    def augment_fields(self, column_names: list[str]) -> AugmentFields:
        """Only words outside every entity change, so tags stay aligned and entities whole."""
        names = self.label_names
        return AugmentFields(
            words=self.options.tokens_column,
            tags=self.options.tags_column,
            outside=frozenset({"O", names.index("O")} if "O" in names else set()),
            continues=frozenset(x for i, name in enumerate(names) if name.startswith("I-") for x in (name, i)),
        )

    def _location(self, source, example: dict, row: int, word: int = 0) -> str:
        """Where a sentence (or one of its words) is: its line in a CoNLL file, else the row's location."""
        if "line" in example:
            return f"line {example['line'] + word}"
        return row_location(source, row) + (f", word {word + 1}" if word else "")

    def _names_from_data(self, dataset: datasets.Dataset, source, where: str) -> list[str]:
        """The dataset's class names (conll2003 on the hub), else its distinct tags, O first.

        Raises:
            UserError: integer tags without names, or a tag that is not IOB2 (with its line).
        """
        feature = dataset.features.get(self.options.tags_column)
        names = getattr(getattr(feature, "feature", None), "names", None)  # a Sequence of ClassLabel
        if names:
            return list(names)
        values = set()
        for row, example in enumerate(dataset):
            for tag in example[self.options.tags_column] or ():
                if not isinstance(tag, str):
                    raise UserError(
                        f"{where}: integer tags in column '{self.options.tags_column}' need task.label_names (the tag "
                        "names in index order)"
                    )
                if not TAG.fullmatch(tag):
                    at = self._location(source, example, row, example[self.options.tags_column].index(tag))
                    raise UserError(f"{where} {at}: tag '{tag}' is not an IOB2 tag; expected O, B-TYPE or I-TYPE")
                values.add(tag)
        return ["O", *sorted(values - {"O"})]

    def _check_sentence(self, example: dict, where: str, source, row: int) -> None:
        """Raises UserError: no words, a tag count unlike the word count, or a tag outside the label set."""
        o = self.options
        at = self._location(source, example, row)
        words, tags = example[o.tokens_column], example.get(o.tags_column)
        if not isinstance(words, list) or not words or not all(isinstance(w, str) and w.strip() for w in words):
            raise UserError(
                f"{where} {at}: column '{o.tokens_column}' holds {str(words)[:60]!r}; expected a list of words"
            )
        if o.tags_column not in example:
            return
        if not isinstance(tags, list) or len(tags) != len(words):
            count = len(tags) if isinstance(tags, list) else 0
            raise UserError(
                f"{where} {at}: {len(words)} words but {count} tags in column '{o.tags_column}'; "
                "expected a tag for every word"
            )
        for word, tag in enumerate(tags):
            if self.tag_id(tag) is None:
                at = self._location(source, example, row, word)
                raise UserError(
                    f"{where} {at}: tag {tag!r} is not among the tags {self.label_names} (task.label_names)"
                )

    def tag_id(self, tag) -> int | None:
        if isinstance(tag, str):
            return self.label_names.index(tag) if tag in self.label_names else None
        if isinstance(tag, int) and not isinstance(tag, bool) and 0 <= tag < len(self.label_names):
            return tag
        return None

    # ------------------------------------------------------------------ model

    def preprocess(self, dataset: datasets.Dataset, tokenizer, max_length: int) -> datasets.Dataset:
        """One row per window: model inputs, `labels` per token, and for decoding the example and each token's word
        (its index where the token starts that word in this window, else -1)."""
        o = self.options
        has_tags = o.tags_column in dataset.column_names
        keep = set(tokenizer.model_input_names)
        self.max_length = max_length  # eval_step pads every window's outputs to it, so that batches concatenate

        def encode(batch, indices):
            texts, spans = zip(*(self._text(batch, k) for k in range(len(indices))))
            encoded = tokenizer(
                list(texts),
                truncation=True,
                max_length=max_length,
                stride=o.stride,
                return_overflowing_tokens=True,
                return_offsets_mapping=True,
            )
            features = {key: encoded[key] for key in encoded if key in keep}
            features.update({"example_index": [], "word_ids": [], "labels": []})
            for window, example in enumerate(encoded["overflow_to_sample_mapping"]):
                words = self._word_ids(encoded["offset_mapping"][window], spans[example])
                features["example_index"].append(indices[example])
                features["word_ids"].append([word if first else -1 for word, first in words])
                tags = [self.tag_id(tag) for tag in batch[o.tags_column][example]] if has_tags else None
                features["labels"].append(self._labels(words, tags))
            self.with_position_ids(features)
            features["length"] = [len(ids) for ids in features["input_ids"]]
            return features

        settings = (o.model_dump(), self.label_names, max_length, self.position_ids)
        return tokenize(dataset, tokenizer, encode, "token_classification/1", settings, windows=True)

    def _text(self, batch: dict, k: int) -> tuple[str, list[tuple[int, int]]]:
        """A sentence's text and its words' character spans: a prediction input's own text, else the words joined."""
        if "text" in batch and "spans" in batch:
            return batch["text"][k], [tuple(span) for span in batch["spans"][k]]
        return word_spans(batch[self.options.tokens_column][k])

    @staticmethod
    def _word_ids(offsets: list, spans: list[tuple[int, int]]) -> list[tuple[int, bool]]:
        """Per token: (word index or -1, whether the token holds the word's first character)."""
        starts = [start for start, _ in spans]
        result = []
        for start, end in offsets:
            word = bisect.bisect_right(starts, end - 1) - 1 if end > start else -1
            if word >= 0 and not (spans[word][0] <= end - 1 < spans[word][1]):
                word = -1  # the token covers only white space between words
            result.append((word, word >= 0 and start <= spans[word][0] < end))
        return result

    def _labels(self, words: list[tuple[int, bool]], tags: list[int] | None) -> list[int]:
        if tags is None:
            return [IGNORE] * len(words)
        labels = []
        for word, first in words:
            if word < 0 or not (first or self.options.label_all_subtokens):
                labels.append(IGNORE)
            elif first:
                labels.append(tags[word])
            else:  # a later sub-token of the word: inside the entity its first sub-token begins
                name = self.label_names[tags[word]]
                inside = "I-" + name[2:] if name.startswith("B-") else name
                labels.append(self.label_names.index(inside) if inside in self.label_names else tags[word])
        return labels

    # ------------------------------------------------------------------ training and evaluation

    @staticmethod
    def _inputs(batch: dict) -> dict:
        return {key: value for key, value in batch.items() if key not in ("index", "length", "labels")}

    def loss(self, model, batch: dict) -> torch.Tensor:
        logits = model(**self._inputs(batch)).logits
        return F.cross_entropy(logits.float().flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE)

    def eval_step(self, model, batch: dict) -> dict[str, torch.Tensor]:
        """Per window: each token's predicted tag and its probability (padded to max_length with -1 and 0), and the
        summed loss and number of its labelled tokens."""
        logits = model(**self._inputs(batch)).logits.float()
        probabilities = logits.softmax(-1)
        confidence, tags = probabilities.max(-1)
        pad = self.max_length - logits.shape[1]
        losses = F.cross_entropy(logits.transpose(1, 2), batch["labels"], ignore_index=IGNORE, reduction="none")
        return {
            "index": batch["index"],
            "tag": F.pad(tags, (0, pad), value=-1),
            "confidence": F.pad(confidence, (0, pad), value=0.0),
            "nll": losses.sum(-1),
            "labelled": (batch["labels"] != IGNORE).sum(-1),
        }

    def new_accumulator(self, metric_names: tuple[str, ...]) -> TokenClassificationAccumulator:
        return TokenClassificationAccumulator(self, metric_names)

    def leakage_fields(self, column_names: list[str]) -> list[tuple[str, ...]]:
        """The sentence's words (joined with spaces)."""
        return [(self.options.tokens_column,)]

    def row_statistics(self, rows: list[dict]) -> RowStatistics:
        """Entity F1, precision and recall (seqeval's micro averages, in percent) from each sentence's entity hits,
        found entities and gold entities."""
        values = np.zeros((len(rows), 3))
        for number, row in enumerate(rows):
            gold = {(e["type"], e["start"], e["end"]) for e in row["reference"]}
            found = {(e["type"], e["start"], e["end"]) for e in row["predicted"]}
            values[number] = len(gold & found), len(found), len(gold)

        def combine(sums: np.ndarray) -> np.ndarray:
            hits, found, gold = sums[..., 0], sums[..., 1], sums[..., 2]
            precision = np.where(found > 0, hits / np.maximum(found, 1), 0.0)
            recall = np.where(gold > 0, hits / np.maximum(gold, 1), 0.0)
            return 100 * np.stack([f1_from_counts(hits, found, gold), precision, recall], axis=-1)

        return RowStatistics(("f1", "precision", "recall"), values, combine)

    def input_columns(self) -> dict[str, str]:
        return {"text": "text"}

    def input_truncated(self, row: dict, tokenizer, max_length: int) -> bool:
        return False  # a long sentence is read in overlapping windows, never cut

    def input_row(self, value: str | dict, number: int) -> dict:
        """A text is split into words (with their character spans); a mapping may hold the words themselves."""
        if isinstance(value, dict) and self.options.tokens_column in value:
            return value
        row = super().input_row(value, number)
        matches = list(WORD.finditer(row["text"]))
        return {**row, self.options.tokens_column: [m.group() for m in matches], "spans": [m.span() for m in matches]}

    # ------------------------------------------------------------------ reports and model card

    def metric_tables(self, metrics: dict) -> list[tuple[str, list[str], list[list]]]:
        per_type = metrics.get("per_type")
        if not per_type:
            return []
        rows = [[kind, v["precision"], v["recall"], v["f1"], v["support"]] for kind, v in per_type.items()]
        return [("Entities by type", ["type", "precision", "recall", "F1", "support"], rows)]

    def plots(self, predictions: list[dict], split: str) -> dict[str, bytes]:
        """entity_f1.png: entity F1 per type on the split, with each type's number of gold entities."""
        counts: dict[str, list[int]] = {}  # type -> [true positives, predicted, gold]
        for row in predictions:
            if "reference" not in row:
                return {}
            gold = {(e["type"], e["start"], e["end"]) for e in row["reference"]}
            found = {(e["type"], e["start"], e["end"]) for e in row["predicted"]}
            for kind in {k for k, _, _ in gold | found}:
                tally = counts.setdefault(kind, [0, 0, 0])
                tally[0] += len({e for e in gold & found if e[0] == kind})
                tally[1] += len({e for e in found if e[0] == kind})
                tally[2] += len({e for e in gold if e[0] == kind})
        if not counts:
            return {}
        kinds = sorted(counts)
        scores = [
            100 * 2 * tp / (predicted + gold) if predicted + gold else 0.0
            for tp, predicted, gold in map(counts.get, kinds)
        ]
        figure, axes = figures.new_figure(7, 0.5 * len(kinds) + 1.5)
        axes.barh(kinds, scores, color="tab:blue")
        for y, (score, kind) in enumerate(zip(scores, kinds)):
            axes.text(score + 1, y, f"{score:.1f} (n={counts[kind][2]})", va="center")
        axes.set(xlim=(0, 110), xlabel="entity F1 (%)", title=f"Entity F1 by type ({split})")
        axes.invert_yaxis()
        return {"entity_f1.png": figures.to_png(figure)}

    def card_description(self) -> str:
        kinds = sorted({name[2:] for name in self.label_names if name != "O"})
        return f"named-entity recognition (entity types: {', '.join(kinds)})"

    def usage_code(self, model: PushedModel, max_length: int) -> str:
        """Each word's tag (its first sub-token's) for one text, with plain transformers / peft."""
        return (
            "import torch\n"
            + model.imports(self.auto_class)
            + "\n"
            + self.load_snippet(model)
            + f"words = {literal('Paul Walker visited the Empire State Building .')}.split()\n"
            + f'inputs = tokenizer(" ".join(words), truncation=True, max_length={max_length}, return_tensors="pt")\n'
            + "with torch.no_grad():\n    tags = model(**inputs).logits[0].argmax(-1).tolist()\n"
            + "first = {}  # each word's first sub-token\n"
            + "for token, word in enumerate(inputs.word_ids(0)):\n"
            + "    if word is not None:\n        first.setdefault(word, token)\n"
            + "print([(word, labels[tags[first[i]]]) for i, word in enumerate(words) if i in first])\n"
        )


class TokenClassificationAccumulator(Accumulator):
    """Keeps each window's predicted tags; picks each word's prediction from its best window at the end."""

    def result(self, dataset: datasets.Dataset, windows: datasets.Dataset) -> tuple[dict, list[dict]]:
        task, o = self.task, self.task.options
        columns = self.columns()
        predicted = self._word_predictions(columns, windows, dataset)
        has_tags = o.tags_column in dataset.column_names
        rows, gold_tags, found_tags = [], [], []
        for example in range(len(dataset)):
            row = dataset[example]
            words = row[o.tokens_column]
            text, spans = task._text({k: [v] for k, v in row.items()}, 0)
            tags = [task.label_names[predicted.get((example, w), (0, 0.0))[0]] for w in range(len(words))]
            confidence = [predicted.get((example, w), (0, 0.0))[1] for w in range(len(words))]
            found = self._entities(tags, confidence, text, spans)
            reference = example_metrics = None
            if has_tags:
                gold = [task.label_names[task.tag_id(tag)] for tag in row[o.tags_column]]
                gold_tags.append(gold)
                found_tags.append(tags)
                reference = self._entities(gold, None, text, spans)
                example_metrics = _sentence_scores(reference, found)
            rows.append(
                prediction_row(
                    example,
                    {"text": text},
                    found,
                    sum(confidence) / max(len(confidence), 1),
                    reference,
                    example_metrics,
                    tokens=words,
                    tags=tags,
                )
            )
        metrics: dict = {"num_examples": len(dataset)}
        if has_tags:
            metrics.update(self._corpus_metrics(gold_tags, found_tags, columns))
        return metrics, rows

    def _word_predictions(self, columns: dict, windows, dataset) -> dict[tuple[int, int], tuple[int, float]]:
        """(example, word) -> (tag id, probability), from the window where the word has the most context."""
        best: dict[tuple[int, int], tuple[int, int, float]] = {}
        example_of, word_ids = windows["example_index"], windows["word_ids"]
        for row, window in enumerate(columns["index"].tolist()):
            words = word_ids[window]
            tags, confidence = columns["tag"][row].tolist(), columns["confidence"][row].tolist()
            for position, word in enumerate(words):
                if word < 0:
                    continue
                context = min(position, len(words) - 1 - position)
                key = (example_of[window], word)
                if key not in best or context > best[key][0]:
                    best[key] = (context, tags[position], confidence[position])
        return {key: (tag, probability) for key, (_, tag, probability) in best.items()}

    def _entities(self, tags: list[str], confidence: list[float] | None, text: str, spans: list) -> list[dict]:
        found = []
        for kind, first, last in entities(tags, self.task.options.strict):
            start, end = spans[first][0], spans[last][1]
            entity = {"type": kind, "text": text[start:end], "start": start, "end": end}
            if confidence is not None:
                entity["score"] = round(sum(confidence[first : last + 1]) / (last - first + 1), 6)
            found.append(entity)
        return found

    def _corpus_metrics(self, gold: list[list[str]], found: list[list[str]], columns: dict) -> dict:
        scores = entity_scores(found, gold, strict=self.task.options.strict)
        metrics = {name: 100 * scores[name] for name in ("f1", "precision", "recall") if name in self.metric_names}
        if "token_accuracy" in self.metric_names:
            metrics["token_accuracy"] = 100 * scores["accuracy"]
        if "cross_entropy" in self.metric_names:
            metrics["cross_entropy"] = float(columns["nll"].double().sum()) / max(int(columns["labelled"].sum()), 1)
            metrics["num_labelled_tokens"] = int(columns["labelled"].sum())
        metrics["per_type"] = {
            kind: {**{k: round(100 * v, 4) for k, v in values.items() if k != "support"}, "support": values["support"]}
            for kind, values in scores["per_type"].items()
        }
        return metrics


def _sentence_scores(gold: list[dict], found: list[dict]) -> dict:
    """A sentence's entity F1 (100 when it has no entity and none is found) and entity errors (missed + spurious)."""
    gold_set = {(e["type"], e["start"], e["end"]) for e in gold}
    found_set = {(e["type"], e["start"], e["end"]) for e in found}
    hits = len(gold_set & found_set)
    total = len(gold_set) + len(found_set)
    return {"entity_f1": 100 * 2 * hits / total if total else 100.0, "entity_errors": total - 2 * hits}
