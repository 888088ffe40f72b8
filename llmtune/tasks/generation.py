"""Tasks that write text: summarization, translation and generative question answering share this module.

A text-generation task reads named input texts from each row (a source document; a question and its context)
and learns to write a reference text. How texts become model inputs, and how text is generated, depends on
the model family, one object each:

- `EncoderDecoder` (T5, BART, Marian, warm-started BERT2BERT): the encoder reads the source, the decoder is
  taught the reference (teacher forcing) and generates it.
- `PromptCompletion` (a causal, GPT-style LM: `task.generative: true`): the inputs fill a prompt template and
  the reference is the completion; the loss counts completion tokens only (packing optional); generation
  continues the prompt, left-padded. This is the only prompt -> completion code: every task's generative
  form is a `TextGeneration` with this family.

Everything else is here once: data checks (with `data.drop_empty`), evaluation by generation plus the
teacher-forced cross-entropy and perplexity of the references, prediction rows with the model's confidence.
A subclass says where its texts are, its template and generation settings, and how outputs are scored.
A reference may be one text or several: the first is trained on, metrics take them all.
"""

from __future__ import annotations

import math
import warnings
from abc import abstractmethod
from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import Field as SchemaField
from pydantic import field_validator, model_validator

from ..common.errors import DataWarning, Notice, UserError
from ..common.lazy import F, datasets, torch
from ..data.reading import describe, row_location
from ..data.schema import DataSpec
from ..models.loading import is_decoder_only
from . import prompting
from .base import Accumulator, Task, TaskOptions, prediction_row, tokenize
from .card import PushedModel, causal_lm_usage, example_row, keywords, literal


class PromptCompletionOptions(TaskOptions):
    """The keys that switch a text task to prompt -> completion fine-tuning of a causal (GPT-style) language model.

    Each task with a generative form inherits them and names its own default template.
    """

    type: str = SchemaField(description="The task.")  # narrowed to one Literal by each task; declared first
    generative: bool = SchemaField(
        False,
        description="Use a causal (GPT-style) language model: prompt -> completion fine-tuning (the loss counts the "
        "completion tokens only), evaluated by generation with the task's metrics and by cross-entropy and perplexity "
        "of the gold completions.",
    )
    prompt_template: str | None = SchemaField(
        None,
        description="Generative only: the prompt, with `{column}` fields, ending in the `{completion}` slot the target "
        "goes into. Default per task: 'Context: {context}\\nQuestion: {question}\\nAnswer: {completion}'; "
        "'Summarize:\\n{document}\\nSummary: {completion}'; 'Translate German to English:\\n{de}\\nEnglish: "
        "{completion}' (with the task's column names and languages).",
    )
    chat_template: bool = SchemaField(
        False,
        description="Generative only: send the prompt as the user turn of the tokenizer's chat template "
        "(instruct models).",
    )
    packing: bool = SchemaField(
        False,
        description="Generative only: train on a batch's examples packed into rows of max_length tokens; attention and "
        "loss stay within each example.",
    )

    # Keys that only generative fine-tuning reads, with their defaults
    # (a changed one without `generative` is a mistake).
    generative_only: ClassVar[dict[str, Any]] = {"prompt_template": None, "chat_template": False, "packing": False}
    # Keys that only the non-generative model family reads: {key: (default, hint)}.
    not_generative: ClassVar[dict[str, Any]] = {}

    @field_validator("prompt_template")
    @classmethod
    def _template_syntax(cls, template: str | None) -> str | None:
        if template is not None:
            prompting.template_fields(template)  # ValueError: pydantic reports it at the key's location
        return template

    @model_validator(mode="after")
    def _generative_keys(self) -> PromptCompletionOptions:
        task = self.type.replace("_", " ")
        if not self.generative:
            for key, default in self.generative_only.items():
                if getattr(self, key) != default:
                    raise ValueError(
                        f"task.{key} applies to generative {task} only; set task.generative: true (and a causal LM)"
                    )
        else:
            for key, (default, hint) in self.not_generative.items():
                if getattr(self, key) != default:
                    raise ValueError(f"task.{key} does not apply to generative {task} (task.generative: true); {hint}")
        return self


