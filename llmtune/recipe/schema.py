"""The whole recipe: the sections training, evaluation and checkpointing read, assembled with the model, data and
task sections that live beside what reads them (`models/schema.py`, `data/schema.py`, each task's options in
`tasks/`). Every section rejects unknown keys; a field's description is its documentation."""

from __future__ import annotations

import typing
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, Field, field_validator, model_validator

from .. import tasks
from ..common.errors import UserError
from ..common.section import Section
from ..data.schema import DataSpec
from ..models.schema import FullMethod, Method, ModelSpec

# Bounds no real run reaches, so that a typo (or 1e26) is refused in one line instead of planning a run that cannot
# finish. A billion optimizer steps is four months at 100 steps a second, a tiny model's pace on a GPU; the longest
# fine-tuning runs take about a million. A million examples in one batch of one process would not fit in memory.
MAX_STEPS = 10**9
MAX_BATCH = 10**6


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


# The `task` section: one registered task's options, picked by `type`.
TaskSection = Annotated[Union[tasks.option_classes()], Field(discriminator="type")]


class Recipe(Section):
    """A fine-tuning job."""

    model: ModelSpec
    task: TaskSection
    data: DataSpec
    method: Method = Field(default_factory=lambda: FullMethod(type="full"), description="How weights are trained.")
    training: Training = Field(default_factory=Training)
    evaluation: Evaluation = Field(default_factory=Evaluation)
    checkpointing: Checkpointing = Field(default_factory=Checkpointing)
    tracking: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(
        default_factory=list,
        description="Experiment trackers besides train_log.jsonl: tensorboard (event files in the run's tensorboard/ "
        "folder), wandb, mlflow.",
    )
    output_dir: str = Field(
        description="Run directory, relative to the current directory; default: runs/<recipe file name>."
    )

    @field_validator("output_dir")
    @classmethod
    def _a_directory(cls, value: str) -> str:
        if not value.strip():  # Path("") is the current directory: a run would be written among the user's files
            raise ValueError("empty; expected a directory path, e.g. runs/sentiment")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        available = self.task.available_metrics
        for name in self.evaluation.metrics or ():
            if name not in available:
                raise ValueError(
                    f"evaluation.metrics: unknown metric '{name}' for {self.task.type}; "
                    f"expected some of {list(available)}"
                )
        if self.model.decoder is not None:
            self._check_decoder()
        if getattr(self.method, "quantization", None) and self.model.gguf_file:
            raise ValueError(
                "method.quantization: a GGUF checkpoint (model.gguf_file) is dequantized as it loads and cannot be "
                "quantized again by bitsandbytes; leave method.quantization out, or start from safetensors weights"
            )
        self.task.check_recipe(self)
        best = self.evaluation.metric_for_best
        if best is not None and best not in self.metrics:
            raise ValueError(
                f"evaluation.metric_for_best: '{best}' is not among the reported metrics {list(self.metrics)}"
            )
        return self

    def _check_decoder(self) -> None:
        if not self.task.encoder_decoder:
            suited = " and ".join(task.name for task in tasks.TASKS.values() if task.options_class.encoder_decoder)
            raise ValueError(
                f"model.decoder: warm-starting an encoder-decoder applies to {suited}, not to {self.task.type}"
            )
        if self.method.type != "full":
            raise ValueError(
                "model.decoder: a warm-started encoder-decoder has new cross-attention layers that must be trained in "
                f"full; use method.type: full (got {self.method.type})"
            )

    @property
    def metrics(self) -> tuple[str, ...]:
        return tuple(self.evaluation.metrics or self.task.available_metrics)


def union_members(section: str) -> dict[str, type[BaseModel]]:
    """The classes a `type`-tagged section (task, method) may hold, by tag: read off the schema,
    so new members count at once."""
    classes = section_classes(Recipe.model_fields[section].annotation)
    return {typing.get_args(cls.model_fields["type"].annotation)[0]: cls for cls in classes}


def section_classes(annotation: Any) -> list[type[BaseModel]]:
    """The recipe section classes a field may hold (one, or each member of a union such as the task types)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [found for arg in typing.get_args(annotation) for found in section_classes(arg)]
