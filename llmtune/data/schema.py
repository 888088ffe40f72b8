"""The recipe's `data` section: where each split comes from, column renames, augmentation and the leakage
audit. Its fields' descriptions are their documentation (`llmtune init`, the README's recipe reference)."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Field, field_validator, model_validator

from ..common.section import Section

SPLITS = ("train", "validation", "test")


class DataSource(Section):
    """One split's source: a local file (`path`), line-aligned text files (`parallel`) or a hub dataset (`hub`)."""

    path: str | None = Field(
        None,
        description="Local csv, tsv, json, jsonl or parquet file, or another format the task reads "
        "(its `task` keys say which). Relative paths in a recipe file are relative to that file.",
    )
    parallel: dict[str, str] | None = Field(
        None,
        description="Line-aligned plain-text files, one column each: `{column: file}`, "
        "e.g. `{de: train.de, en: train.en}` for a parallel corpus; line N of every file is example N.",
    )
    hub: str | None = Field(None, description="Hub dataset id, for example `stanfordnlp/sst2`.")
    config: str | None = Field(None, description="Hub dataset configuration name.")
    split: str | None = Field(
        None, description="Hub split to read; default: the split's own name (train, validation, test)."
    )
    revision: str | None = Field(None, description="Hub dataset branch, tag or commit.")
    skip: int = Field(
        0,
        ge=0,
        description="Leave out the first N rows; with `max_samples`, any slice of one file (train on rows 0-799, "
        "evaluate on the rest: `max_samples: 800` and `skip: 800`).",
    )
    max_samples: int | None = Field(
        None, ge=1, description="Use only the first N rows (after `skip`; quick experiments)."
    )

    @model_validator(mode="after")
    def _one_source(self) -> DataSource:
        if [self.path, self.parallel, self.hub].count(None) != 2:
            raise ValueError(
                "give exactly one of `path` (a local file), `parallel` (line-aligned text files) "
                "or `hub` (a hub dataset id)"
            )
        if self.hub is None and (self.config or self.split or self.revision):
            raise ValueError("`config`, `split` and `revision` apply only to hub datasets, not to local files")
        if self.parallel is not None and not self.parallel:
            raise ValueError("`parallel` needs at least one `{column: file}` entry")
        return self

    def local_files(self) -> list[str]:
        """The local files this split is read from (none for a hub dataset)."""
        return [self.path] if self.path is not None else list((self.parallel or {}).values())


def _source_shorthand(value: Any) -> Any:
    return {"path": value} if isinstance(value, str) else value


class WordAugment(Section):
    """Simple word operations (EDA): swap, delete or insert words at random."""

    type: Literal["random_swap", "random_delete", "random_insert"] = Field(
        description="random_swap: swap two words; random_delete: drop words; random_insert: insert a copy of one "
        "of the row's words (a synonym of it with `lexicon`) at a random place."
    )
    share: float = Field(1.0, gt=0, le=1, description="Share of the training rows that get one augmented copy.")
    probability: float = Field(
        0.1, gt=0, le=1, description="Share of a row's words the operation touches (at least one word)."
    )
    lexicon: str | None = Field(
        None, description="random_insert: insert synonyms from this lexicon (see `synonym`) instead of copies."
    )


class SynonymAugment(Section):
    """Synonym replacement, offline: from a lexicon file or WordNet database, or by a masked language model."""

    type: Literal["synonym"] = Field(description="Replace words by synonyms.")
    share: float = Field(1.0, gt=0, le=1, description="Share of the training rows that get one augmented copy.")
    probability: float = Field(0.1, gt=0, le=1, description="Share of a row's words replaced (at least one word).")
    lexicon: str | None = Field(
        None,
        description="A local WordNet database directory (the `dict` folder with index.noun and data.noun, "
        "e.g. Debian's wordnet-base: /usr/share/wordnet), or a text file with one group of "
        "synonyms per line, separated by commas or tabs. Relative paths are relative to the recipe file.",
    )
    masked_lm: str | None = Field(
        None,
        description="Instead of a lexicon: a masked language model (hub id or local directory) that proposes a "
        "replacement for each masked word (its most likely whole word other than the original).",
    )

    @model_validator(mode="after")
    def _one_source(self) -> SynonymAugment:
        if (self.lexicon is None) == (self.masked_lm is None):
            raise ValueError("give exactly one of `lexicon` (a synonym file or WordNet folder) or `masked_lm`")
        return self


