"""The one road from a saved model to a ready one: a finished run directory, its ONNX export, a pushed run, a
plain checkpoint or a recipe's starting model becomes a model, tokenizer and task, set up as training left them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError
from safetensors import SafetensorError

from .. import models, tasks
from ..common import runs
from ..common.errors import UserError
from ..common.silence import peft_deprecations_silenced, quiet_libraries
from ..data import reading as data
from ..data.schema import DataSpec
from ..models.schema import ModelSpec
from ..recipe import Recipe, apply_override, load_recipe, validate
from ..tasks.base import Task


@dataclass
class LoadedRun:
    recipe: Recipe
    task: Task
    model: object
    tokenizer: object
    run_dir: Path | None  # None for a bare checkpoint or a recipe's starting model
    max_length: int  # training.max_length capped at the model's positions: where inputs are cut


@quiet_libraries
def load_run(target: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> LoadedRun:
    """The one road from a saved model to a ready one: a run directory (full model or adapter on its base), its
    ONNX export, a run pushed to the hub, a plain checkpoint, or a recipe file's starting model (before
    fine-tuning, to measure the zero-shot baseline) becomes a model, tokenizer and task, set up as training left
    them. `evaluate`, `predict`, `serve`, `export` and `merge` all load through it.

    Raises:
        UserError: not a run directory nor a loadable checkpoint.
    """
    source = locate(target)
    recipe, task, checkpoint = source.settle(overrides)
    model, tokenizer = source.load(recipe, task, checkpoint)
    task.setup(model.config, tokenizer)
    max_length = models.effective_max_length(model.config, recipe.training.max_length)
    return LoadedRun(recipe, task, model, tokenizer, source.run_dir, max_length)


def locate(target: str | Path) -> RunDirectory | RecipeFile | PlainCheckpoint:
    """Which kind of saved model `target` names. A hub id holding a run pushed with `llmtune push` is pulled
    first and loads like its run directory."""
    path = Path(target)
    if not path.is_dir() and models.is_hub_id(str(target)):
        path = models.pull_run(str(target)) or path
    if path.is_dir() and (path / runs.RECIPE_FILE).is_file():
        return RunDirectory(path)
    if path.is_file() and path.suffix in (".yaml", ".yml"):
        return RecipeFile(path)
    if path.is_dir() and not (path / "config.json").is_file() and not any(path.glob("*.gguf")):
        raise UserError(
            f"{path}: neither a run directory (no {runs.RECIPE_FILE}) nor a checkpoint directory (no config.json); "
            "expected a directory written by llmtune train, a Hugging Face checkpoint, or a hub id"
        )
    return PlainCheckpoint(str(target))


@dataclass
class RunDirectory:
    """A finished run (or its export): its recipe already holds what the task settled."""

    run_dir: Path

    def settle(self, overrides) -> tuple[Recipe, Task, models.Checkpoint]:
        """The run's recipe and task; its own files are the checkpoint."""
        if not (self.run_dir / runs.METRICS_FILE).is_file():
            raise UserError(f"{self.run_dir}: not a finished run (no {runs.METRICS_FILE}); did training stop early?")
        recipe = load_recipe(self.run_dir / runs.RECIPE_FILE, overrides)
        path = str(self.run_dir)
        return recipe, tasks.create(recipe.task), models.Checkpoint(path, path, "run directory")

    def load(self, recipe: Recipe, task: Task, checkpoint: models.Checkpoint) -> tuple[object, object]:
        """The tokenizer (the run's saved files, read without remote code as they always were) and the model:
        ONNX Runtime's for an export, the adapter on its base, or the fine-tuned weights."""
        tokenizer = models.load_tokenizer(checkpoint)
        return self._weights(recipe, task, checkpoint, tokenizer.pad_token_id), tokenizer

    def _weights(self, recipe: Recipe, task: Task, checkpoint: models.Checkpoint, pad_token_id):
        trust = recipe.model.trust_remote_code
        exported = models.onnx_file(self.run_dir)
        if exported is not None:  # `llmtune export`: ONNX Runtime runs the model
            config = models.load_config(checkpoint, trust)
            return models.load_onnx(exported, config, models.ONNX_OUTPUTS[task.auto_class])
        if not (self.run_dir / runs.ADAPTER_CONFIG).is_file():  # fully fine-tuned: its config holds the task's head
            return models.load_model(checkpoint, task.auto_class, trust, pad_token_id)[0]
        model = starting_model(recipe, task, models.resolve_checkpoint(recipe.model), pad_token_id)
        from peft import PeftModel

        try:
            with peft_deprecations_silenced():
                return PeftModel.from_pretrained(model, str(self.run_dir))
        except SafetensorError as error:
            raise models.damaged_weights(str(self.run_dir), error) from None


