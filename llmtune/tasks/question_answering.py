"""Question answering on a context (SQuAD): extractive, or generative with `task.generative`.

Extractive: long contexts become overlapping windows (`max_length`, `doc_stride`). Training labels each window
with the answer's token positions, or the CLS position when the answer is not inside it. Decoding takes the
best start/end candidates of every window of an example and maps the best valid span back to context
characters through the offset mapping.

Generative: a causal language model reads the context and question (a prompt) and writes the answer; it is
trained on the first gold answer (answer_start is not needed). Both forms are scored with the official SQuAD
v1.1 exact match and F1 against all gold answers.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field as SchemaField

from ..common.errors import DataWarning, UserError
from ..common.lazy import F, datasets, torch
from ..data.augment import AugmentFields
from ..data.reading import describe, require_columns, row_location
from ..data.schema import DataSpec
from . import prompting
from .base import Accumulator, Task, prediction_row, tokenize
from .card import PushedModel, literal
from .generation import Field, PromptCompletionOptions, TextGeneration

# The model card's example question.
EXAMPLE = {"question": "Where is the treasure?", "context": "The treasure is buried under the old oak tree."}


class QuestionAnsweringOptions(PromptCompletionOptions):
    """Question answering on a context (SQuAD): extractive (the answer is a span of the context), or
    generative (a causal language model writes the answer as text)."""

    type: Literal["question_answering"] = SchemaField(description="The task.")
    question_column: str = SchemaField("question", description="Column holding the question.")
    context_column: str = SchemaField("context", description="Column holding the context the answer is taken from.")
    answers_column: str = SchemaField(
        "answers", description="Column holding the gold answers: `{text: [...], answer_start: [...]}` (SQuAD layout)."
    )
    id_column: str | None = SchemaField(
        "id", description="Column holding an example id, copied into predictions; null: row numbers."
    )
    doc_stride: int = SchemaField(
        128, ge=1, description="Tokens shared by consecutive windows when a context is longer than max_length."
    )
    max_answer_length: int = SchemaField(30, ge=1, description="Longest answer, in tokens, considered when decoding.")
    n_best: int = SchemaField(20, ge=1, description="Start and end candidates per window considered when decoding.")
    max_new_tokens: int = SchemaField(32, ge=1, description="Generative only: longest generated answer, in tokens.")
    num_beams: int = SchemaField(
        1, ge=1, description="Generative only: beam-search width when generating; 1 is greedy decoding."
    )

    generative_only: ClassVar[dict[str, Any]] = {
        **PromptCompletionOptions.generative_only,
        "max_new_tokens": 32,
        "num_beams": 1,
    }

    @property
    def available_metrics(self) -> tuple[str, ...]:
        extra = ("perplexity", "distinct_outputs") if self.generative else ()
        return ("exact_match", "f1", "cross_entropy", *extra)

    def check_recipe(self, recipe) -> None:
        if not self.generative and self.doc_stride >= recipe.training.max_length:
            raise ValueError(
                f"task.doc_stride ({self.doc_stride}) must be smaller than training.max_length "
                f"({recipe.training.max_length}): it is the overlap between consecutive windows of a long context"
            )


def read_squad_json(file: Path, where: str) -> datasets.Dataset | None:
    """SQuAD v1.1 layout (`data[].paragraphs[].qas[]`) flattened to one row per question; None for other JSON."""
    with open(file, "rb") as handle:
        start = handle.read(4096).lstrip()
    if not start.startswith(b"{") or b'"data"' not in start:
        return None
    try:
        document = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{where}: cannot read {file.name} as json: {exc}") from None
    articles = document.get("data") if isinstance(document, dict) else None
    if (
        not isinstance(articles, list)
        or not articles
        or not isinstance(articles[0], dict)
        or "paragraphs" not in articles[0]
    ):
        return None
    rows = []
    for article in articles:
        for paragraph in article.get("paragraphs", []):
            for qa in paragraph.get("qas", []):
                answers = qa.get("answers", [])
                rows.append(
                    {
                        "id": str(qa.get("id", len(rows))),
                        "title": article.get("title", ""),
                        "context": paragraph.get("context"),
                        "question": qa.get("question"),
                        "answers": {
                            "text": [a["text"] for a in answers],
                            "answer_start": [int(a["answer_start"]) for a in answers],
                        },
                    }
                )
    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "title": datasets.Value("string"),
            "context": datasets.Value("string"),
            "question": datasets.Value("string"),
            "answers": {
                "text": datasets.Sequence(datasets.Value("string")),
                "answer_start": datasets.Sequence(datasets.Value("int32")),
            },
        }
    )
    return datasets.Dataset.from_list(rows, features=features)


class QuestionAnswering(Task):
    """Extractive question answering: the answer is the best-scoring span of the context."""

    name = "question_answering"
    options_class = QuestionAnsweringOptions
    auto_class = "AutoModelForQuestionAnswering"
    peft_task_type = "QUESTION_ANS"
    architectures = ("ForQuestionAnswering",)
    metadata_columns = ("offset_mapping", "example_index")  # per window: what decoding needs, not the model
    file_readers = {".json": read_squad_json}  # SQuAD v1.1's nested JSON; other JSON reads as usual
    predict_fields = {
        "question": "Question answering: the question (with --context; repeatable, one answer each).",
        "context": "Question answering: the context the answer is taken from.",
    }
    example_metric = "f1"
    example_noun = "answers"
    metric_labels = {"exact_match": "exact match", "f1": "F1"}
    pipeline_tag = "question-answering"
    hub_task = ("question-answering", "Question Answering")

    @classmethod
    def create(cls, options: QuestionAnsweringOptions) -> Task:
        return GenerativeQuestionAnswering(options) if options.generative else cls(options)

    # ------------------------------------------------------------------ checks

    def prepare(self, splits: dict[str, datasets.Dataset], spec: DataSpec) -> None:
        """Check columns, contexts and answers. Answers not found at their answer_start are skipped
        for training (with a warning); a train split left without answers is an error.

        Raises:
            UserError: a missing column, an empty context or question, or no usable training answer.
        """
        o = self.options
        sources = spec.sources()
        for split, dataset in splits.items():
            where = describe(split, sources[split])
            columns = {"task.question_column": o.question_column, "task.context_column": o.context_column}
            if split == "train" or o.answers_column in dataset.column_names:
                columns["task.answers_column"] = o.answers_column
            require_columns(dataset.column_names, columns, where)
            for key, column in (("question", o.question_column), ("context", o.context_column)):
                for row, text in enumerate(dataset[column]):
                    if not isinstance(text, str) or not text.strip():
                        raise UserError(
                            f"{where} {row_location(sources[split], row)}: "
                            f"empty {key} in column '{column}'; expected text"
                        )
            if o.answers_column in dataset.column_names:
                splits[split] = self._check_answers(dataset, split, where, sources[split])

    def _check_answers(self, dataset, split: str, where: str, source) -> datasets.Dataset:
        o = self.options
        usable = [
            aligned_answer(context, parse_answers(answers, f"{where} {row_location(source, row)}")) is not None
            for row, (context, answers) in enumerate(zip(dataset[o.context_column], dataset[o.answers_column]))
        ]
        bad = usable.count(False)
        if not bad:
            return dataset
        if split == "train" and bad == len(dataset):
            raise UserError(
                f"{where}: none of the {len(dataset)} answers occurs in its context at its answer_start; "
                "expected answers: {text: [...], answer_start: [character offsets into the context]}"
            )
        action = "skipped for training" if split == "train" else "kept: scored on answer text, no span label"
        warnings.warn(
            f"{where}: {bad} of {len(dataset)} examples have no answer that occurs at its answer_start; {action}",
            DataWarning,
            stacklevel=3,
        )
        return dataset.select([row for row, ok in enumerate(usable) if ok]) if split == "train" else dataset

    # ------------------------------------------------------------------ model

    def preprocess(self, dataset: datasets.Dataset, tokenizer, max_length: int) -> datasets.Dataset:
        """One row per window: model inputs, start/end labels, offsets (None outside the context), example index."""
        o = self.options
        has_answers = o.answers_column in dataset.column_names
        keep = set(tokenizer.model_input_names)
        pad_right = tokenizer.padding_side == "right"
        context_id = 1 if pad_right else 0
        cls_index = 0

        def encode(batch, indices):
            encoded = self._tokenize(tokenizer, batch, max_length, pad_right)
            features = {key: encoded[key] for key in encoded if key in keep}
            features.update({"example_index": [], "offset_mapping": [], "start_positions": [], "end_positions": []})
            for window, example in enumerate(encoded["overflow_to_sample_mapping"]):
                sequence_ids = encoded.sequence_ids(window)
                offsets = [
                    span if sequence_ids[k] == context_id else None
                    for k, span in enumerate(encoded["offset_mapping"][window])
                ]
                features["offset_mapping"].append(offsets)
                features["example_index"].append(indices[example])
                start = end = cls_index
                if has_answers:
                    answer = aligned_answer(
                        batch[o.context_column][example], parse_answers(batch[o.answers_column][example], "")
                    )
                    if answer is not None:
                        start, end = answer_tokens(offsets, answer[0], answer[1], cls_index)
                features["start_positions"].append(start)
                features["end_positions"].append(end)
            features["length"] = [len(ids) for ids in encoded["input_ids"]]
            return features

        return tokenize(dataset, tokenizer, encode, "question_answering/1", o.model_dump(), max_length, windows=True)

    def _tokenize(self, tokenizer, batch: dict, max_length: int, pad_right: bool):
        """Question + context windows (context + question for tokenizers that pad on the left)."""
        o = self.options
        questions = [q.lstrip() for q in batch[o.question_column]]
        contexts = batch[o.context_column]
        try:
            return tokenizer(
                questions if pad_right else contexts,
                contexts if pad_right else questions,
                truncation="only_second" if pad_right else "only_first",
                max_length=max_length,
                stride=o.doc_stride,
                return_overflowing_tokens=True,
                return_offsets_mapping=True,
            )
        except Exception as exc:  # tokenizers refuses a question that leaves no room for the stride
            raise UserError(
                f"task.doc_stride: windows of {max_length} tokens cannot overlap by {o.doc_stride} after the question "
                f"({' '.join(str(exc).split())[:160]}); lower task.doc_stride or raise training.max_length"
            ) from None

    # ------------------------------------------------------------------ training and evaluation

    @staticmethod
    def _inputs(batch: dict) -> dict:
        return {
            key: value
            for key, value in batch.items()
            if key not in ("index", "length", "start_positions", "end_positions")
        }

    def loss(self, model, batch: dict) -> torch.Tensor:
        outputs = model(**self._inputs(batch))
        return window_loss(
            outputs.start_logits, outputs.end_logits, batch["start_positions"], batch["end_positions"]
        ).mean()

    def eval_step(self, model, batch: dict) -> dict[str, torch.Tensor]:
        """Per window: the n_best start and end candidates (not the full logits), their normalisers, the span loss."""
        outputs = model(**self._inputs(batch))
        start_logits, end_logits = outputs.start_logits.float(), outputs.end_logits.float()
        k = min(self.options.n_best, start_logits.shape[-1])
        top_start, top_end = start_logits.topk(k, -1), end_logits.topk(k, -1)
        return {
            "index": batch["index"],
            "start_index": top_start.indices,
            "start_logit": top_start.values,
            "end_index": top_end.indices,
            "end_logit": top_end.values,
            # log(sum exp) of each window's logits: a span's probability is exp(start + end - both normalisers)
            "normaliser": start_logits.logsumexp(-1) + end_logits.logsumexp(-1),
            "loss": window_loss(start_logits, end_logits, batch["start_positions"], batch["end_positions"]),
        }

    def new_accumulator(self, metric_names: tuple[str, ...]) -> QuestionAnsweringAccumulator:
        return QuestionAnsweringAccumulator(self, metric_names)

    def input_columns(self) -> dict[str, str]:
        return {"question": self.options.question_column, "context": self.options.context_column}

    def leakage_fields(self, column_names: list[str]) -> list[tuple[str, ...]]:
        """Contexts and questions apart: a test question on a paragraph seen in training leaks, whatever it asks."""
        return [(self.options.context_column,), (self.options.question_column,)]

    def augment_fields(self, column_names: list[str]) -> AugmentFields:
        """The question only: the answers are spans of the context (and a generative answer quotes it)."""
        return AugmentFields(texts=(self.options.question_column,))

    def input_truncated(self, row: dict, tokenizer, max_length: int) -> bool:
        return False  # a long context is read in overlapping windows, never cut

    # ------------------------------------------------------------------ model card

    def card_description(self) -> str:
        return "extractive question answering (the answer is a span of the context)"

    def usage_code(self, model: PushedModel, max_length: int) -> str:
        """The best-scoring answer span (start logit + end logit) of one question with plain transformers / peft."""
        auto = self.auto_class
        longest = self.options.max_answer_length
        return (
            "import torch\n"
            + model.imports(auto)
            + "\n"
            + model.load(auto)
            + f"question = {literal(EXAMPLE['question'])}\ncontext = {literal(EXAMPLE['context'])}\n"
            + f"# A context longer than {max_length} tokens is cut here; "
            "llmtune predict reads it in overlapping windows.\n"
            + f'inputs = tokenizer(question, context, truncation="only_second", max_length={max_length}, '
            'return_offsets_mapping=True, return_tensors="pt")\n'
            + 'offsets = inputs.pop("offset_mapping")[0].tolist()\n'
            + "with torch.no_grad():\n    outputs = model(**inputs)\n"
            + "starts, ends = outputs.start_logits[0].tolist(), outputs.end_logits[0].tolist()\n"
            + "context_tokens = [i for i, part in enumerate(inputs.sequence_ids(0)) if part == 1]\n"
            + f"spans = [(s, e) for s in context_tokens for e in context_tokens if s <= e < s + {longest}]"
            f"  # at most {longest} tokens long\n"
            + "start, end = max(spans, key=lambda span: starts[span[0]] + ends[span[1]])\n"
            + "print(context[offsets[start][0]:offsets[end][1]])\n"
        )


def parse_answers(value, where: str) -> dict:
    """Answers as `{text: [...], answer_start: [...]}`; CSV cells may hold that mapping as JSON text."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise UserError(
                f"{where}: answers must be {{text: [...], answer_start: [...]}}; got {value[:80]!r}"
            ) from None
    if not isinstance(value, dict) or "text" not in value or "answer_start" not in value:
        raise UserError(f"{where}: answers must be {{text: [...], answer_start: [...]}}; got {str(value)[:80]!r}")
    return value


