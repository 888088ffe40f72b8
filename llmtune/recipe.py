"""The recipe: one typed schema, YAML loading, `--set` overrides and validation messages.

Every section is a pydantic model that rejects unknown keys. A field's description is its
documentation: `llmtune init` and the README's recipe reference are written from them.
"""

from __future__ import annotations

import difflib
import re
import typing
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import UserError

SPLITS = ("train", "validation", "test")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ModelSpec(Section):
    """The pretrained checkpoint to start from."""

    name: str = Field(
        description="Hub id (`org/name`) or a local directory holding a Hugging Face checkpoint, or a local .gguf file."
    )
    revision: str | None = Field(None, description="Hub branch, tag or commit; default: the main branch.")
    gguf_file: str | None = Field(
        None,
        description="Load this GGUF file (config, tokenizer and weights in one file; dequantized to float32 for training): a file name "
        "in the model.name directory or hub repository, or an absolute path. The run saves ordinary safetensors.",
    )
    trust_remote_code: bool = Field(
        False, description="Run modelling code shipped with the checkpoint. Off unless you trust its author."
    )
    decoder: str | None = Field(
        None,
        description="Summarization / translation: warm-start an encoder-decoder (BERT2BERT) from two checkpoints: `name` is the encoder, "
        "this hub id or directory the decoder (cross-attention is new). Null: `name` is already an encoder-decoder checkpoint.",
    )


TASK_TYPES = "The task; one of: classification, question_answering, summarization, translation."


class ClassificationTask(Section):
    """Sentiment / text classification of single texts or text pairs."""

    available_metrics: ClassVar[tuple[str, ...]] = ("accuracy", "macro_f1", "cross_entropy")

    type: Literal["classification"] = Field(description=TASK_TYPES)
    text_column: str = Field("text", description="Column holding the text to classify.")
    text_pair_column: str | None = Field(
        None, description="Second text column for pair tasks (NLI, paraphrase); null for single texts."
    )
    label_column: str = Field(
        "label", description="Column holding the label: a label name or an integer index into label_names."
    )
    label_names: list[str] | None = Field(
        None,
        description="Label names in index order. Default: the dataset's class names, else the sorted distinct labels of the train split.",
    )

    @field_validator("label_names")
    @classmethod
    def _distinct_labels(cls, names: list[str] | None) -> list[str] | None:
        if names is not None:
            if len(names) < 2:
                raise ValueError("expected at least two label names")
            if len(set(names)) != len(names):
                raise ValueError(f"label names must be distinct, got {names}")
        return names


class PromptCompletionOptions(Section):
    """The keys that switch a text task to prompt -> completion fine-tuning of a causal (GPT-style) language model.

    Shared by question answering, summarization and translation; each task names its own default template.
    """

    type: str = Field(description=TASK_TYPES)  # narrowed to one Literal by each task; declared here so it comes first
    generative: bool = Field(
        False,
        description="Use a causal (GPT-style) language model: prompt -> completion fine-tuning (the loss counts the completion tokens only), "
        "evaluated by generation with the task's metrics and by cross-entropy and perplexity of the gold completions.",
    )
    prompt_template: str | None = Field(
        None,
        description="Generative only: the prompt, with `{column}` fields, ending in the `{completion}` slot the target goes into. Default per task: "
        "'Context: {context}\\nQuestion: {question}\\nAnswer: {completion}'; 'Summarize:\\n{document}\\nSummary: {completion}'; "
        "'Translate German to English:\\n{de}\\nEnglish: {completion}' (with the task's column names and languages).",
    )
    chat_template: bool = Field(
        False,
        description="Generative only: send the prompt as the user turn of the tokenizer's chat template (instruct models).",
    )
    packing: bool = Field(
        False,
        description="Generative only: train on a batch's examples packed into rows of max_length tokens; attention and loss stay within each example.",
    )

    # Keys that only generative fine-tuning reads, with their defaults (a changed one without `generative` is a mistake).
    generative_only: ClassVar[dict[str, Any]] = {"prompt_template": None, "chat_template": False, "packing": False}
    # Keys that only the non-generative model family reads.
    not_generative: ClassVar[dict[str, Any]] = {}

    _template_syntax = field_validator("prompt_template")(classmethod(lambda cls, value: _check_template(value)))

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


