"""Summarization and translation: a source text in, a target text out (the shared work is `generation.py`'s).

The two differ only in where the texts come from (summarization: a document column, possibly a list of
sentences; translation: language-named columns or a nested `translation: {de: ..., en: ...}` column) and in
their metrics: ROUGE (best reference per example); BLEU and chrF (references as sacrebleu reference streams).
Both run on an encoder-decoder model or, with `task.generative`, on a causal LM.
"""

from __future__ import annotations

import re
from abc import abstractmethod
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field as SchemaField
from pydantic import field_validator, model_validator

from ..common.errors import UserError
from ..data.augment import AugmentFields
from ..data.reading import describe, require_columns
from ..metrics import generation as generation_metrics
from . import prompting
from .base import RowStatistics
from .generation import Field, PromptCompletionOptions, TextGeneration


class Seq2SeqOptions(PromptCompletionOptions):
    """Options shared by the text-to-text tasks: an encoder-decoder model, or a causal LM with `generative`."""

    prefix: str = SchemaField(
        "", description="Text put before every source, e.g. `summarize: ` for T5 checkpoints; empty for most others."
    )
    max_source_length: int | None = SchemaField(
        None, ge=1, description="Longest tokenized source; longer sources are truncated. Default: training.max_length."
    )
    max_target_length: int = SchemaField(
        128,
        ge=1,
        description="Longest tokenized target (reference); longer targets are truncated, with one warning per split "
        "that counts them.",
    )
    num_beams: int = SchemaField(
        4, ge=1, le=64, description="Evaluation and prediction: beam width of the generation (1: greedy)."
    )
    max_new_tokens: int | None = SchemaField(
        None,
        ge=1,
        le=4096,
        description="Evaluation and prediction: most tokens generated per example; default: max_target_length.",
    )
    length_penalty: float = SchemaField(
        1.0,
        ge=-10,
        le=10,
        description="Beam search: exponent on the length the scores are divided by; above 1 favours longer outputs.",
    )
    no_repeat_ngram_size: int = SchemaField(
        0, ge=0, le=20, description="Generation never repeats an n-gram of this size; 0: no constraint."
    )

    not_generative: ClassVar[dict[str, Any]] = {
        "prefix": ("", "write the instruction into task.prompt_template"),
        # A causal LM's generated n-grams would also be checked against the prompt: no summary could quote its source.
        "no_repeat_ngram_size": (0, "it would also forbid repeating n-grams of the prompt (the source)"),
    }

    encoder_decoder: ClassVar[bool] = True

    def check_recipe(self, recipe) -> None:
        if recipe.model.decoder is not None and self.generative:
            raise ValueError(
                "model.decoder: warm-starting an encoder-decoder does not apply to task.generative: true (a causal LM)"
            )


class Seq2Seq(TextGeneration):
    """What summarization and translation share."""

    @abstractmethod
    def source_name(self) -> str:
        """The source text's name: its template field (generative) and its key in prediction inputs."""

    def input_columns(self) -> dict[str, str]:
        return {"text": self.source_name()}

    def augment_fields(self, column_names: list[str]) -> AugmentFields:
        """The source; in a nested translation column, its source-language key."""
        field = self.input_fields(column_names, "data.train")["source"]
        return AugmentFields(texts=((field.column, field.key) if field.key else field.column,))

    def input_limits(self) -> dict[str, int]:
        limit = self.options.max_source_length
        return {self.source_name(): limit} if limit else {}

    def target_limit(self) -> int:
        return self.options.max_target_length

    def generation_settings(self) -> dict:
        o = self.options
        settings = {
            "num_beams": o.num_beams,
            "max_new_tokens": o.max_new_tokens or o.max_target_length,
            "no_repeat_ngram_size": o.no_repeat_ngram_size,
        }
        if o.num_beams > 1:  # length_penalty only exists for beam search; transformers warns otherwise
            settings["length_penalty"] = o.length_penalty
        return settings

    def example_inputs(self) -> dict[str, str]:
        return {self.source_name(): self.example_source()}

    @abstractmethod
    def example_source(self) -> str: ...