def aligned_answer(context: str, answers: dict) -> tuple[int, int] | None:
    """Character span of the first gold answer found at its answer_start; None when none is."""
    for text, start in zip(answers["text"], answers["answer_start"]):
        if text and context[start : start + len(text)] == text:
            return start, start + len(text)
    return None


def answer_tokens(offsets: list, start_char: int, end_char: int, cls_index: int) -> tuple[int, int]:
    """Token positions of a character span in one window; (cls, cls) when the window does not hold all of it."""
    context = [k for k, span in enumerate(offsets) if span is not None]
    if not context or offsets[context[0]][0] > start_char or offsets[context[-1]][1] < end_char:
        return cls_index, cls_index
    start = next(k for k in context if offsets[k][1] > start_char)
    end = next(k for k in reversed(context) if offsets[k][0] < end_char)
    return start, end


def window_loss(start_logits, end_logits, start_positions, end_positions) -> torch.Tensor:
    """Per-window cross-entropy of the gold start and end positions, averaged over the two (as BERT's QA head)."""
    start = F.cross_entropy(start_logits.float(), start_positions, reduction="none")
    end = F.cross_entropy(end_logits.float(), end_positions, reduction="none")
    return (start + end) / 2


def squad_scores(predictions: list[str], golds: list[list[str]], metric_names) -> tuple[dict, list[dict]]:
    """SQuAD v1.1 exact match and F1 in percent: per example the best over its gold answers; corpus: their mean."""
    from ..metrics.squad import best_over_golds, exact_match_score, f1_score

    per_example = [
        {
            "exact_match": 100 * best_over_golds(exact_match_score, prediction, answers),
            "f1": 100 * best_over_golds(f1_score, prediction, answers),
        }
        for prediction, answers in zip(predictions, golds)
    ]
    corpus = {
        name: sum(scores[name] for scores in per_example) / max(len(per_example), 1)
        for name in ("exact_match", "f1")
        if name in metric_names
    }
    return corpus, per_example


