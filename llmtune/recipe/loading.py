"""Reading a recipe: YAML with its locations, `--set` overrides, data paths made absolute, and the resolved
recipe written back as YAML (the form every run directory keeps)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..common.errors import UserError
from ..data.schema import SPLITS
from .messages import validate
from .schema import Recipe


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


def dump_recipe(recipe: Recipe) -> str:
    """The resolved recipe as YAML, the form saved in every run directory."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