@dataclass(frozen=True)
class Field:
    """Where a text lives in a row: a column, or a key inside a nested column (`translation[de]`)."""

    column: str
    key: str | None = None

    @property
    def name(self) -> str:
        """The text's name in prompt templates and prediction inputs: the key of a nested column, else the column."""
        return self.key or self.column

    def read(self, row: dict):
        value = row.get(self.column)
        return (value.get(self.key) if isinstance(value, dict) else None) if self.key else value

    def __str__(self) -> str:
        return f"{self.column}[{self.key}]" if self.key else self.column


def input_text(value) -> str | None:
    """An input as one string: a list of sentences (SciTLDR) is joined with spaces; None when empty."""
    if isinstance(value, list) and all(isinstance(part, str) for part in value):
        value = " ".join(part.strip() for part in value)
    return value if isinstance(value, str) and value.strip() else None


def reference_texts(value) -> list[str] | None:
    """A target as a list of references: one text, or a list of texts; None when any is empty."""
    golds = value if isinstance(value, list) else [value]
    return golds if golds and all(isinstance(gold, str) and gold.strip() for gold in golds) else None


def unwrapped(model):
    """The model under a DistributedDataParallel wrapper (generate and helper methods live there)."""
    return getattr(model, "module", model)


class TextGeneration(Task):
    """Shared implementation; see the module docstring. Subclasses implement the methods under "what a task says"."""

    metadata_columns = ("target_truncated",)  # per example, counted for a warning; not a model input
    generates_text = True

    def __init__(self, options: PromptCompletionOptions):
        super().__init__(options)
        self.tokenizer = None  # set by setup / preprocess / predict: outputs are decoded with it
        self.template = (options.prompt_template or self.default_template()) if options.generative else None
        self.family = PromptCompletion(self) if options.generative else EncoderDecoder(self)

    # The model class, adapter type and Hub pipeline are the family's: a causal LM, or an encoder-decoder.
    auto_class = property(lambda self: self.family.auto_class)
    peft_task_type = property(lambda self: self.family.peft_task_type)
    pipeline_tag = property(lambda self: "text-generation" if self.options.generative else self.hub_task[0])

    # ------------------------------------------------------------------ what a task says

    @abstractmethod
    def input_fields(self, column_names: list[str], where: str) -> dict[str, Field]:
        """{role: field} of the inputs ("source"; "question", "context"), found among the columns.

        Raises:
            UserError: an input column is missing (naming the recipe key).
        """

    def leakage_fields(self, column_names: list[str]) -> list[tuple[str | tuple[str, str], ...]]:
        """Each input apart (a source; a context and a question), where the data holds it: (column, key) for a text
        inside a nested translation column. Targets are not compared: a seen source leaks whatever its reference."""
        fields = self.input_fields(column_names, "data").values()
        return [((field.column, field.key) if field.key else field.column,) for field in fields]

    @abstractmethod
    def target_field(self, column_names: list[str], where: str, required: bool) -> Field | None:
        """The field holding the references; None when the split has none and `required` is False.

        Raises:
            UserError: the references are required and missing.
        """

    def references(self, value) -> list[str] | None:
        """A row's references from the target field's value; None when missing or empty."""
        return reference_texts(value)

    @abstractmethod
    def default_template(self) -> str: ...

    @abstractmethod
    def generation_settings(self) -> dict:
        """`generate` settings: num_beams and max_new_tokens, and what else the task's options set (never do_sample:
        generation is deterministic)."""

    def input_limits(self) -> dict[str, int]:
        """{input name: most tokens} for inputs cut before they reach the model (e.g. task.max_source_length)."""
        return {}

    def target_limit(self) -> int | None:
        """Most tokens of a trained reference (longer ones are cut, with a warning); None: as max_length allows."""
        return None

    @abstractmethod
    def score(self, generated: list[str], references: list[list[str]], metric_names) -> tuple[dict, list[dict]]:
        """(corpus metrics among `metric_names`, per-example metrics of every output)."""

    def row_extras(self, row: dict, index: int) -> dict:
        """Extra keys of a prediction row (e.g. the example's id)."""
        return {}

    @abstractmethod
    def subject(self) -> str:
        """What the model does, for the model card: "summarization"."""

    @abstractmethod
    def example_inputs(self) -> dict[str, str]:
        """The model card's example values of the inputs, by input name."""

    # ------------------------------------------------------------------ checks

    def prepare(self, splits: dict[str, datasets.Dataset], spec: DataSpec) -> None:
        """Check that every split has its inputs and that train has references; with `data.drop_empty`, rows with
        an empty input or reference are left out (counted in a warning) instead of stopping at the first.

        Raises:
            UserError: a missing column, a template column the data lacks, an empty input or reference.
        """
        sources = spec.sources()
        for split, dataset in list(splits.items()):
            where = describe(split, sources[split])
            fields = self.input_fields(dataset.column_names, where)
            target = self.target_field(dataset.column_names, where, required=split == "train")
            if self.template is not None:
                columns = [*dataset.column_names, *(field.name for field in fields.values())]
                prompting.check_template_columns(self.template, "task.prompt_template", columns, where)
            checks = [(role, field, input_text) for role, field in fields.items()]
            checks += [("target", target, self.references)] if target is not None else []
            empty = set()
            for role, field, parse in checks:
                for row, value in enumerate(_column(dataset, field)):
                    if parse(value) is not None:
                        continue
                    if not spec.drop_empty:
                        raise UserError(
                            f"{where} {row_location(sources[split], row)}: empty {role} in column '{field}' "
                            f"({value!r:.60}); expected a non-empty text"
                            + (" or a list of non-empty texts" if role == "target" else "")
                            + " (data.drop_empty: true leaves such rows out)"
                        )
                    empty.add(row)
            if empty:
                splits[split] = self._without(
                    dataset, sorted(empty), [role for role, _, _ in checks], where, sources[split]
                )

    @staticmethod
    def _without(dataset, empty: list[int], roles: list[str], where: str, source) -> datasets.Dataset:
        what = " or ".join([", ".join(roles[:-1]), roles[-1]] if len(roles) > 1 else roles)
        if len(empty) == len(dataset):
            raise UserError(f"{where}: every row has an empty {what}; nothing is left after data.drop_empty")
        at = ", ".join(row_location(source, row) for row in empty[:5]) + (", ..." if len(empty) > 5 else "")
        warnings.warn(
            f"{where}: left out {len(empty):,} of {len(dataset):,} rows with an empty {what} ({at}; data.drop_empty)",
            DataWarning,
            stacklevel=3,
        )
        return dataset.select(sorted(set(range(len(dataset))) - set(empty)))

    def input_truncated(self, row: dict, tokenizer, max_length: int) -> bool:
        fields = self.input_fields(list(row), "").values()
        return any(
            len(tokenizer(input_text(field.read(row)) or "")["input_ids"])
            > (self.input_limits().get(field.name) or max_length)
            for field in fields
        )

    def input_row(self, value: str | dict, number: int) -> dict:
        row = super().input_row(value, number)
        if self.template is not None:
            names = [field.name for field in self.input_fields(list(row), f"input row {number}").values()]
            prompting.check_template_columns(
                self.template, "task.prompt_template", [*row, *names], f"input row {number}"
            )
        return row

    # ------------------------------------------------------------------ model inputs

    def setup(self, config, tokenizer) -> None:
        """Keep the tokenizer (outputs are decoded with it); a causal LM's is checked.

        Raises:
            UserError: generative, and the model is not a causal LM, or the tokenizer has no EOS token
                (or no chat template when task.chat_template is set).
        """
        self.family.setup(config, tokenizer)
        self.tokenizer = tokenizer

    def inputs_of(self, row: dict, fields: dict[str, Field]) -> dict[str, str]:
        """A row's input texts by name, plus the other columns a prompt template reads."""
        texts = {field.name: input_text(field.read(row)) or "" for field in fields.values()}
        extra = prompting.prompt_columns(self.template) if self.template is not None else []
        return {**{name: row[name] for name in extra if name not in texts}, **texts}

    def preprocess(self, dataset: datasets.Dataset, tokenizer, max_length: int) -> datasets.Dataset:
        """Tokenized model inputs and `labels` (the first reference), `index`, `length` (input tokens), and which
        references were cut to fit."""
        self.tokenizer = tokenizer
        fields = self.input_fields(dataset.column_names, "")
        target = self.target_field(dataset.column_names, "", required=False)

        def encode(batch, indices):
            rows = [{key: batch[key][k] for key in batch} for k in range(len(indices))]
            inputs = [self.inputs_of(row, fields) for row in rows]
            targets = [(self.references(target.read(row)) or [""])[0] for row in rows] if target else None
            features, truncated = self.family.encode(tokenizer, inputs, targets, max_length)
            features["index"] = indices
            features["length"] = [len(ids) for ids in features["input_ids"]]
            features["target_truncated"] = truncated
            return features

        settings = (sorted(map(str, fields.values())), str(target), self.family.settings(tokenizer, max_length))
        features = tokenize(dataset, tokenizer, encode, f"{self.name}/text-generation/1", settings)
        if target is None and "labels" in features.column_names:
            # No reference (prediction inputs): no teacher-forced pass to score one, a quarter of predict's time.
            features = features.remove_columns("labels")
        truncated = sum(features["target_truncated"])
        if truncated:
            warnings.warn(
                f"{truncated:,} of {len(features):,} targets are longer than task.max_target_length "
                f"({self.target_limit()} tokens) and were truncated for the loss (metrics still compare with the full "
                "references)",
                DataWarning,
                stacklevel=2,
            )
        return features

    # ------------------------------------------------------------------ training and evaluation

    def loss(self, model, batch: dict) -> torch.Tensor:
        """Mean cross-entropy per reference token of the batch (padding, and a causal LM's prompt, ignored)."""
        return self.family.loss(model, batch)

    def eval_step(self, model, batch: dict) -> dict[str, torch.Tensor]:
        """Per example: the reference's summed NLL and token count (teacher forcing), the generated ids and the
        model's confidence in them. The batch's logits are reduced to two numbers per example here."""
        outputs = {"index": batch["index"]}
        if "labels" in batch:
            outputs["nll"], outputs["target_tokens"] = self.family.target_losses(model, batch)
        outputs["generated"], outputs["confidence"] = self.family.generate(model, batch, self.generation_settings())
        return outputs

    def new_accumulator(self, metric_names: tuple[str, ...]) -> TextGenerationAccumulator:
        return TextGenerationAccumulator(self, metric_names)

    # ------------------------------------------------------------------ model card

    def card_description(self) -> str:
        return self.subject() + (" (a causal language model continues a prompt)" if self.options.generative else "")

    def usage_code(self, model: PushedModel, max_length: int) -> str:
        return self.family.usage_code(model, self.example_inputs(), self.generation_settings(), max_length)