def example_id(options: QuestionAnsweringOptions, row: dict, index: int):
    return row[options.id_column] if options.id_column and options.id_column in row else index


class QuestionAnsweringAccumulator(Accumulator):
    """Keeps n_best candidates per window; decodes each example's best span at the end."""

    def result(self, dataset: datasets.Dataset, windows: datasets.Dataset) -> tuple[dict, list[dict]]:
        o = self.task.options
        columns = self.columns()
        best = self._best_spans(columns, dataset, windows)
        has_answers = o.answers_column in dataset.column_names
        golds = (
            [[t for t in parse_answers(a, "")["text"] if t] or [""] for a in dataset[o.answers_column]]
            if has_answers
            else None
        )
        predicted = [best.get(example, (float("-inf"), "", None))[1] for example in range(len(dataset))]
        metrics: dict[str, float] = {"num_examples": len(dataset)}
        per_example = [None] * len(dataset)
        if golds is not None:
            corpus, per_example = squad_scores(predicted, golds, self.metric_names)
            metrics.update(corpus)
            if "cross_entropy" in self.metric_names:
                metrics["cross_entropy"] = float(columns["loss"].double().mean())
                metrics["num_windows"] = len(columns["index"])
        rows = []
        for example in range(len(dataset)):
            row = dataset[example]
            probability, text, span = best.get(example, (0.0, "", None))
            rows.append(
                prediction_row(
                    example,
                    {o.question_column: row[o.question_column], o.context_column: row[o.context_column]},
                    text,
                    probability,
                    golds[example] if golds else None,
                    per_example[example],
                    id=example_id(o, row, example),
                    span=span,
                )
            )
        return metrics, rows

    def _best_spans(self, columns: dict, dataset, windows) -> dict[int, tuple[float, str, dict]]:
        """Per example: (probability, text, character span) of the best valid span over all its windows."""
        o = self.task.options
        offsets, example_of = windows["offset_mapping"], windows["example_index"]
        contexts = dataset[o.context_column]
        best: dict[int, tuple[float, str, dict]] = {}
        for row, window in enumerate(columns["index"].tolist()):
            example, spans = example_of[window], offsets[window]
            starts, ends = columns["start_index"][row].tolist(), columns["end_index"][row].tolist()
            start_scores, end_scores = columns["start_logit"][row].tolist(), columns["end_logit"][row].tolist()
            normaliser = float(columns["normaliser"][row])
            for start, start_score in zip(starts, start_scores):
                if start >= len(spans) or spans[start] is None:
                    continue
                for end, end_score in zip(ends, end_scores):
                    if end >= len(spans) or spans[end] is None or end < start or end - start + 1 > o.max_answer_length:
                        continue
                    probability = math.exp(start_score + end_score - normaliser)
                    if example not in best or probability > best[example][0]:
                        begin, finish = spans[start][0], spans[end][1]
                        best[example] = (probability, contexts[example][begin:finish], {"start": begin, "end": finish})
        return best


