"""Summarization and translation: a source text in, a target text out.

Both tasks share one implementation and differ only in where the texts come from (summarization: a
document column, possibly a list of sentences; translation: language-named columns or a nested
`translation: {de: ..., en: ...}` column) and in their metrics (ROUGE; BLEU and chrF). Every split
also gets the teacher-forced cross-entropy of its references (mean per target token, natural log)
and its perplexity.

What depends on the model family (how source and target become model inputs and labels, the loss,
how text is generated) sits behind a family object: `EncoderDecoder` for T5, BART, Marian and
warm-started BERT2BERT models; `PromptCompletion` for causal (GPT-style) models with `task.generative`
(the source fills a prompt template, the target is the completion, the loss counts completion tokens
only). Everything else (data checks, the accumulator, metrics, predictions.jsonl) is the same for both.

A target may be one text or a list of references: the loss is taught on the first, ROUGE takes the
best reference per example, BLEU and chrF use the references as sacrebleu reference streams.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from types import SimpleNamespace

import datasets
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

from .. import prompting
from ..data import describe, require_columns, row_location, tokenization_fingerprint
from ..errors import DataWarning, UserError
from ..metrics import generation as generation_metrics
from ..recipe import DataSpec, Seq2SeqTask, SummarizationTask, TranslationTask
from .card import PushedModel, causal_lm_usage, example_row, keywords, literal
from .outputs import CollectedOutputs


def unwrapped(model):
    """The model under a DistributedDataParallel wrapper (generate and helper methods live there)."""
    return getattr(model, "module", model)


class EncoderDecoder:
    """An encoder reads the source; the decoder is taught the target (teacher forcing) and generates it."""

    auto_class = AutoModelForSeq2SeqLM
    peft_task_type = "SEQ_2_SEQ_LM"
    prompt_columns: tuple[str, ...] = ()  # data columns besides the source that the model input reads

    def __init__(self, options: Seq2SeqTask):
        self.options = options

    def setup(self, tokenizer) -> None:
        pass

    def settings(self, tokenizer, max_length: int) -> tuple:
        """What else the tokenized features depend on (for the dataset cache fingerprint)."""
        return (self.options.prefix, self.source_limit(tokenizer, max_length), self.options.max_target_length)

    def source_limit(self, tokenizer, max_length: int) -> int:
        limit = self.options.max_source_length or max_length
        model_max = getattr(tokenizer, "model_max_length", None)
        return min(limit, model_max) if isinstance(model_max, int) and 0 < model_max < 1_000_000 else limit

    def encode(
        self, tokenizer, sources: list[str], targets: list[str] | None, max_length: int, columns: list[dict]
    ) -> tuple[dict, list[bool]]:
        """Model inputs (and `labels` when targets are given); which targets were cut at max_target_length tokens."""
        target_limit = self.options.max_target_length
        encoded = tokenizer(
            [self.options.prefix + source for source in sources],
            truncation=True,
            max_length=self.source_limit(tokenizer, max_length),
        )
        features = {key: encoded[key] for key in tokenizer.model_input_names if key in encoded}
        if targets is None:
            return features, [False] * len(sources)
        # text_target: tokenizers with separate target vocabularies (Marian) switch to them.
        labels = [self.without_cls(tokenizer, ids) for ids in tokenizer(text_target=targets)["input_ids"]]
        truncated = [len(ids) > target_limit for ids in labels]
        if any(truncated):
            cut = [target for target, long in zip(targets, truncated) if long]
            shortened = iter(
                self.without_cls(tokenizer, ids)
                for ids in tokenizer(
                    text_target=cut, truncation=True, max_length=target_limit + self.cls_count(tokenizer)
                )["input_ids"]
            )
            labels = [next(shortened) if long else ids for ids, long in zip(labels, truncated)]
        features["labels"] = labels
        return features, truncated

    @staticmethod
    def cls_count(tokenizer) -> int:
        """1 when targets are tokenized with a leading [CLS] that is not a BOS token (BERT tokenizers), else 0."""
        return int(tokenizer.cls_token_id is not None and tokenizer.cls_token_id != tokenizer.bos_token_id)

    def without_cls(self, tokenizer, ids: list[int]) -> list[int]:
        """Target ids without a leading [CLS]: a BERT2BERT decoder starts from [CLS] (decoder_start_token_id), so the
        first token it must predict is the first word. BOS tokens (BART's <s>) stay: those models are taught to emit them."""
        return ids[1:] if self.cls_count(tokenizer) and ids and ids[0] == tokenizer.cls_token_id else ids

    def logits(self, model, batch: dict) -> torch.Tensor:
        """Teacher-forced next-token logits aligned with `batch["labels"]` (the decoder input is the labels shifted right)."""
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
        return token_losses(self.logits(model, batch), batch["labels"])

    def generate(self, model, batch: dict, settings: dict) -> torch.Tensor:
        """Generated token ids, padded, one row per example."""
        return unwrapped(model).generate(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **settings
        )

    def decode(self, tokenizer, ids: torch.Tensor) -> list[str]:
        return [text.strip() for text in tokenizer.batch_decode(ids, skip_special_tokens=True)]

    def usage_code(self, model: PushedModel, source_name: str, text: str, settings: dict, max_length: int) -> str:
        """The model card's snippet: generate from the tokenized source (with the recipe's prefix)."""
        auto = self.auto_class.__name__
        source = f"{literal(self.options.prefix)} + text" if self.options.prefix else "text"
        return (
            model.imports(auto)
            + "\n"
            + model.load(auto)
            + f"text = {literal(text)}\n"
            + f'inputs = tokenizer([{source}], return_tensors="pt", truncation=True, max_length={self.options.max_source_length or max_length})\n'
            + f"output = model.generate(**inputs, {keywords(settings)})\n"
            + "print(tokenizer.decode(output[0], skip_special_tokens=True).strip())\n"
        )


class PromptCompletion:
    """A causal LM reads a prompt (the template filled with the source) and is taught to continue it with the target + EOS.

    The prompt -> completion machinery is `prompting`'s, the one generative question answering uses: loss on the
    completion tokens only, optional packing, left-padded batched generation that returns the new tokens only.
    """

    auto_class = AutoModelForCausalLM
    peft_task_type = "CAUSAL_LM"

    def __init__(self, options: Seq2SeqTask, source_name: str, default_template: str):
        self.options = options
        self.source_name = source_name  # the template field the source text fills
        self.template = options.prompt_template or default_template
        self.prompt_columns = tuple(name for name in prompting.prompt_columns(self.template) if name != source_name)
        self.tokenizer = None  # set by setup(): generation needs its EOS and pad tokens
        self.max_length = None  # set by encode(): the packing row length

    def setup(self, tokenizer) -> None:
        """Raises UserError: the tokenizer has no EOS token, or no chat template when task.chat_template is set."""
        prompting.check_tokenizer(tokenizer, tokenizer.name_or_path, self.options.chat_template)
        self.tokenizer = tokenizer

    def settings(self, tokenizer, max_length: int) -> tuple:
        o = self.options
        return (self.template, o.chat_template, max_length, o.max_source_length, o.max_target_length, o.max_new_tokens)

    def shortened_source(self, tokenizer, text: str) -> str:
        """The source cut to task.max_source_length tokens (if set), before it goes into the prompt."""
        limit = self.options.max_source_length
        if limit is None:
            return text
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        return tokenizer.decode(ids[:limit]) if len(ids) > limit else text

    def encode(
        self, tokenizer, sources: list[str], targets: list[str] | None, max_length: int, columns: list[dict]
    ) -> tuple[dict, list[bool]]:
        """Per example: prompt + completion + EOS ids, labels only on the completion, the prompt length; which targets were cut."""
        self.max_length = max_length
        o = self.options
        features: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": [], "prompt_length": []}
        truncated = []
        for k, source in enumerate(sources):
            row = {**columns[k], self.source_name: self.shortened_source(tokenizer, source)}
            prompt, lead = prompting.render_prompt(self.template, row, tokenizer, o.chat_template)
            completion = lead + targets[k] if targets is not None else None
            example = prompting.encode_example(
                tokenizer,
                prompt,
                completion,
                max_length,
                o.chat_template,
                reserve=o.max_new_tokens or o.max_target_length,
                completion_limit=o.max_target_length,
            )
            truncated.append(example.pop("completion_truncated"))
            for key, value in example.items():
                features[key].append(value)
        return features, truncated

    def loss(self, model, batch: dict) -> torch.Tensor:
        """Mean cross-entropy per completion token; prompt tokens and padding do not count."""
        packing = self.max_length if self.options.packing else None
        return prompting.completion_loss(model, batch, packing, self.tokenizer.pad_token_id)

    def target_losses(self, model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Per example: summed NLL of the completion tokens (the target and EOS) and their number."""
        logits = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            position_ids=prompting.position_ids(batch["attention_mask"]),
            use_cache=False,
        ).logits
        return prompting.token_losses(logits, prompting.completion_labels(batch))

    def generate(self, model, batch: dict, settings: dict) -> torch.Tensor:
        """The new tokens after each example's prompt (its completion, if any, is dropped), -1 padded."""
        mask = batch["attention_mask"].bool()
        prompts = [batch["input_ids"][i][mask[i]][: int(batch["prompt_length"][i])].tolist() for i in range(len(mask))]
        options = {"length_penalty": settings["length_penalty"]} if "length_penalty" in settings else {}
        return prompting.generate(
            model, prompts, self.tokenizer, settings["max_new_tokens"], settings["num_beams"], **options
        )

    def decode(self, tokenizer, ids: torch.Tensor) -> list[str]:
        return prompting.decode(tokenizer, ids)

    def usage_code(self, model: PushedModel, source_name: str, text: str, settings: dict, max_length: int) -> str:
        """The model card's snippet: the recipe's prompt around the source, continued with the settings `generate` above uses."""
        row = example_row(prompting.prompt_columns(self.template), {source_name: text})
        generation = {
            key: settings[key] for key in ("max_new_tokens", "num_beams", "length_penalty") if key in settings
        }
        return causal_lm_usage(model, self.template, self.options.chat_template, row, generation)


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example: summed negative log-likelihood of the target tokens, and their number (padding, -100, excluded)."""
    losses = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=-100, reduction="none")
    return losses.sum(-1), (labels != -100).sum(-1)


@dataclass(frozen=True)
class Field:
    """Where a text lives in a row: a column, or a key inside a nested column (`translation[de]`)."""

    column: str
    key: str | None = None

    def read(self, values: list) -> list:
        return [value.get(self.key) if isinstance(value, dict) else None for value in values] if self.key else values

    def __str__(self) -> str:
        return f"{self.column}[{self.key}]" if self.key else self.column


def source_text(value) -> str | None:
    """A source as one string: a list of sentences (SciTLDR) is joined with spaces."""
    if isinstance(value, list) and all(isinstance(part, str) for part in value):
        value = " ".join(part.strip() for part in value)
    return value if isinstance(value, str) and value.strip() else None


def reference_texts(value) -> list[str] | None:
    """A target as a list of references: one text, or a list of texts."""
    golds = value if isinstance(value, list) else [value]
    return golds if golds and all(isinstance(gold, str) and gold.strip() for gold in golds) else None


class Seq2Seq:
    """What summarization and translation share; subclasses say where the texts are and how they are scored."""

    # Per-example flag kept for the truncation count; not a model input.
    metadata_columns = ("target_truncated",)
    predict_options = '--text "..."'  # how the card shows `llmtune predict`

    def __init__(self, options: Seq2SeqTask):
        self.options = options
        self.label_names = None
        self.tokenizer = None  # set by setup / preprocess / predict: the accumulator decodes generated ids with it
        self.family = (
            PromptCompletion(options, self.source_name(), self.default_template())
            if options.generative
            else EncoderDecoder(options)
        )
        self.auto_class = self.family.auto_class
        self.peft_task_type = self.family.peft_task_type
        self.pipeline_tag = "text-generation" if options.generative else self.hub_task[0]

    # ------------------------------------------------------------------ where the texts are

    def fields(self, column_names: list[str], where: str) -> tuple[Field, Field | None]:
        """The source field and the target field (None when the split has no references).

        Raises:
            UserError: the source column is missing.
        """
        raise NotImplementedError

    def texts(self, dataset: datasets.Dataset) -> tuple[list[str], list[list[str]] | None]:
        """Every row's source text and references (None without a target column), as prepare checked them."""
        source, target = self.fields(dataset.column_names, "")
        sources = [source_text(value) or "" for value in source.read(dataset[source.column])]
        references = (
            [reference_texts(value) or [""] for value in target.read(dataset[target.column])] if target else None
        )
        return sources, references

    def row_from_text(self, text: str) -> dict:
        """A prediction input row holding only a source text."""
        raise NotImplementedError

    def source_name(self) -> str:
        """The prompt template's field for the source text (generative): the source column, or the source language."""
        raise NotImplementedError

    def default_template(self) -> str:
        """The prompt template when the recipe gives none (generative)."""
        raise NotImplementedError

    def prompt_values(self, rows, count: int) -> list[dict]:
        """Per example: the values of the template's columns other than the source (none for encoder-decoder models).

        `rows` is a list of row dicts, or a batch (a mapping of columns) from `datasets.map`.
        """
        names = self.family.prompt_columns
        if isinstance(rows, list):
            return [{name: row[name] for name in names} for row in rows]
        return [{name: rows[name][k] for name in names} for k in range(count)]

    # ------------------------------------------------------------------ checks

    def prepare(self, splits: dict[str, datasets.Dataset], spec: DataSpec) -> None:
        """Check that every split has its source texts and that train has non-empty targets; with `data.drop_empty`,
        rows with an empty source or target are removed from `splits` instead.

        Raises:
            UserError: a missing column, an unknown language code, an empty source or target.
        """
        sources = spec.sources()
        for split, dataset in list(splits.items()):
            where = describe(split, sources[split])
            source, target = self.fields(dataset.column_names, where)
            if self.options.generative:  # the source fills its own field, whatever column it comes from
                prompting.check_template_columns(
                    self.family.template, "task.prompt_template", [*dataset.column_names, self.source_name()], where
                )
            if target is None and split == "train":
                self.require_target(dataset.column_names, where)
            empty = set()
            for field, parse, what in ((source, source_text, "source"), (target, reference_texts, "target")):
                if field is None:
                    continue
                for row, value in enumerate(field.read(dataset[field.column])):
                    if parse(value) is not None:
                        continue
                    if not spec.drop_empty:
                        raise UserError(
                            f"{where} {row_location(sources[split], row)}: empty {what} in column '{field}' ({value!r:.60}); "
                            "expected a non-empty text"
                            + (" or a list of non-empty texts" if what == "target" else "")
                            + " (data.drop_empty: true leaves such rows out)"
                        )
                    empty.add(row)
            if empty:
                if len(empty) == len(dataset):
                    raise UserError(
                        f"{where}: every row has an empty source or target; nothing is left after data.drop_empty"
                    )
                rows = sorted(empty)
                at = ", ".join(row_location(sources[split], row) for row in rows[:5]) + (
                    ", ..." if len(rows) > 5 else ""
                )
                warnings.warn(
                    f"{where}: left out {len(rows):,} of {len(dataset):,} rows with an empty source or target ({at}; data.drop_empty)",
                    DataWarning,
                    stacklevel=2,
                )
                splits[split] = dataset.select([row for row in range(len(dataset)) if row not in empty])

    def require_target(self, column_names: list[str], where: str) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ model inputs

    def model_kwargs(self) -> dict:
        return {}

    def setup(self, config, tokenizer) -> None:
        """Keep the tokenizer (the accumulator decodes generated ids with it); a causal LM's is checked.

        Raises:
            UserError: generative, and the tokenizer has no EOS token (or no chat template when task.chat_template is set).
        """
        self.family.setup(tokenizer)
        self.tokenizer = tokenizer

    def preprocess(self, dataset: datasets.Dataset, tokenizer, max_length: int) -> datasets.Dataset:
        """Tokenized model inputs and target `labels` (encoder-decoder: the source and the target; causal LM: prompt and
        completion in one sequence, plus `prompt_length`), `index`, `length` (input tokens)."""
        o = self.options
        self.tokenizer = tokenizer
        source, target = self.fields(dataset.column_names, "")

        def encode(batch, indices):
            texts = [source_text(value) or "" for value in source.read(batch[source.column])]
            targets = (
                [(reference_texts(value) or [""])[0] for value in target.read(batch[target.column])] if target else None
            )
            features, truncated = self.family.encode(
                tokenizer, texts, targets, max_length, self.prompt_values(batch, len(texts))
            )
            features["index"] = indices
            features["length"] = [len(ids) for ids in features["input_ids"]]
            features["target_truncated"] = truncated
            return features

        settings = (str(source), str(target), type(self.family).__name__, self.family.settings(tokenizer, max_length))
        fingerprint = tokenization_fingerprint(dataset, tokenizer, f"{o.type}/1", settings)
        features = dataset.map(
            encode,
            batched=True,
            with_indices=True,
            remove_columns=dataset.column_names,
            desc="Tokenizing",
            new_fingerprint=fingerprint,
        )
        truncated = sum(features["target_truncated"])
        if truncated:
            warnings.warn(
                f"{truncated:,} of {len(features):,} targets are longer than task.max_target_length ({o.max_target_length} tokens) "
                "and were truncated for the loss (metrics still compare with the full references)",
                DataWarning,
                stacklevel=2,
            )
        return features

    # ------------------------------------------------------------------ training and evaluation

    def generation_settings(self) -> dict:
        o = self.options
        settings = {
            "num_beams": o.num_beams,
            "max_new_tokens": o.max_new_tokens or o.max_target_length,
            "do_sample": False,
            "no_repeat_ngram_size": o.no_repeat_ngram_size,
        }
        if o.num_beams > 1:  # length_penalty only exists for beam search; transformers warns otherwise
            settings["length_penalty"] = o.length_penalty
        return settings

    def loss(self, model, batch: dict) -> torch.Tensor:
        """Mean cross-entropy per target token of the batch (padding, and a causal LM's prompt, ignored)."""
        return self.family.loss(model, batch)

    def eval_step(self, model, batch: dict) -> dict[str, torch.Tensor]:
        """Per example: summed target-token loss and token count (teacher forcing), and the generated ids.

        The batch's logits are reduced to two numbers per example here; only ids leave the step.
        """
        outputs = {"index": batch["index"]}
        if "labels" in batch:
            outputs["nll"], outputs["target_tokens"] = self.family.target_losses(model, batch)
        outputs["generated"] = self.family.generate(model, batch, self.generation_settings())
        return outputs

    def decode(self, ids: torch.Tensor) -> list[str]:
        return self.family.decode(self.tokenizer, ids)

    def new_accumulator(self, metric_names: tuple[str, ...]) -> Seq2SeqAccumulator:
        return Seq2SeqAccumulator(self, metric_names)

    def scores(
        self, generated: list[str], references: list[list[str]], metric_names: tuple[str, ...]
    ) -> tuple[dict, list[dict]]:
        """Corpus metrics, and per-example scores for the prediction rows."""
        raise NotImplementedError

    def predict(self, model, tokenizer, rows: list[dict], max_length: int, batch_size: int = 32) -> list[dict]:
        """Generated text for each row (a dict with the source column), batched by source length.

        Raises:
            UserError: a row without a source text, or without a column the prompt template reads.
        """
        from ..batching import PadCollator, SortedBatches

        self.tokenizer = tokenizer
        texts = []
        for number, row in enumerate(rows, 1):
            source, _ = self.fields(list(row), f"input row {number}")
            text = source_text(source.read([row[source.column]])[0])
            if text is None:
                raise UserError(f"input row {number}: empty source in column '{source}'; expected a non-empty text")
            if self.family.prompt_columns:
                prompting.check_template_columns(
                    self.family.template, "task.prompt_template", [*row, self.source_name()], f"input row {number}"
                )
            texts.append(text)
        features, _ = self.family.encode(tokenizer, texts, None, max_length, self.prompt_values(rows, len(rows)))
        lengths = [len(ids) for ids in features["input_ids"]]
        collate = PadCollator(tokenizer.pad_token_id, tokenizer.padding_side)
        device = next(model.parameters()).device
        generated: dict[int, str] = {}
        model.eval()
        with torch.inference_mode():
            for batch_rows in SortedBatches(lengths, batch_size):
                batch = collate([{key: features[key][i] for key in features} for i in batch_rows])
                ids = self.family.generate(
                    model, {key: value.to(device) for key, value in batch.items()}, self.generation_settings()
                )
                generated.update(zip(batch_rows, self.decode(ids)))
        return [{**row, "generated": generated[i]} for i, row in enumerate(rows)]

    # ------------------------------------------------------------------ model card

    def subject(self) -> str:
        """What the model does, for the card: "summarization", "translation from German to English"."""
        raise NotImplementedError

    def example_source(self) -> str:
        """The card's example source text."""
        raise NotImplementedError

    def card_description(self) -> str:
        return self.subject() + (" (a causal language model continues a prompt)" if self.options.generative else "")

    def usage_code(self, model: PushedModel, max_length: int) -> str:
        return self.family.usage_code(
            model, self.source_name(), self.example_source(), self.generation_settings(), max_length
        )


class Seq2SeqAccumulator(CollectedOutputs):
    """Decodes generated ids batch by batch (only text is kept) and scores everything at the end."""

    def __init__(self, task: Seq2Seq, metric_names: tuple[str, ...]):
        super().__init__(task, metric_names)
        self.generated: list[str] = []

    def add(self, outputs: dict[str, torch.Tensor]) -> None:
        outputs = dict(outputs)
        self.generated += self.task.decode(outputs.pop("generated"))
        super().add(outputs)

    def result(self, dataset: datasets.Dataset, features: datasets.Dataset | None = None) -> tuple[dict, list[dict]]:
        """Metrics over the split, and one prediction row per example in dataset order."""
        columns = self.columns()
        order = columns["index"].argsort().tolist()
        indices = columns["index"][order].tolist()
        generated = [self.generated[k] for k in order]
        sources, references = self.task.texts(dataset)
        metrics: dict = {"num_examples": len(indices)}
        rows = [{"index": i, "source": sources[i]} for i in indices]
        for row, text in zip(rows, generated):
            if references is not None:
                golds = references[row["index"]]
                row["reference"] = golds[0] if len(golds) == 1 else golds
            row["generated"] = text
        if references is not None:
            split_references = [references[i] for i in indices]
            corpus, per_example = self.task.scores(generated, split_references, self.metric_names)
            metrics.update(corpus)
            for row, scores in zip(rows, per_example):
                row.update(scores)
            if {"cross_entropy", "perplexity"} & set(self.metric_names):
                cross_entropy = float(columns["nll"].double().sum() / columns["target_tokens"].sum())
                if "cross_entropy" in self.metric_names:
                    metrics["cross_entropy"] = cross_entropy
                if "perplexity" in self.metric_names:
                    metrics["perplexity"] = math.exp(cross_entropy) if cross_entropy < 700 else float("inf")
            if "signature" in metrics:  # sacrebleu's signature last: a line, not a number
                metrics["signature"] = metrics.pop("signature")
        return metrics, rows


class Summarization(Seq2Seq):
    hub_task = ("summarization", "Summarization")

    def __init__(self, options: SummarizationTask):
        super().__init__(options)

    def fields(self, column_names, where):
        o = self.options
        require_columns_named(column_names, {"task.source_column": o.source_column}, where)
        return Field(o.source_column), Field(o.target_column) if o.target_column in column_names else None

    def require_target(self, column_names, where):
        require_columns_named(column_names, {"task.target_column": self.options.target_column}, where)

    def row_from_text(self, text: str) -> dict:
        return {self.options.source_column: text}

    def source_name(self) -> str:
        return self.options.source_column

    def default_template(self) -> str:
        return f"Summarize:\n{{{self.options.source_column}}}\nSummary: {{{prompting.COMPLETION}}}"

    def subject(self) -> str:
        return "summarization"

    def example_source(self) -> str:
        return (
            "We propose a simple method that makes training neural networks faster. Experiments on three benchmarks "
            "show that it matches the accuracy of standard training in half the time."
        )

    def scores(self, generated, references, metric_names):
        wanted = [name for name in generation_metrics.ROUGE_TYPES if name in metric_names]
        if not wanted:
            return {}, [{} for _ in generated]
        per_example = generation_metrics.rouge_per_example(generated, references)
        corpus = {name: 100 * sum(s[name] for s in per_example) / len(per_example) for name in wanted}
        return corpus, [{"rougeL": round(100 * s["rougeL"], 4)} for s in per_example]


class Translation(Seq2Seq):
    hub_task = ("translation", "Translation")

    def __init__(self, options: TranslationTask):
        super().__init__(options)

    def _field(
        self, column_names, column: str | None, lang: str, lang_key: str, column_key: str, where: str, required: bool
    ) -> Field | None:
        o = self.options
        if column is not None:
            if required or column in column_names:
                require_columns_named(column_names, {column_key: column}, where)
                return Field(column)
            return None
        if lang in column_names:
            return Field(lang)
        if o.translation_column in column_names:
            return Field(o.translation_column, lang)
        if required:
            raise UserError(
                f"{where}: no column '{lang}' ({lang_key}) and no nested column '{o.translation_column}' (task.translation_column); "
                f"available columns: {', '.join(column_names)}. Set {column_key} or map a column with data.columns"
            )
        return None

    def fields(self, column_names, where):
        o = self.options
        source = self._field(
            column_names, o.source_column, o.source_lang, "task.source_lang", "task.source_column", where, required=True
        )
        target = self._field(
            column_names,
            o.target_column,
            o.target_lang,
            "task.target_lang",
            "task.target_column",
            where,
            required=False,
        )
        return source, target

    def require_target(self, column_names, where):
        o = self.options
        self._field(
            column_names, o.target_column, o.target_lang, "task.target_lang", "task.target_column", where, required=True
        )

    def prepare(self, splits, spec):
        """Also checks that a nested translation column holds the recipe's languages.

        Raises:
            UserError: as Seq2Seq.prepare, or a language code the nested column does not hold.
        """
        sources = spec.sources()
        for split, dataset in splits.items():
            where = describe(split, sources[split])
            for field, key in zip(self.fields(dataset.column_names, where), ("task.source_lang", "task.target_lang")):
                if field is None or field.key is None:
                    continue
                feature = dataset.features[field.column]
                languages = list(
                    getattr(feature, "languages", None) or (feature.keys() if isinstance(feature, dict) else [])
                )
                if languages and field.key not in languages:
                    raise UserError(
                        f"{where}: unknown language code '{field.key}' ({key}): column '{field.column}' holds {', '.join(languages)}"
                    )
        super().prepare(splits, spec)

    def row_from_text(self, text: str) -> dict:
        return {self.source_name(): text}

    def source_name(self) -> str:
        return self.options.source_column or self.options.source_lang

    def default_template(self) -> str:
        source, target = (language_name(code) for code in (self.options.source_lang, self.options.target_lang))
        return f"Translate {source} to {target}:\n{{{self.source_name()}}}\n{target}: {{{prompting.COMPLETION}}}"

    def subject(self) -> str:
        return (
            f"translation from {language_name(self.options.source_lang)} to {language_name(self.options.target_lang)}"
        )

    def example_source(self) -> str:
        return f"<{language_name(self.options.source_lang)} text to translate>"

    def scores(self, generated, references, metric_names):
        corpus = {}
        if {"bleu", "chrf"} & set(metric_names):
            scored = generation_metrics.bleu_chrf(generated, references)
            corpus = {name: scored[name] for name in ("bleu", "chrf") if name in metric_names} | {
                "signature": scored["signature"]
            }
        per_example = [
            {"bleu": round(generation_metrics.sentence_bleu(text, golds), 4)}
            for text, golds in zip(generated, references)
        ]
        return corpus, per_example


def require_columns_named(column_names: list[str], columns: dict[str, str], where: str) -> None:
    """`data.require_columns` for a list of column names (a split's, or a prediction input row's keys)."""
    require_columns(SimpleNamespace(column_names=column_names), columns, where)


# Names for the default translation prompt; other codes appear as they are.
LANGUAGE_NAMES = {
    "ar": "Arabic",
    "cs": "Czech",
    "de": "German",
    "en": "English",
    "es": "Spanish",
    "fi": "Finnish",
    "fr": "French",
    "hi": "Hindi",
    "it": "Italian",
    "ja": "Japanese",
    "ko": "Korean",
    "nl": "Dutch",
    "pl": "Polish",
    "pt": "Portuguese",
    "ro": "Romanian",
    "ru": "Russian",
    "sv": "Swedish",
    "tr": "Turkish",
    "uk": "Ukrainian",
    "zh": "Chinese",
}


def language_name(code: str) -> str:
    return LANGUAGE_NAMES.get(code.lower().replace("_", "-").split("-")[0], code)