class SummarizationOptions(Seq2SeqOptions):
    """Abstractive summarization with an encoder-decoder model, or a causal LM (`generative`): document -> summary."""

    available_metrics: ClassVar[tuple[str, ...]] = (
        "rouge1",
        "rouge2",
        "rougeL",
        "rougeLsum",
        "cross_entropy",
        "perplexity",
        "distinct_outputs",
    )

    type: Literal["summarization"] = SchemaField(description="The task.")
    source_column: str = SchemaField(
        "document", description="Column holding the document: a text, or a list of sentences (joined with spaces)."
    )
    target_column: str = SchemaField(
        "summary",
        description="Column holding the reference summary: a text, or a list of references (trained on the first, "
        "ROUGE takes the best).",
    )


class Summarization(Seq2Seq):
    name = "summarization"
    options_class = SummarizationOptions
    predict_fields = {"text": "Text to summarize (repeatable: one summary each)."}
    example_metric = "rougeL"
    example_noun = "summaries"
    metric_labels = {"rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L", "rougeLsum": "ROUGE-Lsum"}
    hub_task = ("summarization", "Summarization")

    def input_fields(self, column_names, where):
        require_columns(column_names, {"task.source_column": self.options.source_column}, where)
        return {"source": Field(self.options.source_column)}

    def target_field(self, column_names, where, required):
        column = self.options.target_column
        if required:
            require_columns(column_names, {"task.target_column": column}, where)
        return Field(column) if column in column_names else None

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

    def score(self, generated, references, metric_names):
        """ROUGE F-measures in percent (best reference per example); per example: ROUGE-L."""
        per_example = generation_metrics.rouge_per_example(generated, references)
        wanted = [name for name in generation_metrics.ROUGE_TYPES if name in metric_names]
        corpus = {name: 100 * sum(s[name] for s in per_example) / len(per_example) for name in wanted}
        return corpus, [{"rougeL": 100 * s["rougeL"]} for s in per_example]


class TranslationOptions(Seq2SeqOptions):
    """Translation with an encoder-decoder model, or a causal LM (`generative`): source text -> target text."""

    available_metrics: ClassVar[tuple[str, ...]] = ("bleu", "chrf", "cross_entropy", "perplexity", "distinct_outputs")

    type: Literal["translation"] = SchemaField(description="The task.")
    source_lang: str = SchemaField(
        examples=["de"], description="Language code of the source text, e.g. de (ISO 639-1, or a dataset's own codes)."
    )
    target_lang: str = SchemaField(examples=["en"], description="Language code of the target text, e.g. en.")
    source_column: str | None = SchemaField(
        None,
        description="Column holding the source text; default: the column named source_lang, else "
        "`translation_column[source_lang]`.",
    )
    target_column: str | None = SchemaField(
        None,
        description="Column holding the reference translation (a text, or a list of references); default: the column "
        "named target_lang, else `translation_column[target_lang]`.",
    )
    translation_column: str = SchemaField(
        "translation",
        description="Nested column `{de: ..., en: ...}` as in WMT datasets, used when there are no flat columns.",
    )

    @field_validator("source_lang", "target_lang")
    @classmethod
    def _language_code(cls, code: str) -> str:
        if not re.fullmatch(r"[A-Za-z]{2,3}([_-][A-Za-z0-9]{2,8})*", code):
            raise ValueError(f"'{code}' is not a language code; expected e.g. de, en, pt_BR, zh-Hans")
        return code

    @model_validator(mode="after")
    def _two_languages(self) -> TranslationOptions:
        if self.source_lang == self.target_lang:
            raise ValueError(
                f"source_lang and target_lang are both '{self.source_lang}'; expected two different languages"
            )
        return self


