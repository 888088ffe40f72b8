"""The parts of a recipe that every task shares: model, data, method, training, evaluation and checkpointing.

Every section is a pydantic model that rejects unknown keys. A field's description is its documentation:
`llmtune init` and the README's recipe reference are written from them. The task sections live beside
their tasks (`llmtune/tasks/`), and `llmtune.recipe` assembles the whole recipe from both.
"""

from __future__ import annotations

import typing
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .common.errors import UserError

SPLITS = ("train", "validation", "test")
# Bounds no real run reaches, so that a typo (or 1e26) is refused in one line instead of planning a run that cannot
# finish. A billion optimizer steps is four months at 100 steps a second, a tiny model's pace on a GPU; the longest
# fine-tuning runs take about a million. A million examples in one batch of one process would not fit in memory.
MAX_STEPS = 10**9
MAX_BATCH = 10**6


class Section(BaseModel):
    # Unknown keys are errors; so are infinities and NaN (`learning_rate: .inf`), which no setting means.
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_flag_for_a_number(cls, data):
        """YAML's true/false are not numbers here (pydantic would read `batch_size: true` as 1): they reach the number
        fields as the words they are, which fail there, at the key, as any other word would."""
        if isinstance(data, dict):
            fields = cls.model_fields
            flags = {
                name: str(value).lower()
                for name, value in data.items()
                if isinstance(value, bool) and name in fields and _is_number(fields[name].annotation)
            }
            data = {**data, **flags} if flags else data
        return data


def _is_number(annotation) -> bool:
    """Whether a field holds an int or a float (also when optional)."""
    return annotation in (int, float) or any(arg in (int, float) for arg in typing.get_args(annotation))


class ModelSpec(Section):
    """The pretrained checkpoint to start from."""

    name: str = Field(
        description="Hub id (`org/name`) or a local directory holding a Hugging Face checkpoint, or a local .gguf file."
    )
    revision: str | None = Field(None, description="Hub branch, tag or commit; default: the main branch.")
    gguf_file: str | None = Field(
        None,
        description="Load this GGUF file (config, tokenizer and weights in one file; "
        "dequantized to float32 for training): a file name in the model.name directory or hub repository, "
        "or an absolute path. The run saves ordinary safetensors.",
    )
    trust_remote_code: bool = Field(
        False, description="Run modelling code shipped with the checkpoint. Off unless you trust its author."
    )
    decoder: str | None = Field(
        None,
        description="Summarization / translation: warm-start an encoder-decoder (BERT2BERT) from two checkpoints: "
        "`name` is the encoder, this hub id or directory the decoder (cross-attention is new). "
        "Null: `name` is already an encoder-decoder checkpoint.",
    )


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


class FullMethod(Section):
    """Full fine-tuning: every weight is trained."""

    type: Literal["full"] = Field(description="full | lora | ia3 | prefix_tuning")
    reinit_top_layers: int = Field(
        0,
        ge=0,
        le=1000,
        description="Re-initialise the top N transformer layers (and the pooler) before training instead of "
        "starting them from the checkpoint: steadier fine-tuning on small data sets for BERT-style models "
        "(Zhang et al. 2021); 0 keeps every pretrained layer.",
    )


Quantization = Literal["4bit", "8bit"] | None


def quantization_field():
    """Every adapter method's `quantization`: the frozen base may be loaded quantized (QLoRA)."""
    return Field(
        None,
        description="Load the frozen base model quantized through bitsandbytes: 4bit (QLoRA: NF4, double "
        "quantization, bf16 compute) or 8bit; the new task head stays in float. About a quarter (4bit) or half (8bit) "
        "of the weight memory; the run still saves a plain adapter. Needs bitsandbytes (`pip install "
        "'llmtune[qlora]'`).",
    )


class LoraMethod(Section):
    """LoRA: low-rank adapters on chosen linear layers; the new task head is trained and saved with them."""

    type: Literal["lora"] = Field(description="full | lora | ia3 | prefix_tuning")
    r: int = Field(8, ge=1, description="Rank of the adapter matrices.")
    alpha: int = Field(16, ge=1, description="Scaling numerator: updates are scaled by alpha / r.")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout on the adapter input.")
    target_modules: list[str] | None = Field(
        None, description="Module names to adapt; default: the architecture's attention projections."
    )
    use_dora: bool = Field(
        False,
        description="DoRA: split each adapted weight into magnitude and direction and train both (closer to full "
        "fine-tuning at the same rank; slower steps).",
    )
    use_rslora: bool = Field(
        False, description="rsLoRA: scale updates by alpha / sqrt(r) instead of alpha / r (steadier at high ranks)."
    )
    quantization: Quantization = quantization_field()