def _column(dataset: datasets.Dataset, field: Field) -> list:
    values = dataset[field.column]
    return [value.get(field.key) if isinstance(value, dict) else None for value in values] if field.key else values


class TextGenerationAccumulator(Accumulator):
    """Decodes generated ids batch by batch (only text is kept) and scores everything at the end."""

    def __init__(self, task: TextGeneration, metric_names: tuple[str, ...]):
        super().__init__(task, metric_names)
        self.generated: list[str] = []

    def add(self, outputs: dict[str, torch.Tensor]) -> None:
        outputs = dict(outputs)
        self.generated += self.task.family.decode(self.task.tokenizer, outputs.pop("generated"))
        super().add(outputs)

    def result(self, dataset: datasets.Dataset, features: datasets.Dataset) -> tuple[dict, list[dict]]:
        order = torch.cat(self.parts["index"]).argsort().tolist()
        generated = [self.generated[k] for k in order]
        columns = self.columns()
        indices = columns["index"].tolist()
        task = self.task
        fields = task.input_fields(dataset.column_names, "")
        target = task.target_field(dataset.column_names, "", required=False)
        rows = [dataset[index] for index in indices]
        references = [task.references(target.read(row)) or [""] for row in rows] if target else None
        metrics: dict = {"num_examples": len(indices)}
        per_example = [None] * len(rows)
        if references is not None:
            corpus, per_example = task.score(generated, references, self.metric_names)
            metrics.update(corpus)
        if "distinct_outputs" in self.metric_names:
            metrics["distinct_outputs"] = round(len(set(generated)) / len(generated), 4) if generated else 1.0
        problem = degeneracy(generated)
        if problem:
            warnings.warn(f"evaluation: {problem}; the model is not using its input yet", Notice, stacklevel=2)
        if references is not None:
            metrics.update(_cross_entropy(columns, self.metric_names))
            if "signature" in metrics:  # sacrebleu's signature last: a line, not a number
                metrics["signature"] = metrics.pop("signature")
        predictions = []
        for k, (index, row) in enumerate(zip(indices, rows)):
            reference = None if references is None else references[k][0] if len(references[k]) == 1 else references[k]
            inputs = {field.name: input_text(field.read(row)) for field in fields.values()}
            predictions.append(
                prediction_row(
                    index,
                    inputs,
                    generated[k],
                    columns["confidence"][k],
                    reference,
                    per_example[k],
                    **task.row_extras(row, index),
                )
            )
        return metrics, predictions


