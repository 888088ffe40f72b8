"""The recipe: the whole schema, YAML loading, `--set` overrides and validation messages.

The recipe's sections are pydantic models that reject unknown keys. The shared ones are `sections.py`'s;
the `task` section is any registered task's options (`llmtune/tasks/`), chosen by its `type`. A field's
description is its documentation: `llmtune init` and the README's recipe reference are written from them.
"""

from __future__ import annotations

import difflib
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from . import tasks
from .common.errors import UserError
from .sections import (  # noqa: F401 (the schema's sections, importable from here)
    SPLITS,
    BackTranslationAugment,
    Checkpointing,
    DataSource,
    DataSpec,
    Evaluation,
    FullMethod,
    IA3Method,
    LoraMethod,
    Method,
    ModelSpec,
    PrefixTuningMethod,
    Section,
    SynonymAugment,
    Training,
    WordAugment,
)

# The `task` section: one registered task's options, picked by `type`.
Task = Annotated[Union[tasks.option_classes()], Field(discriminator="type")]


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
        _check_size(root, path)
        raw = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise UserError(f"{where}: invalid YAML: {exc.problem or exc.context}") from None
    if raw is None:
        raise UserError(
            f"{path}: the recipe is empty; expected the sections model, task and data (llmtune init writes a "
            "starter recipe)"
        )
    if not isinstance(raw, dict):
        raise UserError(
            f"{path}:1:1: expected a mapping of sections (model, task, data, ...), got {type(raw).__name__}"
        )
    _check_duplicate_keys(root, path)

    base = path.resolve().parent
    for source in _data_sources(raw):
        resolve_paths(source, base)
    for method in _augment_methods(raw):
        method["lexicon"] = str((base / method["lexicon"]).resolve())
    raw.setdefault("output_dir", str(Path("runs") / path.stem))

    origins = {}
    for item in overrides:
        key, value = apply_override(raw, item)
        origins[key] = item
    for source_key, source in _data_sources(raw, with_keys=True):
        if any(key == source_key or key.startswith(source_key + ".") for key in origins):
            resolve_paths(source, Path.cwd())  # paths given on the command line are relative to where it runs

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
            lines.append(shortened(_describe(error, source, yaml_root, origins), 500))
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


def _augment_methods(raw: dict):
    """data.augment's entries that name a lexicon file (its path is relative to the recipe, as data paths are)."""
    data = raw.get("data")
    methods = data.get("augment") if isinstance(data, dict) else None
    for method in methods if isinstance(methods, list) else []:
        if isinstance(method, dict) and isinstance(method.get("lexicon"), str):
            yield method


def resolve_paths(source: dict, base: Path) -> None:
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


# More values than any recipe needs: YAML aliases can make a few hundred bytes expand to millions.
MAX_RECIPE_VALUES = 100_000


def _check_size(root: yaml.Node | None, path: Path) -> None:
    """Refuse a recipe whose aliases expand past MAX_RECIPE_VALUES values, or refer to themselves; counted on the
    node graph, where an alias is one shared node, without expanding anything.

    Raises:
        UserError: at the line of the alias that makes it too large.
    """
    sizes: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        if id(node) in sizes:
            if sizes[id(node)] < 0:
                mark = node.start_mark
                raise UserError(f"{path}:{mark.line + 1}:{mark.column + 1}: a YAML alias refers to itself")
            return sizes[id(node)]
        sizes[id(node)] = -1
        children = (
            node.value
            if isinstance(node, yaml.SequenceNode)
            else [part for pair in node.value for part in pair]
            if isinstance(node, yaml.MappingNode)
            else []
        )
        total = 1 + sum(size(child) for child in children)
        if total > MAX_RECIPE_VALUES:
            mark = node.start_mark
            raise UserError(
                f"{path}:{mark.line + 1}:{mark.column + 1}: the recipe's YAML aliases expand to more than "
                f"{MAX_RECIPE_VALUES:,} values; a recipe needs a few hundred"
            )
        sizes[id(node)] = total
        return total

    if root is not None:
        size(root)


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
        got = shortened(repr(error["input"].get("type")))
        return f"{where}: {dotted}.type: unknown value {got}; expected one of {expected}"
    if kind == "union_tag_not_found":
        return f"{where}: missing key '{dotted}.type'"
    message = error["msg"].removeprefix("Value error, ")
    got = error.get("input")
    if kind.endswith(("_type", "_parsing")) or kind in ("literal_error", "finite_number", "less_than_equal"):
        message = f"{message}; got {shortened(repr(got))}"
    return f"{where}: {dotted}: {message}" if dotted else f"{where}: {message}"


def shortened(text: str, limit: int = 80) -> str:
    """At most `limit` characters of a value quoted in a message (a recipe value can be arbitrarily large)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def union_members(section: str) -> dict[str, type[BaseModel]]:
    """The classes a `type`-tagged section (task, method) may hold, by tag: read off the schema,
    so new members count at once."""
    classes = section_classes(Recipe.model_fields[section].annotation)
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
    return yaml_location(loc, source, yaml_root)


def yaml_location(loc: tuple, source: str, yaml_root: yaml.Node | None) -> str:
    """`source:line:column` of the deepest key of `loc` found in a composed YAML document (else `source`)."""
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
        candidates = section_classes(field.annotation)
        if len(candidates) > 1 and parts:
            tag = parts.pop(0)
            candidates = [c for c in candidates if typing.get_args(c.model_fields["type"].annotation) == (tag,)]
        if not candidates:
            return []
        model = candidates[0]
    return list(model.model_fields)


def section_classes(annotation: Any) -> list[type[BaseModel]]:
    """The recipe section classes a field may hold (one, or each member of a union such as the task types)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [found for arg in typing.get_args(annotation) for found in section_classes(arg)]


def dump_recipe(recipe: Recipe) -> str:
    """The resolved recipe as YAML, the form saved in every run directory."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
