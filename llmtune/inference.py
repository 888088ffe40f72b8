"""Evaluate and predict with a finished run directory or any checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import data, hub, models, runs, tasks
from .errors import UserError
from .quiet import peft_deprecations_silenced, quiet_libraries
from .recipe import SEQ2SEQ_TASKS, DataSource, DataSpec, Recipe, apply_override, load_recipe, validate


@dataclass
class LoadedRun:
    recipe: Recipe
    task: object
    model: object
    tokenizer: object
    run_dir: Path | None  # None for a bare checkpoint


@quiet_libraries
def load_run(target: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> LoadedRun:
    """Load a run directory (full model or adapter on its base), a run pushed to the hub, a plain checkpoint,
    or a recipe file's starting model (before fine-tuning, to measure the zero-shot baseline).

    Raises:
        UserError: not a run directory nor a loadable checkpoint.
    """
    path = Path(target)
    if not path.is_dir() and hub.is_hub_id(str(target)):
        path = hub.pull_run(str(target)) or path  # a run pushed with `llmtune push` loads like its run directory
    if path.is_dir() and (path / runs.RECIPE_FILE).is_file():
        if not (path / runs.METRICS_FILE).is_file():
            raise UserError(f"{path}: not a finished run (no {runs.METRICS_FILE}); did training stop early?")
        recipe = load_recipe(path / runs.RECIPE_FILE, overrides)
        task = tasks.create(recipe.task)
        run_checkpoint = models.Checkpoint(str(path), str(path), "run directory")
        tokenizer = models.load_tokenizer(run_checkpoint)
        if (path / runs.ADAPTER_CONFIG).is_file():
            from peft import PeftModel

            base, _ = models.load_model(
                models.resolve_checkpoint(recipe.model),
                task.auto_class,
                recipe.model.trust_remote_code,
                tokenizer.pad_token_id,
                decoder=models.resolve_decoder(recipe.model),
                **task.model_kwargs(),
            )
            with peft_deprecations_silenced():
                model = PeftModel.from_pretrained(base, str(path))
        else:
            model, _ = models.load_model(
                run_checkpoint, task.auto_class, recipe.model.trust_remote_code, tokenizer.pad_token_id
            )
        task.setup(model.config, tokenizer)
        return LoadedRun(recipe, task, model, tokenizer, path)

    if path.is_file() and path.suffix in (".yaml", ".yml"):
        # A recipe: its starting model before any fine-tuning, the zero-shot / untrained baseline of a run
        # (seeded as training is, so newly initialised weights are the ones training starts from).
        from accelerate.utils import set_seed

        recipe = load_recipe(path, overrides)
        set_seed(recipe.training.seed)
    else:
        raw = {"model": {"name": str(target)}, "task": {"type": "classification"}, "data": {}, "output_dir": "."}
        for item in overrides:
            apply_override(raw, item)
        recipe = validate(raw, source="command line")
    checkpoint = models.resolve_checkpoint(recipe.model)
    task = tasks.create(recipe.task)
    if getattr(recipe.task, "label_names", True) is None and recipe.data.train is not None:
        task.prepare(data.load_splits(recipe.data), recipe.data)  # the labels a run of this recipe would train
    tokenizer = models.load_tokenizer(checkpoint, recipe.model.trust_remote_code)
    model, _ = models.load_model(
        checkpoint,
        task.auto_class,
        recipe.model.trust_remote_code,
        tokenizer.pad_token_id,
        decoder=models.resolve_decoder(recipe.model),
        **task.model_kwargs() if task.label_names else {},
    )
    if task.label_names is None:
        task.label_names = [model.config.id2label[i] for i in range(model.config.num_labels)]
        task.index_labels = True
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
        target: run directory, checkpoint directory or hub id.
        split: the run recipe's split to use (train, validation, test) when no data_file is given.
        data_file: a local file with the task's columns, instead of the recipe's split.
        echo: receives a progress line every 30 s while the evaluation runs (e.g. `print`).

    Raises:
        UserError: unknown split, bad data, unloadable model.
    """
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    from .batching import PadCollator
    from .train import eval_loader, run_evaluation

    loaded = load_run(target, overrides)
    recipe, task = loaded.recipe, loaded.task
    if data_file is not None:
        spec = DataSpec(
            test=DataSource(path=str(Path(data_file).resolve())),
            columns=recipe.data.columns,
            drop_empty=recipe.data.drop_empty,
        )
        split = "test"
    else:
        source = getattr(recipe.data, split, None) if split in ("train", "validation", "test") else None
        if source is None:
            raise UserError(
                f"--split {split}: the recipe has no data.{split}; choose another split or pass --data FILE"
            )
        spec = DataSpec(**{split: source}, columns=recipe.data.columns, drop_empty=recipe.data.drop_empty)
    splits = data.load_splits(spec)
    task.prepare(splits, spec)
    max_length = recipe.training.max_length
    features = task.preprocess(splits[split], loaded.tokenizer, max_length)
    accelerator = Accelerator(mixed_precision="no")
    collate = PadCollator(loaded.tokenizer.pad_token_id, loaded.tokenizer.padding_side)
    loader: DataLoader = eval_loader(features, task, recipe.training, collate, accelerator)
    model = accelerator.prepare(loaded.model)
    return run_evaluation(
        model, loader, task, accelerator, splits[split], features, recipe.metrics, echo, "data" if data_file else split
    )


@quiet_libraries
def predict(
    target: str | Path | LoadedRun, rows: list[dict] | list[str], overrides: list[str] | tuple[str, ...] = ()
) -> list[dict]:
    """Predictions for raw inputs: strings, or dicts with the task's input columns.

    Raises:
        UserError: unloadable model, or rows missing the task's input columns.
    """
    loaded = target if isinstance(target, LoadedRun) else load_run(target, overrides)
    options = loaded.recipe.task
    if options.type == "classification":
        rows = [{options.text_column: row} if isinstance(row, str) else row for row in rows]
        needed = [c for c in (options.text_column, options.text_pair_column) if c]
    elif options.type in SEQ2SEQ_TASKS:
        rows = [loaded.task.row_from_text(row) if isinstance(row, str) else row for row in rows]
        needed = []  # the task finds the source itself: a column, or a language inside a nested translation column
    else:
        rows = [
            {options.question_column: row["question"], options.context_column: row["context"]}
            if set(row) == {"question", "context"}
            else row
            for row in rows
        ]
        needed = [options.question_column, options.context_column]
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise UserError(f"input row {number}: expected a mapping with columns {needed}, got {type(row).__name__}")
        for column in needed:
            if not isinstance(row.get(column), str):
                raise UserError(f"input row {number}: missing text column '{column}'; expected columns {needed}")
    return loaded.task.predict(loaded.model, loaded.tokenizer, rows, loaded.recipe.training.max_length)
