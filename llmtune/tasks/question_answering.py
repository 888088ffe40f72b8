"""Extractive question answering (SQuAD): find the answer span in the context.

Long contexts become overlapping windows (`max_length`, `doc_stride`). Training labels each window
with the answer's token positions, or the CLS position when the answer is not inside it. Decoding
takes the best start/end candidates of every window of an example and maps the best valid span
back to context characters through the offset mapping.
"""

from __future__ import annotations

import json
import warnings

import datasets
import torch
import torch.nn.functional as F
from transformers import AutoModelForQuestionAnswering

from .. import metrics as metric_modules
from .. import prompting
from ..data import describe, require_columns, row_location, tokenization_fingerprint
from ..errors import DataWarning, UserError
from ..recipe import DataSpec, QuestionAnsweringTask
from .card import PushedModel, literal
from .generative import PromptCompletionTask
from .outputs import CollectedOutputs

# The model card's example question.
EXAMPLE = {"question": "Where is the treasure?", "context": "The treasure is buried under the old oak tree."}


class QuestionAnswering:
    auto_class = AutoModelForQuestionAnswering
    peft_task_type = "QUESTION_ANS"
    # Per-window columns the decoder needs but the model must not see.
    metadata_columns = ("offset_mapping", "example_index")
    pipeline_tag = "question-answering"
    hub_task = ("question-answering", "Question Answering")
    predict_options = '--question "..." --context "..."'

    def __init__(self, options: QuestionAnsweringTask):
        self.options = options
        self.label_names = None

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
            require_columns(dataset, columns, where)
            for key, column in (("question", o.question_column), ("context", o.context_column)):
                for row, text in enumerate(dataset[column]):
                    if not isinstance(text, str) or not text.strip():
                        raise UserError(
                            f"{where} {row_location(sources[split], row)}: empty {key} in column '{column}'; expected text"
                        )
            if o.answers_column not in dataset.column_names:
                continue
            usable = [
                aligned_answer(context, parse_answers(answers, f"{where} {row_location(sources[split], row)}"))
                is not None
                for row, (context, answers) in enumerate(zip(dataset[o.context_column], dataset[o.answers_column]))
            ]
            bad = usable.count(False)
            if not bad:
                continue
            if split == "train" and bad == len(dataset):
                raise UserError(
                    f"{where}: none of the {len(dataset)} answers occurs in its context at its answer_start; "
                    "expected answers: {text: [...], answer_start: [character offsets into the context]}"
                )
            action = "skipped for training" if split == "train" else "kept: scored on answer text, no span label"
            warnings.warn(
                f"{where}: {bad} of {len(dataset)} examples have no answer that occurs at its answer_start; {action}",
                DataWarning,
                stacklevel=2,
            )
            if split == "train":
                splits[split] = dataset.select([row for row, ok in enumerate(usable) if ok])

    # ------------------------------------------------------------------ model

    def model_kwargs(self) -> dict:
        return {}

    def setup(self, config, tokenizer) -> None:
        """Nothing to adapt: windows are built from the tokenizer's own padding side."""

    def preprocess(self, dataset: datasets.Dataset, tokenizer, max_length: int) -> datasets.Dataset:
        """One row per window: model inputs, start/end labels, offsets (None outside the context), example index."""
        o = self.options
        has_answers = o.answers_column in dataset.column_names
        keep = set(tokenizer.model_input_names)
        pad_right = tokenizer.padding_side == "right"
        cls_index = 0

        def encode(batch, indices):
            questions = [q.lstrip() for q in batch[o.question_column]]
            try:
                encoded = tokenizer(
                    questions if pad_right else batch[o.context_column],
                    batch[o.context_column] if pad_right else questions,
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
            features = {key: encoded[key] for key in encoded if key in keep}
            features.update({"example_index": [], "offset_mapping": [], "start_positions": [], "end_positions": []})
            for window, example in enumerate(encoded["overflow_to_sample_mapping"]):
                sequence_ids = encoded.sequence_ids(window)
                context_id = 1 if pad_right else 0
                offsets = [
                    span if sequence_ids[k] == context_id else None
                    for k, span in enumerate(encoded["offset_mapping"][window])
                ]
                features["offset_mapping"].append(offsets)
                features["example_index"].append(indices[example])
                start = end = cls_index
                answer = (
                    aligned_answer(
                        batch[o.context_column][example], parse_answers(batch[o.answers_column][example], "")
                    )
                    if has_answers
                    else None
                )
                if answer is not None:
                    start, end = answer_tokens(offsets, answer[0], answer[1], cls_index)
                features["start_positions"].append(start)
                features["end_positions"].append(end)
            features["length"] = [len(ids) for ids in encoded["input_ids"]]
            return features

        fingerprint = tokenization_fingerprint(dataset, tokenizer, "question_answering/1", o.model_dump(), max_length)
        windows = dataset.map(
            encode,
            batched=True,
            with_indices=True,
            remove_columns=dataset.column_names,
            desc="Tokenizing",
            new_fingerprint=fingerprint,
        )
        return windows.add_column("index", list(range(len(windows))), new_fingerprint=fingerprint + "-index")

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
        """Per window: the n_best start and end candidates (not the full logits) and the span loss."""
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
            "loss": window_loss(start_logits, end_logits, batch["start_positions"], batch["end_positions"]),
        }

    def new_accumulator(self, metric_names: tuple[str, ...]) -> QuestionAnsweringAccumulator:
        return QuestionAnsweringAccumulator(self, metric_names)

    def predict(self, model, tokenizer, rows: list[dict], max_length: int, batch_size: int = 32) -> list[dict]:
        """The answer span for each row (a dict with the question and context columns)."""
        from ..batching import PadCollator

        dataset = datasets.Dataset.from_list(rows)
        windows = self.preprocess(dataset, tokenizer, max_length)
        collate = PadCollator(tokenizer.pad_token_id, tokenizer.padding_side)
        accumulator = self.new_accumulator(())
        device = next(model.parameters()).device
        inputs = windows.remove_columns(list(self.metadata_columns))
        model.eval()
        with torch.inference_mode():
            for start in range(0, len(inputs), batch_size):
                batch = collate([inputs[i] for i in range(start, min(start + batch_size, len(inputs)))])
                accumulator.add(self.eval_step(model, {key: value.to(device) for key, value in batch.items()}))
        _, predictions = accumulator.result(dataset, windows)
        return [{**row, "answer": p["predicted"], "score": p["score"]} for row, p in zip(rows, predictions)]

    # ------------------------------------------------------------------ model card

    def card_description(self) -> str:
        return "extractive question answering (the answer is a span of the context)"

    def usage_code(self, model: PushedModel, max_length: int) -> str:
        """The best-scoring answer span (start logit + end logit) of one question with plain transformers / peft."""
        auto = self.auto_class.__name__
        longest = self.options.max_answer_length
        return (
            "import torch\n"
            + model.imports(auto)
            + "\n"
            + model.load(auto)
            + f"question = {literal(EXAMPLE['question'])}\ncontext = {literal(EXAMPLE['context'])}\n"
            + f"# A context longer than {max_length} tokens is cut here; llmtune predict reads it in overlapping windows.\n"
            + f'inputs = tokenizer(question, context, truncation="only_second", max_length={max_length}, return_offsets_mapping=True, return_tensors="pt")\n'
            + 'offsets = inputs.pop("offset_mapping")[0].tolist()\n'
            + "with torch.no_grad():\n    outputs = model(**inputs)\n"
            + "starts, ends = outputs.start_logits[0].tolist(), outputs.end_logits[0].tolist()\n"
            + "context_tokens = [i for i, part in enumerate(inputs.sequence_ids(0)) if part == 1]\n"
            + f"spans = [(s, e) for s in context_tokens for e in context_tokens if s <= e < s + {longest}]  # at most {longest} tokens long\n"
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


class QuestionAnsweringAccumulator(CollectedOutputs):
    """Keeps n_best candidates per window; decodes each example's best span at the end."""

    def result(self, dataset: datasets.Dataset, windows: datasets.Dataset) -> tuple[dict, list[dict]]:
        o = self.task.options
        columns = self.columns()
        window_ids = columns["index"].tolist()
        offsets = windows["offset_mapping"]
        example_of = windows["example_index"]
        best: dict[int, tuple[float, str]] = {}
        contexts = dataset[o.context_column]
        for row, window in enumerate(window_ids):
            example = example_of[window]
            spans = offsets[window]
            context = contexts[example]
            starts, ends = columns["start_index"][row].tolist(), columns["end_index"][row].tolist()
            start_scores, end_scores = columns["start_logit"][row].tolist(), columns["end_logit"][row].tolist()
            for start, start_score in zip(starts, start_scores):
                if start >= len(spans) or spans[start] is None:
                    continue
                for end, end_score in zip(ends, end_scores):
                    if end >= len(spans) or spans[end] is None or end < start or end - start + 1 > o.max_answer_length:
                        continue
                    score = start_score + end_score
                    if example not in best or score > best[example][0]:
                        best[example] = (score, context[spans[start][0] : spans[end][1]])
        has_answers = o.answers_column in dataset.column_names
        golds = [parse_answers(a, "")["text"] for a in dataset[o.answers_column]] if has_answers else None
        ids = dataset[o.id_column] if o.id_column and o.id_column in dataset.column_names else list(range(len(dataset)))
        questions = dataset[o.question_column]
        rows = []
        for example in range(len(dataset)):
            score, text = best.get(example, (float("-inf"), ""))
            row = {"id": ids[example], "question": questions[example], "predicted": text, "score": round(score, 4)}
            if golds is not None:
                row["answers"] = golds[example]
            rows.append(row)
        metrics: dict[str, float] = {"num_examples": len(dataset)}
        if has_answers:
            if {"exact_match", "f1"} & set(self.metric_names):
                scores = metric_modules.load("squad").compute(
                    predictions=[r["predicted"] for r in rows], references=golds
                )
                metrics.update({name: scores[name] for name in ("exact_match", "f1") if name in self.metric_names})
            if "cross_entropy" in self.metric_names:
                metrics["cross_entropy"] = float(columns["loss"].double().mean())
                metrics["num_windows"] = len(window_ids)
        return metrics, rows


class GenerativeQuestionAnswering(PromptCompletionTask):
    """Question answering by a causal language model: it reads the context and question and writes the answer.

    Trained on the first gold answer of each example (answer_start is not needed); scored with the
    SQuAD v1.1 exact match and F1 against all gold answers, as the extractive task is.
    """

    prediction_key = "answer"
    hub_task = QuestionAnswering.hub_task
    predict_options = QuestionAnswering.predict_options

    def examples(self) -> dict[str, str]:
        return {self.options.question_column: EXAMPLE["question"], self.options.context_column: EXAMPLE["context"]}

    def card_description(self) -> str:
        return "generative question answering (a causal language model writes the answer after the context and the question)"

    def default_template(self) -> str:
        o = self.options
        return f"Context: {{{o.context_column}}}\nQuestion: {{{o.question_column}}}\nAnswer: {{{prompting.COMPLETION}}}"

    def input_columns(self) -> dict[str, str]:
        return {
            "task.question_column": self.options.question_column,
            "task.context_column": self.options.context_column,
        }

    def target_column(self) -> tuple[str, str]:
        return "task.answers_column", self.options.answers_column

    def target(self, row: dict, where: str) -> str | None:
        texts = parse_answers(row[self.options.answers_column], where)["text"]
        return texts[0] if texts else None

    def score(self, predictions: list[str], dataset: datasets.Dataset) -> dict[str, float]:
        golds = [parse_answers(a, "")["text"] for a in dataset[self.options.answers_column]]
        scores = metric_modules.load("squad").compute(predictions=predictions, references=golds)
        return {"exact_match": scores["exact_match"], "f1": scores["f1"]}

    def prediction_row(self, row: dict, index: int, text: str) -> dict:
        o = self.options
        result = {
            "id": row[o.id_column] if o.id_column and o.id_column in row else index,
            "question": row[o.question_column],
            "predicted": text,
        }
        if o.answers_column in row:
            result["answers"] = parse_answers(row[o.answers_column], "")["text"]
        return result