class StartingModel:
    """A model before fine-tuning: the checkpoint's own weights with the task's head (new where it has none)."""

    run_dir = None

    def load(self, recipe: Recipe, task: Task, checkpoint: models.Checkpoint) -> tuple[object, object]:
        """The checkpoint's tokenizer and its weights with the task's head."""
        tokenizer = models.load_tokenizer(checkpoint, recipe.model.trust_remote_code)
        return starting_model(recipe, task, checkpoint, tokenizer.pad_token_id), tokenizer


@dataclass
class RecipeFile(StartingModel):
    """A recipe's starting model (to measure the zero-shot baseline before training)."""

    path: Path

    def settle(self, overrides) -> tuple[Recipe, Task, models.Checkpoint]:
        """The recipe's task settled on its train split as training settles it (seeded as training is, so newly
        initialised weights are the ones training starts from); what it leaves open (label names) comes from the
        model's config."""
        from accelerate.utils import set_seed

        recipe = load_recipe(self.path, overrides)
        set_seed(recipe.training.seed)
        task = tasks.create(recipe.task)
        if recipe.data.train is not None:
            spec = DataSpec(train=recipe.data.train, columns=recipe.data.columns, drop_empty=recipe.data.drop_empty)
            task.prepare(data.load_splits(spec, task.file_readers), spec)
            recipe = recipe.model_copy(update={"task": task.resolved_options()})
        checkpoint = models.resolve_checkpoint(recipe.model)
        recipe = completed(recipe, models.load_config(checkpoint, recipe.model.trust_remote_code))
        return recipe, tasks.create(recipe.task), checkpoint


@dataclass
class PlainCheckpoint(StartingModel):
    """A checkpoint directory or hub id: its task is read off the config's architectures unless the overrides
    name it."""

    name: str

    def settle(self, overrides) -> tuple[Recipe, Task, models.Checkpoint]:
        raw: dict = {"model": {"name": self.name}, "task": {}, "data": {}, "output_dir": "."}
        for item in overrides:
            apply_override(raw, item)
        try:
            spec = ModelSpec.model_validate(raw["model"])
        except ValidationError as error:
            raise UserError(f"--set model: {error.errors()[0]['msg']}") from None
        checkpoint = models.resolve_checkpoint(spec)
        config = models.load_config(checkpoint, spec.trust_remote_code)
        if raw["task"].get("type") is None:
            raw["task"]["type"] = tasks.for_architectures(getattr(config, "architectures", None), self.name)
        recipe = completed(validate(raw, source="command line"), config)
        return recipe, tasks.create(recipe.task), checkpoint


def completed(recipe: Recipe, config) -> Recipe:
    """The recipe with what its task leaves to the model (label names) read off the checkpoint's config."""
    return recipe.model_copy(update={"task": tasks.from_model_config(recipe.task, config)})


def starting_model(recipe: Recipe, task: Task, checkpoint: models.Checkpoint, pad_token_id):
    """The checkpoint's weights with the task's head (new where the checkpoint has none), or an encoder-decoder
    warm-started from the recipe's encoder and decoder."""
    decoder = models.resolve_decoder(recipe.model)
    kwargs = task.model_kwargs()
    return models.load_model(
        checkpoint, task.auto_class, recipe.model.trust_remote_code, pad_token_id, decoder=decoder, **kwargs
    )[0]