class BackTranslationAugment(Section):
    """Back-translation: a text translated into another language and back (a paraphrase)."""

    type: Literal["back_translation"] = Field(description="Translate each chosen text there and back.")
    share: float = Field(1.0, gt=0, le=1, description="Share of the training rows that get one augmented copy.")
    forward: str = Field(
        description="The model that translates out of the data's language: hub id or local directory of a "
        "sequence-to-sequence model (e.g. Helsinki-NLP/opus-mt-en-de, or an llmtune translation run) or of a "
        "causal LM (then give `forward_prompt`)."
    )
    backward: str = Field(description="The model that translates back (e.g. Helsinki-NLP/opus-mt-de-en).")
    forward_prompt: str | None = Field(
        None, description="Causal LMs: the prompt, with `{text}` where the text goes; the completion is the output."
    )
    backward_prompt: str | None = Field(None, description="Causal LMs: the prompt for the way back.")
    num_beams: int = Field(1, ge=1, description="Beam search width (1: greedy, or sampling with `sample`).")
    sample: bool = Field(False, description="Sample (top-p 0.9) instead of searching: more varied paraphrases.")
    max_new_tokens: int = Field(128, ge=1, description="Longest translation, in tokens.")
    batch_size: int = Field(16, ge=1, description="Texts translated at once.")


Augment = Annotated[Union[WordAugment, SynonymAugment, BackTranslationAugment], Field(discriminator="type")]


class DataSpec(Section):
    """The splits. `train` is needed to train; `validation` is evaluated during training, `test` once at the end."""

    train: DataSource | None = Field(
        None,
        description="Training split (required to train): a file path, "
        "or a mapping with path/hub/config/split/max_samples.",
    )
    validation: DataSource | None = Field(None, description="Validation split, evaluated during training.")
    test: DataSource | None = Field(None, description="Test split, evaluated once after training.")
    columns: dict[str, str] = Field(
        default_factory=dict, description="Rename columns before use: `{name_in_data: name_the_task_expects}`."
    )
    drop_empty: bool = Field(
        False,
        description="Tasks that generate text (summarization, translation, generative question answering): "
        "leave out rows with an empty input or target (counted in a warning) "
        "instead of stopping at the first with an error; metrics then cover the rows that are left.",
    )
    augment: list[Augment] = Field(
        default_factory=list,
        description="Data augmentation of the train split, before tokenization: a list of methods (random_swap, "
        "random_delete, random_insert, synonym, back_translation), each adding augmented copies of a share of "
        "the training rows, with their labels. Validation and test are never augmented; results are cached.",
    )

    leakage: Literal["warn", "refuse", "off"] = Field(
        "warn",
        description="Leakage audit between splits (train/validation, train/test, validation/test) in validate and "
        "train: exact duplicates after normalisation (case, whitespace, punctuation) and near duplicates (word "
        "bigram Jaccard >= 0.8). warn: one warning line above data.leakage_threshold; refuse: stop with an error "
        "there (as `llmtune validate --strict` does); off: no audit.",
    )
    leakage_threshold: float = Field(
        0.01,
        ge=0,
        le=1,
        description="Share of the smaller split of a pair that may be duplicated before the leakage audit warns "
        "(or refuses, with data.leakage: refuse).",
    )

    # YAML reads a bare `off` as false
    _leakage_off = field_validator("leakage", mode="before")(classmethod(lambda cls, v: "off" if v is False else v))

    _shorthand = field_validator("train", "validation", "test", mode="before")(
        classmethod(lambda cls, v: _source_shorthand(v))
    )

    def sources(self) -> dict[str, DataSource]:
        return {name: getattr(self, name) for name in SPLITS if getattr(self, name) is not None}