# Fewer outputs than this are too few to call a model degenerate (a tiny test split may well repeat itself).
DEGENERACY_MIN_OUTPUTS = 10


def degeneracy(generated: list[str]) -> str | None:
    """What makes these outputs degenerate, with its share, or None: more than half of them empty, or the same
    text, or stuck in a loop (a failure that ROUGE or BLEU alone hides: a fixed generic sentence still scores)."""
    total = len(generated)
    if total < DEGENERACY_MIN_OUTPUTS:
        return None
    empty = sum(not text.strip() for text in generated)
    if empty > total / 2:
        return f"{empty / total:.0%} of the {total} generated outputs are empty"
    text, count = Counter(generated).most_common(1)[0]
    if count > total / 2:
        shown = text if len(text) <= 60 else text[:57] + "..."
        return f"{count / total:.0%} of the {total} generated outputs are the same text ({shown!r})"
    loops = sum(map(is_loop, generated))
    if loops > total / 2:
        return f"{loops / total:.0%} of the {total} generated outputs repeat a phrase over and over"
    return None


def is_loop(text: str, n: int = 3) -> bool:
    """A text of at least 8 words whose word n-grams are mostly repeats ("the cat sat the cat sat the cat sat")."""
    words = text.split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return len(words) >= 8 and len(set(grams)) <= len(grams) / 2


