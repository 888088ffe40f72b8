"""Evaluate and predict with a finished run directory, a pushed run, a plain checkpoint or a recipe's starting model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError
from safetensors import SafetensorError

from . import data, models, runs, tasks
from .batching import PadCollator
from .errors import UserError
from .evaluation import eval_loader, mixed_precision, new_accelerator, run_evaluation
from .quiet import peft_deprecations_silenced, quiet_libraries
from .recipe import DataSource, DataSpec, ModelSpec, Recipe, apply_override, load_recipe, validate
from .tasks.base import Task


@dataclass
class LoadedRun:
    recipe: Recipe
    task: Task
    model: object
    tokenizer: object
    run_dir: Path | None  # None for a bare checkpoint or a recipe's starting model


@quiet_libraries
def load_run(target: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> LoadedRun:
    """Load a run directory (full model or adapter on its base), a run pushed to the hub, a plain checkpoint,
    or a recipe file's starting model (before fine-tuning, to measure the zero-shot baseline).

    Raises:
        UserError: not a run directory nor a loadable checkpoint.
    """
    path = Path(target)
    if not path.is_dir() and models.is_hub_id(str(target)):
        path = models.pull_run(str(target)) or path  # a run pushed with `llmtune push` loads like its run directory
    if path.is_dir() and (path / runs.RECIPE_FILE).is_file():
        return _load_run_dir(path, overrides)
    if path.is_file() and path.suffix in (".yaml", ".yml"):
        return _load_starting_model(path, overrides)
    if path.is_dir() and not (path / "config.json").is_file() and not any(path.glob("*.gguf")):
        raise UserError(
            f"{path}: neither a run directory (no {runs.RECIPE_FILE}) nor a checkpoint directory (no config.json); "
            "expected a directory written by llmtune train, a Hugging Face checkpoint, or a hub id"
        )
    return _load_checkpoint(str(target), overrides)


def _load_run_dir(path: Path, overrides) -> LoadedRun:
    if not (path / runs.METRICS_FILE).is_file():
        raise UserError(f"{path}: not a finished run (no {runs.METRICS_FILE}); did training stop early?")
    recipe = load_recipe(path / runs.RECIPE_FILE, overrides)
    task = tasks.create(recipe.task)
    saved = models.Checkpoint(str(path), str(path), "run directory")
    tokenizer = models.load_tokenizer(saved)
    trust = recipe.model.trust_remote_code
    exported = models.onnx_file(path)
    if exported is not None:  # `llmtune export`: ONNX Runtime runs the model
        config = models.load_config(saved, trust)
        model = models.load_onnx(exported, config, models.ONNX_OUTPUTS[task.auto_class])
    elif (path / runs.ADAPTER_CONFIG).is_file():
        from peft import PeftModel

        base, _ = models.load_model(
            models.resolve_checkpoint(recipe.model),
            task.auto_class,
            trust,
            tokenizer.pad_token_id,
            decoder=models.resolve_decoder(recipe.model),
            **task.model_kwargs(),
        )
        try:
            with peft_deprecations_silenced():
                model = PeftModel.from_pretrained(base, str(path))
        except SafetensorError as error:
            raise models.damaged_weights(str(path), error) from None
    else:
        model, _ = models.load_model(saved, task.auto_class, trust, tokenizer.pad_token_id)
    task.setup(model.config, tokenizer)
    return LoadedRun(recipe, task, model, tokenizer, path)


def _load_starting_model(path: Path, overrides) -> LoadedRun:
    """A recipe's model before any fine-tuning, with the task settled on the recipe's train split as training would
    (seeded as training is, so newly initialised weights are the ones training starts from)."""
    from accelerate.utils import set_seed

    recipe = load_recipe(path, overrides)
    set_seed(recipe.training.seed)
    task = tasks.create(recipe.task)
    if recipe.data.train is not None:
        spec = DataSpec(train=recipe.data.train, columns=recipe.data.columns, drop_empty=recipe.data.drop_empty)
        task.prepare(data.load_splits(spec, task.file_readers), spec)
        recipe = recipe.model_copy(update={"task": task.resolved_options()})
    return _load_model(recipe, models.resolve_checkpoint(recipe.model))


def _load_checkpoint(target: str, overrides) -> LoadedRun:
    """A plain checkpoint (directory or hub id): its task is read off its config's architectures unless the
    overrides name it."""
    raw: dict = {"model": {"name": target}, "task": {}, "data": {}, "output_dir": "."}
    for item in overrides:
        apply_override(raw, item)
    try:
        spec = ModelSpec.model_validate(raw["model"])
    except ValidationError as error:
        raise UserError(f"--set model: {error.errors()[0]['msg']}") from None
    checkpoint = models.resolve_checkpoint(spec)
    if raw["task"].get("type") is None:
        config = models.load_config(checkpoint, raw["model"].get("trust_remote_code", False))
        raw["task"]["type"] = tasks.for_architectures(getattr(config, "architectures", None), target)
    return _load_model(validate(raw, source="command line"), checkpoint)


def _load_model(recipe: Recipe, checkpoint: models.Checkpoint) -> LoadedRun:
    """The checkpoint's model for the recipe's task; what the task leaves open (label names) comes from its config."""
    trust = recipe.model.trust_remote_code
    config = models.load_config(checkpoint, trust)
    options = tasks.from_model_config(recipe.task, config)
    recipe = recipe.model_copy(update={"task": options})
    task = tasks.create(options)
    tokenizer = models.load_tokenizer(checkpoint, trust)
    model, _ = models.load_model(
        checkpoint,
        task.auto_class,
        trust,
        tokenizer.pad_token_id,
        decoder=models.resolve_decoder(recipe.model),
        **task.model_kwargs(),
    )
    task.setup(model.config, tokenizer)
    return LoadedRun(recipe, task, model, tokenizer, None)


@quiet_libraries
def evaluate(
    target: str | Path,
    split: str = "test",
    data_file: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    echo=None,
) -> tuple[dict, list[dict]]:
    """Metrics and per-example predictions of a run or checkpoint on one split or a data file.

    Args:
        target: run directory, checkpoint directory, hub id or recipe file.
        split: the run recipe's split to use (train, validation, test) when no data_file is given.
        data_file: a local file with the task's columns, instead of the recipe's split.
        echo: receives a progress line every 30 s while the evaluation runs (e.g. `print`).

    Raises:
        UserError: unknown split, bad data, unloadable model.
    """
    loaded = load_run(target, overrides)
    recipe, task = loaded.recipe, loaded.task
    if data_file is not None:
        source, split = DataSource(path=str(Path(data_file).resolve())), "test"
    else:
        source = getattr(recipe.data, split, None) if split in ("train", "validation", "test") else None
        if source is None:
            raise UserError(
                f"--split {split}: the recipe has no data.{split}; choose another split or pass --data FILE"
            )
    spec = DataSpec(**{split: source}, columns=recipe.data.columns, drop_empty=recipe.data.drop_empty)
    splits = data.load_splits(spec, task.file_readers)
    task.prepare(splits, spec)
    max_length = models.effective_max_length(loaded.model.config, recipe.training.max_length)
    features = task.preprocess(splits[split], loaded.tokenizer, max_length)
    accelerator = new_accelerator(mixed_precision=mixed_precision(recipe.training.precision, evaluating=True))
    collate = PadCollator(loaded.tokenizer.pad_token_id, loaded.tokenizer.padding_side)
    loader = eval_loader(features, task, recipe.training, collate, accelerator)
    model = accelerator.prepare(loaded.model)
    label = "data" if data_file else split
    result = run_evaluation(model, loader, task, accelerator, splits[split], features, recipe.metrics, echo, label)
    del model, loaded, accelerator, loader  # nothing of the model outlives the call
    models.release_accelerator_memory()
    return result


@quiet_libraries
def predict(
    target: str | Path | LoadedRun, rows: list[dict] | list[str], overrides: list[str] | tuple[str, ...] = ()
) -> list[dict]:
    """Prediction rows for raw inputs: texts, or mappings of the task's predict fields (e.g. question and context)
    or of its data columns. Rows that carry references get them and the per-example metrics too.

    Raises:
        UserError: unloadable model, or an input the task needs is missing.
    """
    loaded = target if isinstance(target, LoadedRun) else load_run(target, overrides)
    task = loaded.task
    rows = [task.input_row(row, number) for number, row in enumerate(rows, 1)]
    max_length = models.effective_max_length(loaded.model.config, loaded.recipe.training.max_length)
    return task.predict(loaded.model, loaded.tokenizer, rows, max_length)