class IA3Method(Section):
    """IA3: learned rescaling vectors on keys, values and feed-forward activations."""

    type: Literal["ia3"] = Field(description="full | lora | ia3 | prefix_tuning")
    target_modules: list[str] | None = Field(None, description="Module names to rescale; default: per architecture.")
    feedforward_modules: list[str] | None = Field(
        None, description="Which of target_modules are feed-forward layers; default: per architecture."
    )
    quantization: Quantization = quantization_field()


class PrefixTuningMethod(Section):
    """Prefix tuning: trained key/value prefixes in every attention layer."""

    type: Literal["prefix_tuning"] = Field(description="full | lora | ia3 | prefix_tuning")
    num_virtual_tokens: int = Field(20, ge=1, description="Length of the trained prefix.")
    quantization: Quantization = quantization_field()


Method = Annotated[Union[FullMethod, LoraMethod, IA3Method, PrefixTuningMethod], Field(discriminator="type")]


class Training(Section):
    """Optimisation settings."""

    epochs: float = Field(
        3,
        gt=0,
        le=MAX_BATCH,
        description="Passes over the training split (fractions allowed); ignored when max_steps is set.",
    )
    max_steps: int | None = Field(
        None, ge=1, le=MAX_STEPS, description="Stop after this many optimizer steps instead of counting epochs."
    )
    min_steps: int | None = Field(
        None,
        ge=1,
        le=MAX_STEPS,
        description="Train at least this many optimizer steps: a small training split is passed over more often "
        "than `epochs` says (the run's first line says so). Ignored when max_steps is set.",
    )
    learning_rate: float = Field(5e-5, gt=0, description="Peak learning rate of AdamW.")
    optimizer: Literal["adamw", "adamw_8bit"] = Field(
        "adamw",
        description="adamw: torch's fused AdamW; adamw_8bit: bitsandbytes' AdamW with 8-bit moments (a quarter of "
        "the optimizer memory; needs bitsandbytes).",
    )
    head_learning_rate: float | None = Field(
        None,
        gt=0,
        description="Peak learning rate of the newly initialised task head (classifier, QA outputs); "
        "default: learning_rate. A higher one lets a fresh head catch up with the pretrained body in short runs.",
    )
    layer_decay: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Layer-wise learning-rate decay: the top layer trains at learning_rate, each layer below at this "
        "factor times the one above, the embeddings lowest (e.g. 0.9); the task head keeps head_learning_rate. "
        "Default: one rate for the whole body.",
    )
    scheduler: Literal[
        "linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial", "inverse_sqrt"
    ] = Field("linear", description="Learning-rate schedule after warmup.")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Share of the optimizer steps spent warming up.")
    warmup_steps: int | None = Field(None, ge=0, le=MAX_STEPS, description="Warmup steps; overrides warmup_ratio.")
    batch_size: int = Field(
        32, ge=1, le=MAX_BATCH, description="Examples per batch and process (ignored when max_tokens is set)."
    )
    max_tokens: int | None = Field(
        None,
        ge=8,
        le=MAX_STEPS,
        description="Token budget per batch and process instead of a fixed batch size: "
        "each batch holds as many examples as fit in this many padded tokens (examples x longest), "
        "so every step costs about the same; evaluation batches get twice the budget.",
    )
    eval_batch_size: int | None = Field(
        None,
        ge=1,
        le=MAX_BATCH,
        description="Examples per evaluation batch; default: 2 x batch_size (or 2 x max_tokens tokens).",
    )
    gradient_accumulation_steps: int = Field(
        1, ge=1, le=MAX_BATCH, description="Batches accumulated into one optimizer step."
    )
    max_length: int = Field(
        128, ge=8, le=MAX_STEPS, description="Longest tokenized input; longer inputs are truncated."
    )
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay (not applied to biases and norms).")
    max_grad_norm: float | None = Field(
        1.0, gt=0, description="Clip the gradient norm to this value; null: no clipping."
    )
    seed: int = Field(42, description="Seed for initialisation, shuffling and dropout.")
    precision: Literal["auto", "fp32", "bf16", "fp16", "bf16-pure"] = Field(
        "auto",
        description="auto: bf16 (else fp16) mixed precision on GPU, fp32 on CPU. bf16 and fp16 are mixed precision: "
        "the trained weights and the optimizer state stay fp32 (master weights, whatever dtype the checkpoint is "
        "stored in) and autocast runs the matmuls in bf16/fp16; an adapter's frozen base stays as loaded. "
        "bf16-pure: every weight and the optimizer state in bf16 (half the memory of the trained weights, but "
        "updates smaller than a weight's bf16 resolution are lost). The saved model keeps the checkpoint's dtype.",
    )
    log_every_n_steps: int = Field(10, ge=1, description="Write a training-log line every N optimizer steps.")
    gradient_checkpointing: bool = Field(
        False,
        description="Keep only each layer's inputs during the forward pass and recompute the rest for the backward "
        "pass: far less activation memory (longer inputs, bigger batches or models) for about a third more compute "
        "per step. Works with every method.",
    )
    release_freed_memory: bool = Field(
        False,
        description="Linux (glibc) only: give memory the batches free back to the system at once instead of keeping "
        "it in the C heap, where batches of other shapes fragment it and peak memory climbs step after step. On CPU, "
        "MiniLM QA (batch 32 x 384 tokens, gradient checkpointing): 2.2 GB peak instead of 4.5 GB, steps about 30% "
        "slower. Holds for the rest of the process. Ignored when MALLOC_* or GLIBC_TUNABLES malloc settings are set.",
    )
    compile: bool = Field(
        False,
        description="Compile the model with torch.compile (worth it on GPU for long runs; the first steps are slow).",
    )
    collective_timeout_s: int = Field(
        600,
        ge=1,
        description="Several processes: seconds a process waits for the others to join a step before it stops with "
        "an error (a crashed or hung process); the run continues from its last checkpoint with --resume.",
    )

    def check_planned_steps(self, steps: int) -> None:
        """Raises UserError: the epochs over the training split plan more optimizer steps than any run takes."""
        if steps > MAX_STEPS:
            raise UserError(
                f"training.epochs: {self.epochs:g} epochs plan {steps:,} optimizer steps; at most {MAX_STEPS:,} "
                "(no fine-tuning run comes near). Use fewer epochs, or set training.max_steps"
            )