class QuestionAnsweringTask(PromptCompletionOptions):
    """Question answering on a context (SQuAD): extractive (the answer is a span of the context), or
    generative (a causal language model writes the answer as text)."""

    type: Literal["question_answering"] = Field(description=TASK_TYPES)
    question_column: str = Field("question", description="Column holding the question.")
    context_column: str = Field("context", description="Column holding the context the answer is taken from.")
    answers_column: str = Field(
        "answers", description="Column holding the gold answers: `{text: [...], answer_start: [...]}` (SQuAD layout)."
    )
    id_column: str | None = Field(
        "id", description="Column holding an example id, copied into predictions; null: row numbers."
    )
    doc_stride: int = Field(
        128, ge=1, description="Tokens shared by consecutive windows when a context is longer than max_length."
    )
    max_answer_length: int = Field(30, ge=1, description="Longest answer, in tokens, considered when decoding.")
    n_best: int = Field(20, ge=1, description="Start and end candidates per window considered when decoding.")
    max_new_tokens: int = Field(32, ge=1, description="Generative only: longest generated answer, in tokens.")
    num_beams: int = Field(
        1, ge=1, description="Generative only: beam-search width when generating; 1 is greedy decoding."
    )

    generative_only: ClassVar[dict[str, Any]] = {
        **PromptCompletionOptions.generative_only,
        "max_new_tokens": 32,
        "num_beams": 1,
    }

    @property
    def available_metrics(self) -> tuple[str, ...]:
        return (
            ("exact_match", "f1", "cross_entropy", "perplexity")
            if self.generative
            else ("exact_match", "f1", "cross_entropy")
        )


def _check_template(template: str | None) -> str | None:
    if template is not None:
        from .prompting import template_fields

        template_fields(template)  # ValueError: pydantic reports it at the key's location
    return template


class Seq2SeqTask(PromptCompletionOptions):
    """Options shared by the text-to-text tasks (summarization, translation): an encoder-decoder model, or a causal LM with `generative`."""

    prefix: str = Field(
        "", description="Text put before every source, e.g. `summarize: ` for T5 checkpoints; empty for most others."
    )
    max_source_length: int | None = Field(
        None, ge=1, description="Longest tokenized source; longer sources are truncated. Default: training.max_length."
    )
    max_target_length: int = Field(
        128,
        ge=1,
        description="Longest tokenized target (reference); longer targets are truncated, with one warning per split that counts them.",
    )
    num_beams: int = Field(
        4, ge=1, le=64, description="Evaluation and prediction: beam width of the generation (1: greedy)."
    )
    max_new_tokens: int | None = Field(
        None,
        ge=1,
        le=4096,
        description="Evaluation and prediction: most tokens generated per example; default: max_target_length.",
    )
    length_penalty: float = Field(
        1.0,
        ge=-10,
        le=10,
        description="Beam search: exponent on the length the scores are divided by; above 1 favours longer outputs.",
    )
    no_repeat_ngram_size: int = Field(
        0, ge=0, le=20, description="Generation never repeats an n-gram of this size; 0: no constraint."
    )

    not_generative: ClassVar[dict[str, Any]] = {
        "prefix": ("", "write the instruction into task.prompt_template"),
        # A causal LM's generated n-grams would also be checked against the prompt: no summary could quote its source.
        "no_repeat_ngram_size": (0, "it would also forbid repeating n-grams of the prompt (the source)"),
    }


class SummarizationTask(Seq2SeqTask):
    """Abstractive summarization with an encoder-decoder model, or a causal LM (`generative`): source document -> summary."""

    available_metrics: ClassVar[tuple[str, ...]] = (
        "rouge1",
        "rouge2",
        "rougeL",
        "rougeLsum",
        "cross_entropy",
        "perplexity",
    )

    type: Literal["summarization"] = Field(description=TASK_TYPES)
    source_column: str = Field(
        "document", description="Column holding the document: a text, or a list of sentences (joined with spaces)."
    )
    target_column: str = Field(
        "summary",
        description="Column holding the reference summary: a text, or a list of references (trained on the first, ROUGE takes the best).",
    )