class Translation(Seq2Seq):
    name = "translation"
    options_class = TranslationOptions
    predict_fields = {"text": "Text to translate (repeatable: one translation each)."}
    example_metric = "bleu"
    example_noun = "translations"
    metric_labels = {"bleu": "BLEU", "chrf": "chrF", "signature": "sacreBLEU signature"}
    hub_task = ("translation", "Translation")

    def _field(
        self, column_names, column: str | None, lang: str, side: str, where: str, required: bool
    ) -> Field | None:
        o = self.options
        column_key, lang_key = f"task.{side}_column", f"task.{side}_lang"
        if column is not None:
            if required or column in column_names:
                require_columns(column_names, {column_key: column}, where)
                return Field(column)
            return None
        if lang in column_names:
            return Field(lang)
        if o.translation_column in column_names:
            return Field(o.translation_column, lang)
        if required:
            raise UserError(
                f"{where}: no column '{lang}' ({lang_key}) and no nested column '{o.translation_column}' "
                f"(task.translation_column); available columns: {', '.join(column_names)}. Set {column_key} or map a "
                "column with data.columns"
            )
        return None

    def input_fields(self, column_names, where):
        o = self.options
        return {"source": self._field(column_names, o.source_column, o.source_lang, "source", where, required=True)}

    def target_field(self, column_names, where, required):
        o = self.options
        return self._field(column_names, o.target_column, o.target_lang, "target", where, required)

    def prepare(self, splits, spec):
        """Also checks that a nested translation column holds the recipe's languages.

        Raises:
            UserError: as TextGeneration.prepare, or a language code the nested column does not hold.
        """
        sources = spec.sources()
        for split, dataset in splits.items():
            where = describe(split, sources[split])
            fields = (
                self.input_fields(dataset.column_names, where)["source"],
                self.target_field(dataset.column_names, where, required=False),
            )
            for field, key in zip(fields, ("task.source_lang", "task.target_lang")):
                if field is None or field.key is None:
                    continue
                feature = dataset.features[field.column]
                languages = list(
                    getattr(feature, "languages", None) or (feature.keys() if isinstance(feature, dict) else [])
                )
                if languages and field.key not in languages:
                    raise UserError(
                        f"{where}: unknown language code '{field.key}' ({key}): column '{field.column}' holds "
                        f"{', '.join(languages)}"
                    )
        super().prepare(splits, spec)

    def source_name(self) -> str:
        return self.options.source_column or self.options.source_lang

    def default_template(self) -> str:
        source, target = (language_name(code) for code in (self.options.source_lang, self.options.target_lang))
        return f"Translate {source} to {target}:\n{{{self.source_name()}}}\n{target}: {{{prompting.COMPLETION}}}"

    def subject(self) -> str:
        source, target = (language_name(code) for code in (self.options.source_lang, self.options.target_lang))
        return f"translation from {source} to {target}"

    def example_source(self) -> str:
        return f"<{language_name(self.options.source_lang)} text to translate>"

    def row_statistics(self, rows: list[dict]) -> RowStatistics:
        """Corpus BLEU and chrF from each row's n-gram counts (sacrebleu's statistics, with BLEU's exponential
        smoothing), not means of sentence scores."""
        metrics = generation_metrics
        values = np.array(
            [
                metrics.bleu_statistics(row["predicted"], row["reference"])
                + metrics.chrf_statistics(row["predicted"], row["reference"])
                for row in rows
            ]
        ).reshape(len(rows), -1)

        def combine(sums: np.ndarray) -> np.ndarray:
            bleu = metrics.bleu_from_statistics(sums[..., :10])
            return np.concatenate([bleu, metrics.chrf_from_statistics(sums[..., 10:])], axis=-1)

        return RowStatistics(("bleu", "chrf"), values, combine)

    def score(self, generated, references, metric_names):
        """Corpus BLEU and chrF (sacrebleu, with its signature); per example: sentence BLEU."""
        corpus = {}
        if {"bleu", "chrf"} & set(metric_names):
            scored = generation_metrics.bleu_chrf(generated, references)
            corpus = {name: scored[name] for name in ("bleu", "chrf") if name in metric_names}
            corpus["signature"] = scored["signature"]
        per_example = [
            {"bleu": generation_metrics.sentence_bleu(text, golds)} for text, golds in zip(generated, references)
        ]
        return corpus, per_example


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