class Evaluation(Section):
    """When and what to evaluate."""

    every_n_steps: int | None = Field(
        None, ge=1, description="Evaluate on validation every N optimizer steps; default: at the end of each epoch."
    )
    metrics: list[str] | None = Field(
        None,
        description="Metrics to report; default: all of the task's "
        "(classification: accuracy, macro_f1, cross_entropy).",
    )
    metric_for_best: str | None = Field(
        None,
        description="Validation metric that picks the best checkpoint; when set, the best checkpoint is kept "
        "and its weights are the saved model and the ones evaluated on test. Needs data.validation.",
    )
    mode: Literal["max", "min"] | None = Field(
        None,
        description="Whether metric_for_best is better when higher (max) or lower (min); "
        "default: min for cross_entropy, perplexity, mse and mae, max otherwise.",
    )
    early_stopping_patience: int | None = Field(
        None,
        ge=1,
        description="Stop training after this many validation evaluations without improvement of metric_for_best; "
        "null: never stop early.",
    )

    @model_validator(mode="after")
    def _patience_needs_metric(self) -> Evaluation:
        if self.early_stopping_patience is not None and self.metric_for_best is None:
            raise ValueError(
                "early_stopping_patience needs evaluation.metric_for_best (the metric that must keep improving)"
            )
        return self

    @property
    def best_mode(self) -> str:
        return self.mode or ("min" if self.metric_for_best in ("cross_entropy", "perplexity", "mse", "mae") else "max")


class Checkpointing(Section):
    """Resumable checkpoints in RUN_DIR/checkpoints/step-N (model/adapter, optimizer, scheduler, RNG, data position)."""

    every_n_steps: int | None = Field(
        None,
        ge=1,
        description="Write a checkpoint every N optimizer steps; null: only at epoch ends (if at_epoch_end).",
    )
    at_epoch_end: bool = Field(True, description="Write a checkpoint at the end of each epoch.")
    keep_last: int = Field(
        1,
        ge=1,
        description="Keep the newest N checkpoints (the best one, with evaluation.metric_for_best, is kept as well).",
    )