class TranslationTask(Seq2SeqTask):
    """Translation with an encoder-decoder model, or a causal LM (`generative`): source-language text -> target-language text."""

    available_metrics: ClassVar[tuple[str, ...]] = ("bleu", "chrf", "cross_entropy", "perplexity")

    type: Literal["translation"] = Field(description=TASK_TYPES)
    source_lang: str = Field(
        examples=["de"], description="Language code of the source text, e.g. de (ISO 639-1, or a dataset's own codes)."
    )
    target_lang: str = Field(examples=["en"], description="Language code of the target text, e.g. en.")
    source_column: str | None = Field(
        None,
        description="Column holding the source text; default: the column named source_lang, else `translation_column[source_lang]`.",
    )
    target_column: str | None = Field(
        None,
        description="Column holding the reference translation (a text, or a list of references); default: the column named target_lang, "
        "else `translation_column[target_lang]`.",
    )
    translation_column: str = Field(
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
    def _two_languages(self) -> TranslationTask:
        if self.source_lang == self.target_lang:
            raise ValueError(
                f"source_lang and target_lang are both '{self.source_lang}'; expected two different languages"
            )
        return self


SEQ2SEQ_TASKS = ("summarization", "translation")

Task = Annotated[
    Union[ClassificationTask, QuestionAnsweringTask, SummarizationTask, TranslationTask], Field(discriminator="type")
]


class DataSource(Section):
    """Where one split comes from: a local file (`path`), line-aligned text files (`parallel`) or a hub dataset (`hub`)."""

    path: str | None = Field(
        None,
        description="Local csv, tsv, json, jsonl or parquet file. Relative paths in a recipe file are relative to that file.",
    )
    parallel: dict[str, str] | None = Field(
        None,
        description="Line-aligned plain-text files, one column each: `{column: file}`, e.g. `{de: train.de, en: train.en}` for a parallel "
        "corpus; line N of every file is example N.",
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
                "give exactly one of `path` (a local file), `parallel` (line-aligned text files) or `hub` (a hub dataset id)"
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


class DataSpec(Section):
    """The splits. `train` is needed to train; `validation` is evaluated during training, `test` once at the end."""

    train: DataSource | None = Field(
        None,
        description="Training split (required to train): a file path, or a mapping with path/hub/config/split/max_samples.",
    )
    validation: DataSource | None = Field(None, description="Validation split, evaluated during training.")
    test: DataSource | None = Field(None, description="Test split, evaluated once after training.")
    columns: dict[str, str] = Field(
        default_factory=dict, description="Rename columns before use: `{name_in_data: name_the_task_expects}`."
    )
    drop_empty: bool = Field(
        False,
        description="Summarization and translation: leave out rows with an empty source or target (counted in a warning) "
        "instead of stopping at the first with an error; metrics then cover the rows that are left.",
    )

    _shorthand = field_validator("train", "validation", "test", mode="before")(
        classmethod(lambda cls, v: _source_shorthand(v))
    )

    def sources(self) -> dict[str, DataSource]:
        return {name: getattr(self, name) for name in SPLITS if getattr(self, name) is not None}


class FullMethod(Section):
    """Full fine-tuning: every weight is trained."""

    type: Literal["full"] = Field(description="full | lora | ia3 | prefix_tuning")


class LoraMethod(Section):
    """LoRA: low-rank adapters on chosen linear layers; the new task head is trained and saved with them."""

    type: Literal["lora"] = Field(description="full | lora | ia3 | prefix_tuning")
    r: int = Field(8, ge=1, description="Rank of the adapter matrices.")
    alpha: int = Field(16, ge=1, description="Scaling numerator: updates are scaled by alpha / r.")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout on the adapter input.")
    target_modules: list[str] | None = Field(
        None, description="Module names to adapt; default: the architecture's attention projections."
    )


class IA3Method(Section):
    """IA3: learned rescaling vectors on keys, values and feed-forward activations."""

    type: Literal["ia3"] = Field(description="full | lora | ia3 | prefix_tuning")
    target_modules: list[str] | None = Field(None, description="Module names to rescale; default: per architecture.")
    feedforward_modules: list[str] | None = Field(
        None, description="Which of target_modules are feed-forward layers; default: per architecture."
    )


class PrefixTuningMethod(Section):
    """Prefix tuning: trained key/value prefixes in every attention layer."""

    type: Literal["prefix_tuning"] = Field(description="full | lora | ia3 | prefix_tuning")
    num_virtual_tokens: int = Field(20, ge=1, description="Length of the trained prefix.")


Method = Annotated[Union[FullMethod, LoraMethod, IA3Method, PrefixTuningMethod], Field(discriminator="type")]


class Training(Section):
    """Optimisation settings."""

    epochs: float = Field(
        3, gt=0, description="Passes over the training split (fractions allowed); ignored when max_steps is set."
    )
    max_steps: int | None = Field(
        None, ge=1, description="Stop after this many optimizer steps instead of counting epochs."
    )
    learning_rate: float = Field(5e-5, gt=0, description="Peak learning rate of AdamW.")
    head_learning_rate: float | None = Field(
        None,
        gt=0,
        description="Peak learning rate of the newly initialised task head (classifier, QA outputs); default: learning_rate. "
        "A higher one lets a fresh head catch up with the pretrained body in short runs.",
    )
    scheduler: Literal[
        "linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial", "inverse_sqrt"
    ] = Field("linear", description="Learning-rate schedule after warmup.")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Share of the optimizer steps spent warming up.")
    warmup_steps: int | None = Field(None, ge=0, description="Warmup steps; overrides warmup_ratio.")
    batch_size: int = Field(32, ge=1, description="Examples per batch and process (ignored when max_tokens is set).")
    max_tokens: int | None = Field(
        None,
        ge=8,
        description="Token budget per batch and process instead of a fixed batch size: each batch holds as many examples as fit "
        "in this many padded tokens (examples x longest), so every step costs about the same; evaluation batches get twice the budget.",
    )
    eval_batch_size: int | None = Field(
        None, ge=1, description="Examples per evaluation batch; default: 2 x batch_size (or 2 x max_tokens tokens)."
    )
    gradient_accumulation_steps: int = Field(1, ge=1, description="Batches accumulated into one optimizer step.")
    max_length: int = Field(128, ge=8, description="Longest tokenized input; longer inputs are truncated.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay (not applied to biases and norms).")
    max_grad_norm: float | None = Field(
        1.0, gt=0, description="Clip the gradient norm to this value; null: no clipping."
    )
    seed: int = Field(42, description="Seed for initialisation, shuffling and dropout.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 (else fp16) mixed precision on GPU, fp32 on CPU."
    )
    log_every_n_steps: int = Field(10, ge=1, description="Write a training-log line every N optimizer steps.")
    compile: bool = Field(
        False,
        description="Compile the model with torch.compile (worth it on GPU for long runs; the first steps are slow).",
    )


class Evaluation(Section):
    """When and what to evaluate."""

    every_n_steps: int | None = Field(
        None, ge=1, description="Evaluate on validation every N optimizer steps; default: at the end of each epoch."
    )
    metrics: list[str] | None = Field(
        None,
        description="Metrics to report; default: all of the task's (classification: accuracy, macro_f1, cross_entropy).",
    )
    metric_for_best: str | None = Field(
        None,
        description="Validation metric that picks the best checkpoint; when set, the best checkpoint is kept and its weights are the saved model "
        "and the ones evaluated on test. Needs data.validation.",
    )
    mode: Literal["max", "min"] | None = Field(
        None,
        description="Whether metric_for_best is better when higher (max) or lower (min); default: min for cross_entropy and perplexity, max otherwise.",
    )
    early_stopping_patience: int | None = Field(
        None,
        ge=1,
        description="Stop training after this many validation evaluations without improvement of metric_for_best; null: never stop early.",
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
        return self.mode or ("min" if self.metric_for_best in ("cross_entropy", "perplexity") else "max")


class Checkpointing(Section):
    """Resumable checkpoints under RUN_DIR/checkpoints/step-N (model or adapter, optimizer, scheduler, RNG states, data position)."""

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


class Recipe(Section):
    """A fine-tuning job."""

    model: ModelSpec
    task: Task
    data: DataSpec
    method: Method = Field(default_factory=lambda: FullMethod(type="full"), description="How weights are trained.")
    training: Training = Field(default_factory=Training)
    evaluation: Evaluation = Field(default_factory=Evaluation)
    checkpointing: Checkpointing = Field(default_factory=Checkpointing)
    tracking: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(
        default_factory=list,
        description="Experiment trackers besides train_log.jsonl: tensorboard (event files in the run's tensorboard/ folder), wandb, mlflow.",
    )
    output_dir: str = Field(
        description="Run directory, relative to the current directory; default: runs/<recipe file name>."
    )

    @model_validator(mode="after")
    def _known_metrics(self) -> Recipe:
        available = self.task.available_metrics
        for name in self.evaluation.metrics or ():
            if name not in available:
                raise ValueError(
                    f"evaluation.metrics: unknown metric '{name}' for {self.task.type}; expected some of {list(available)}"
                )
        if (
            isinstance(self.task, QuestionAnsweringTask)
            and not self.task.generative
            and self.task.doc_stride >= self.training.max_length
        ):
            raise ValueError(
                f"task.doc_stride ({self.task.doc_stride}) must be smaller than training.max_length ({self.training.max_length}): "
                "it is the overlap between consecutive windows of a long context"
            )
        if self.model.decoder is not None and self.task.type not in SEQ2SEQ_TASKS:
            raise ValueError(
                f"model.decoder: warm-starting an encoder-decoder applies to {' and '.join(SEQ2SEQ_TASKS)}, not to {self.task.type}"
            )
        if self.model.decoder is not None and getattr(self.task, "generative", False):
            raise ValueError(
                "model.decoder: warm-starting an encoder-decoder does not apply to task.generative: true (a causal LM)"
            )
        if self.model.decoder is not None and self.method.type != "full":
            raise ValueError(
                f"model.decoder: a warm-started encoder-decoder has new cross-attention layers that must be trained in full; "
                f"use method.type: full (got {self.method.type})"
            )
        best = self.evaluation.metric_for_best
        if best is not None and best not in self.metrics:
            raise ValueError(
                f"evaluation.metric_for_best: '{best}' is not among the reported metrics {list(self.metrics)}"
            )
        return self

    @property
    def metrics(self) -> tuple[str, ...]:
        return tuple(self.evaluation.metrics or self.task.available_metrics)


# --------------------------------------------------------------------------- loading


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read a YAML recipe, apply `key=value` overrides and validate it.

    Args:
        path: the recipe file.
        overrides: `dotted.key=value` strings; values are parsed as YAML.

    Raises:
        UserError: unreadable file, YAML syntax error, or every schema problem, each with its location.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: recipe file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read recipe file: {exc}") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        raw = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise UserError(f"{where}: invalid YAML: {exc.problem or exc.context}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(
            f"{path}:1:1: expected a mapping of sections (model, task, data, ...), got {type(raw).__name__}"
        )
    _check_duplicate_keys(root, path)

    base = path.resolve().parent
    for source in _data_sources(raw):
        _resolve_paths(source, base)
    raw.setdefault("output_dir", str(Path("runs") / path.stem))

    origins = {}
    for item in overrides:
        key, value = apply_override(raw, item)
        origins[key] = item
    for source_key, source in _data_sources(raw, with_keys=True):
        if any(key == source_key or key.startswith(source_key + ".") for key in origins):
            _resolve_paths(source, Path.cwd())  # paths given on the command line are relative to where it runs

    return validate(raw, source=str(path), yaml_root=root, origins=origins)


def validate(
    raw: dict, source: str = "<recipe>", yaml_root: yaml.Node | None = None, origins: dict[str, str] | None = None
) -> Recipe:
    """Validate a recipe mapping; every problem is reported with its location in one UserError."""
    origins = origins or {}
    try:
        return Recipe.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            lines.append(_describe(error, source, yaml_root, origins))
        raise UserError("\n".join(dict.fromkeys(lines))) from None


def _data_sources(raw: dict, with_keys: bool = False):
    data = raw.get("data")
    if not isinstance(data, dict):
        return
    for split in SPLITS:
        if isinstance(data.get(split), str):
            data[split] = {"path": data[split]}
        if isinstance(data.get(split), dict):
            yield (f"data.{split}", data[split]) if with_keys else data[split]


def _resolve_paths(source: dict, base: Path) -> None:
    """Make a data source's local paths absolute, relative to `base` (absolute paths stay as they are)."""
    if isinstance(source.get("path"), str):
        source["path"] = str((base / source["path"]).resolve())
    if isinstance(source.get("parallel"), dict):
        source["parallel"] = {
            column: str((base / file).resolve()) if isinstance(file, str) else file
            for column, file in source["parallel"].items()
        }


def apply_override(raw: dict, item: str) -> tuple[str, Any]:
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UserError(f"--set {item}: expected KEY=VALUE, for example --set training.learning_rate=3e-5")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    node = raw
    parts = key.split(".")
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if isinstance(child, str) and part in SPLITS and parts[:depth] == ["data"]:
            child = node[part] = {"path": child}
        if not isinstance(child, dict):
            raise UserError(f"--set {item}: '{'.'.join(parts[: depth + 1])}' is a value, not a section")
        node = child
    node[parts[-1]] = value
    return key, value


def _check_duplicate_keys(node: yaml.Node | None, path: Path) -> None:
    if isinstance(node, yaml.MappingNode):
        seen = set()
        for key_node, value_node in node.value:
            if key_node.value in seen:
                mark = key_node.start_mark
                raise UserError(f"{path}:{mark.line + 1}:{mark.column + 1}: key '{key_node.value}' appears twice")
            seen.add(key_node.value)
            _check_duplicate_keys(value_node, path)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _check_duplicate_keys(item, path)


def _describe(error: dict, source: str, yaml_root: yaml.Node | None, origins: dict[str, str]) -> str:
    loc = _user_loc(error["loc"])
    dotted = ".".join(str(part) for part in loc)
    where = _where(loc, source, yaml_root, origins)
    kind = error["type"]
    if kind == "extra_forbidden":
        valid = _valid_keys(error["loc"][:-1])
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
        hint = f"did you mean '{close[0]}'?" if close else f"valid keys here: {', '.join(valid)}"
        return f"{where}: unknown key '{dotted}'; {hint}"
    if kind == "missing":
        return f"{where}: missing required key '{dotted}'"
    if kind == "union_tag_invalid":
        expected = error.get("ctx", {}).get("expected_tags", "")
        where = _where((*loc, "type"), source, yaml_root, origins)
        return f"{where}: {dotted}.type: unknown value {error['input'].get('type')!r}; expected one of {expected}"
    if kind == "union_tag_not_found":
        return f"{where}: missing key '{dotted}.type'"
    message = error["msg"].removeprefix("Value error, ")
    got = error.get("input")
    if kind.endswith("_type") or kind.endswith("_parsing") or kind == "literal_error":
        message = f"{message}; got {got!r}"
    return f"{where}: {dotted}: {message}" if dotted else f"{where}: {message}"


def union_members(section: str) -> dict[str, type[BaseModel]]:
    """The classes a `type`-tagged section (task, method) may hold, by tag: read off the schema, so new members count at once."""
    classes = _section_classes(Recipe.model_fields[section].annotation)
    return {typing.get_args(cls.model_fields["type"].annotation)[0]: cls for cls in classes}


def _user_loc(loc: tuple) -> tuple:
    """Drop the union tags pydantic inserts into locations (`method.lora.r` -> `method.r`)."""
    if len(loc) > 1 and loc[0] in ("task", "method") and loc[1] in union_members(loc[0]):
        return (loc[0], *loc[2:])
    return loc


def _where(loc: tuple, source: str, yaml_root: yaml.Node | None, origins: dict[str, str]) -> str:
    dotted = ".".join(str(part) for part in loc)
    for key, item in origins.items():
        if dotted == key or dotted.startswith(key + ".") or key.startswith(dotted + "."):
            return f"--set {item}"
    node, mark = yaml_root, None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if k.value == str(part)), None)
            if match is None:
                break
            mark, node = match[0].start_mark, match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            mark = node.start_mark
        else:
            break
    if mark is None:
        return source
    return f"{source}:{mark.line + 1}:{mark.column + 1}"


def _valid_keys(parent: tuple) -> list[str]:
    """Keys of the section at `parent`, a pydantic location (union tags included)."""
    model: Any = Recipe
    parts = list(parent)
    while parts:
        field = model.model_fields.get(str(parts.pop(0)))
        if field is None:
            return []
        candidates = _section_classes(field.annotation)
        if len(candidates) > 1 and parts:
            tag = parts.pop(0)
            candidates = [c for c in candidates if typing.get_args(c.model_fields["type"].annotation) == (tag,)]
        if not candidates:
            return []
        model = candidates[0]
    return list(model.model_fields)


def _section_classes(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [found for arg in typing.get_args(annotation) for found in _section_classes(arg)]


def dump_recipe(recipe: Recipe) -> str:
    """The resolved recipe as YAML, the form saved in every run directory."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