class GenerativeQuestionAnswering(TextGeneration):
    """Question answering by a causal language model: it reads the context and question and writes the answer."""

    name = QuestionAnswering.name
    options_class = QuestionAnsweringOptions
    file_readers = QuestionAnswering.file_readers
    predict_fields = QuestionAnswering.predict_fields
    example_metric = QuestionAnswering.example_metric
    example_noun = QuestionAnswering.example_noun
    metric_labels = QuestionAnswering.metric_labels
    hub_task = QuestionAnswering.hub_task

    def input_fields(self, column_names, where):
        o = self.options
        columns = {"task.question_column": o.question_column, "task.context_column": o.context_column}
        used = prompting.prompt_columns(self.template)
        require_columns(column_names, {key: column for key, column in columns.items() if column in used}, where)
        return {
            role: Field(column)
            for role, column in (("question", o.question_column), ("context", o.context_column))
            if column in used
        }

    def target_field(self, column_names, where, required):
        column = self.options.answers_column
        if required:
            require_columns(column_names, {"task.answers_column": column}, where)
        return Field(column) if column in column_names else None

    def references(self, value) -> list[str] | None:
        texts = [text for text in parse_answers(value, "")["text"] if isinstance(text, str) and text.strip()]
        return texts or None

    def input_columns(self) -> dict[str, str]:
        return {"question": self.options.question_column, "context": self.options.context_column}

    augment_fields = QuestionAnswering.augment_fields

    def default_template(self) -> str:
        o = self.options
        return f"Context: {{{o.context_column}}}\nQuestion: {{{o.question_column}}}\nAnswer: {{{prompting.COMPLETION}}}"

    def generation_settings(self) -> dict:
        return {"num_beams": self.options.num_beams, "max_new_tokens": self.options.max_new_tokens}

    def score(self, generated, references, metric_names):
        return squad_scores(generated, references, metric_names)

    def row_extras(self, row: dict, index: int) -> dict:
        return {"id": example_id(self.options, row, index)}

    def subject(self) -> str:
        return (
            "generative question answering "
            "(a causal language model writes the answer after the context and the question)"
        )

    def card_description(self) -> str:
        return self.subject()

    def example_inputs(self) -> dict[str, str]:
        o = self.options
        return {o.question_column: EXAMPLE["question"], o.context_column: EXAMPLE["context"]}