def _cross_entropy(columns: dict, metric_names) -> dict:
    """Teacher-forced cross-entropy of the references (per reference token, natural log) and its perplexity."""
    tokens = int(columns["target_tokens"].sum())
    cross_entropy = float(columns["nll"].double().sum()) / max(tokens, 1)
    metrics = {"num_target_tokens": tokens}
    if "cross_entropy" in metric_names:
        metrics["cross_entropy"] = cross_entropy
    if "perplexity" in metric_names:
        metrics["perplexity"] = math.exp(min(cross_entropy, 700.0))  # finite: metrics.json must stay valid JSON
    return metrics


# ---------------------------------------------------------------------------------------------- model families


class EncoderDecoder:
    """An encoder reads the source; the decoder is taught the target (teacher forcing) and generates it."""

    auto_class = "AutoModelForSeq2SeqLM"
    peft_task_type = "SEQ_2_SEQ_LM"

    def __init__(self, task: TextGeneration):
        self.task = task
        self.options = task.options

    def setup(self, config, tokenizer) -> None:
        pass

    def settings(self, tokenizer, max_length: int) -> tuple:
        """What else the tokenized features depend on (for the dataset cache fingerprint)."""
        return (self.options.prefix, self.source_limit(tokenizer, max_length), self.task.target_limit())

    def source_limit(self, tokenizer, max_length: int) -> int:
        limit = self.task.input_limits().get(self.task.source_name()) or max_length
        model_max = getattr(tokenizer, "model_max_length", None)
        return min(limit, model_max) if isinstance(model_max, int) and 0 < model_max < 1_000_000 else limit

    def encode(self, tokenizer, inputs: list[dict], targets: list[str] | None, max_length: int) -> tuple[dict, list]:
        """Model inputs (and `labels` when targets are given); which targets were cut at the target limit."""
        source_name = self.task.source_name()
        sources = [self.options.prefix + row[source_name] for row in inputs]
        encoded = tokenizer(sources, truncation=True, max_length=self.source_limit(tokenizer, max_length))
        features = {key: encoded[key] for key in tokenizer.model_input_names if key in encoded}
        if targets is None:
            return features, [False] * len(sources)
        limit = self.task.target_limit()
        # text_target: tokenizers with separate target vocabularies (Marian) switch to them.
        labels = [self.without_cls(tokenizer, ids) for ids in tokenizer(text_target=targets)["input_ids"]]
        truncated = [len(ids) > limit for ids in labels]
        if any(truncated):
            cut = [target for target, long in zip(targets, truncated) if long]
            encoded = tokenizer(text_target=cut, truncation=True, max_length=limit + self.cls_count(tokenizer))
            shortened = iter(self.without_cls(tokenizer, ids) for ids in encoded["input_ids"])
            labels = [next(shortened) if long else ids for ids, long in zip(labels, truncated)]
        features["labels"] = labels
        return features, truncated

    @staticmethod
    def cls_count(tokenizer) -> int:
        """1 when targets are tokenized with a leading [CLS] that is not a BOS token (BERT tokenizers), else 0."""
        return int(tokenizer.cls_token_id is not None and tokenizer.cls_token_id != tokenizer.bos_token_id)

    def without_cls(self, tokenizer, ids: list[int]) -> list[int]:
        """Target ids without a leading [CLS]: a BERT2BERT decoder starts from [CLS] (decoder_start_token_id), so the
        first token it must predict is the first word. BOS tokens (BART's <s>) stay: those models are taught them."""
        return ids[1:] if self.cls_count(tokenizer) and ids and ids[0] == tokenizer.cls_token_id else ids

    def logits(self, model, batch: dict) -> torch.Tensor:
        """Teacher-forced next-token logits aligned with `batch["labels"]`
        (the decoder input is the labels shifted right)."""
        decoder_input_ids = unwrapped(model).prepare_decoder_input_ids_from_labels(labels=batch["labels"])
        return model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], decoder_input_ids=decoder_input_ids
        ).logits

    def loss(self, model, batch: dict) -> torch.Tensor:
        """Mean cross-entropy per target token of the batch (padding ignored)."""
        logits = self.logits(model, batch)
        return F.cross_entropy(logits.float().flatten(0, 1), batch["labels"].flatten(), ignore_index=-100)

    def target_losses(self, model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Per example: summed NLL of the target tokens and their number."""
        logits, labels = self.logits(model, batch), batch["labels"]
        losses = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=-100, reduction="none")
        return losses.sum(-1), (labels != -100).sum(-1)

    def generate(self, model, batch: dict, settings: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Generated token ids (after the decoder start token) and the model's confidence in each output."""
        eos = unwrapped(model).generation_config.eos_token_id
        eos = eos[0] if isinstance(eos, list) else eos
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        return prompting.generate_with_confidence(model, inputs, settings, eos, start=1)

    def decode(self, tokenizer, ids: torch.Tensor) -> list[str]:
        return [text.strip() for text in tokenizer.batch_decode(ids, skip_special_tokens=True)]

    def usage_code(self, model: PushedModel, inputs: dict[str, str], settings: dict, max_length: int) -> str:
        """The model card's snippet: generate from the tokenized source (with the recipe's prefix)."""
        auto = self.auto_class
        source = f"{literal(self.options.prefix)} + text" if self.options.prefix else "text"
        limit = self.task.input_limits().get(self.task.source_name()) or max_length
        return (
            model.imports(auto)
            + "\n"
            + model.load(auto)
            + f"text = {literal(inputs[self.task.source_name()])}\n"
            + f'inputs = tokenizer([{source}], return_tensors="pt", truncation=True, max_length={limit})\n'
            + f"output = model.generate(**inputs, {keywords({**settings, 'do_sample': False})})\n"
            + "print(tokenizer.decode(output[0], skip_special_tokens=True).strip())\n"
        )


class PromptCompletion:
    """A causal LM reads a prompt (the template filled with the inputs) and is taught to continue it with the target
    and EOS; it generates by continuing the prompt. The token-level pieces are `prompting`'s."""

    auto_class = "AutoModelForCausalLM"
    peft_task_type = "CAUSAL_LM"

    def __init__(self, task: TextGeneration):
        self.task = task
        self.options = task.options
        self.max_length = None  # set by encode(): the packing row length

    def setup(self, config, tokenizer) -> None:
        """Raises UserError: the model is not a causal LM (an encoder would see the answer it is taught to write),
        the tokenizer has no EOS token, or it has no chat template when task.chat_template is set."""
        if config is not None and not is_decoder_only(config):
            raise UserError(
                f"model.name: {tokenizer.name_or_path} is a {config.model_type} model, not a causal (GPT-style) "
                "language model; task.generative: true needs one (an encoder attends both ways and would see the "
                "answer it writes). Use a decoder-only checkpoint, or task.generative: false"
            )
        prompting.check_tokenizer(tokenizer, tokenizer.name_or_path, self.options.chat_template)

    def settings(self, tokenizer, max_length: int) -> tuple:
        limits = (self.task.input_limits(), self.task.target_limit(), self.task.generation_settings())
        return (self.task.template, self.options.chat_template, max_length, repr(limits))

    def shortened(self, tokenizer, inputs: dict[str, str]) -> dict[str, str]:
        """The inputs cut to their token limits (e.g. task.max_source_length) before they go into the prompt."""
        inputs = dict(inputs)
        for name, limit in self.task.input_limits().items():
            ids = tokenizer(inputs[name], add_special_tokens=False)["input_ids"]
            if len(ids) > limit:
                inputs[name] = tokenizer.decode(ids[:limit])
        return inputs

    def encode(self, tokenizer, inputs: list[dict], targets: list[str] | None, max_length: int) -> tuple[dict, list]:
        """Per example: prompt + completion + EOS ids, labels only on the completion, the prompt length; which
        targets were cut."""
        self.max_length = max_length
        chat = self.options.chat_template
        reserve = self.task.generation_settings()["max_new_tokens"]
        features: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": [], "prompt_length": []}
        truncated = []
        for k, row in enumerate(inputs):
            prompt, lead = prompting.render_prompt(self.task.template, self.shortened(tokenizer, row), tokenizer, chat)
            completion = lead + targets[k] if targets is not None else None
            example = prompting.encode_example(
                tokenizer,
                prompt,
                completion,
                max_length,
                chat,
                reserve=reserve,
                completion_limit=self.task.target_limit(),
            )
            truncated.append(example.pop("completion_truncated", False))
            for key, value in example.items():
                features[key].append(value)
        return features, truncated

    def loss(self, model, batch: dict) -> torch.Tensor:
        """Mean cross-entropy per completion token; prompt tokens and padding do not count."""
        packing = self.max_length if self.options.packing else None
        return prompting.completion_loss(model, batch, packing, self.task.tokenizer.pad_token_id)

    def target_losses(self, model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Per example: summed NLL of the completion tokens (the target and EOS) and their number."""
        mask = batch["attention_mask"]
        logits = model(
            input_ids=batch["input_ids"],
            attention_mask=mask,
            position_ids=prompting.position_ids(mask),
            use_cache=False,
        ).logits
        return prompting.token_losses(logits, prompting.completion_labels(batch))

    def generate(self, model, batch: dict, settings: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The new tokens after each example's prompt (its completion, if any, is dropped), -1 padded; confidence."""
        mask = batch["attention_mask"].bool()
        prompts = [batch["input_ids"][i][mask[i]][: int(batch["prompt_length"][i])].tolist() for i in range(len(mask))]
        options = {key: value for key, value in settings.items() if key not in ("max_new_tokens", "num_beams")}
        return prompting.generate(
            model, prompts, self.task.tokenizer, settings["max_new_tokens"], settings["num_beams"], **options
        )

    def decode(self, tokenizer, ids: torch.Tensor) -> list[str]:
        return prompting.decode(tokenizer, ids)

    def usage_code(self, model: PushedModel, inputs: dict[str, str], settings: dict, max_length: int) -> str:
        """The model card's snippet: the recipe's prompt around the example inputs,
        continued with `generate`'s settings."""
        row = example_row(prompting.prompt_columns(self.task.template), inputs)
        return causal_lm_usage(model, self.task.template, self.options.chat_template, row, settings)
