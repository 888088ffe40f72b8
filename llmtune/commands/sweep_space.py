"""A sweep's space file: recipe keys and their distributions, the objective and the pruner, each checked against
the recipe before any trial runs (a key the recipe does not have, or a value it refuses, is one located line)."""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..common.errors import UserError

DISTRIBUTIONS = ("log_uniform", "uniform", "int", "choice")


PRUNERS = ("median", "successive_halving", "none")


SPACE_KEYS = ("objective", "pruner", "seed", "parameters")


LOWER_IS_BETTER = ("cross_entropy", "perplexity", "mse", "mae")


@dataclass
class Space:
    metric: str
    direction: str  # maximize | minimize
    pruner: str
    seed: int
    parameters: dict[str, tuple[str, list]] = field(default_factory=dict)  # recipe key -> (distribution, args)


def load_space(path: Path, recipe_path: Path, overrides: list[str]) -> Space:
    """Read and check a space file against the recipe: every key must be a recipe key that accepts the values the
    distribution can draw, and the objective a validation metric of the recipe's task.

    Raises:
        UserError: the first problem, with the space file's line and column.
    """
    from ..recipe import load_recipe
    from ..recipe.messages import yaml_location

    root, raw = _read_yaml(path)
    where = lambda *keys: yaml_location(keys, str(path), root)  # noqa: E731
    if not isinstance(raw, dict):
        raise UserError(f"{path}:1:1: expected a mapping with {', '.join(SPACE_KEYS)}")
    for key in raw:
        if key not in SPACE_KEYS:
            raise UserError(f"{where(key)}: unknown key '{key}'; {_suggest(str(key), SPACE_KEYS)}")
    recipe = load_recipe(recipe_path, overrides)
    if recipe.data.validation is None:
        raise UserError(f"{recipe_path}: data.validation: a sweep needs a validation split to score its trials")
    metric, direction = _objective(raw.get("objective"), recipe, where)
    pruner = raw.get("pruner", "median")
    if pruner not in PRUNERS:
        raise UserError(f"{where('pruner')}: pruner: unknown value {pruner!r}; expected one of {', '.join(PRUNERS)}")
    seed = raw.get("seed", 42)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise UserError(f"{where('seed')}: seed: expected an integer, got {seed!r}")
    parameters = raw.get("parameters")
    if not isinstance(parameters, dict) or not parameters:
        raise UserError(f"{where('parameters')}: parameters: expected a mapping of recipe keys to distributions")
    space = Space(metric, direction, pruner, seed)
    for key, spec in parameters.items():
        space.parameters[str(key)] = _distribution(str(key), spec, where("parameters", key))
        for value in _extremes(*space.parameters[str(key)]):
            _check_key(recipe_path, overrides, str(key), value, where("parameters", key))
    return space


def _read_yaml(path: Path):
    try:
        text = Path(path).read_text(encoding="utf-8")
        return yaml.compose(text, Loader=yaml.SafeLoader), yaml.safe_load(text)
    except FileNotFoundError:
        raise UserError(f"{path}: space file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read the space file: {exc}") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise UserError(f"{where}: invalid YAML: {exc.problem or exc.context}") from None


def _suggest(word: str, options) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.5)
    return f"did you mean '{close[0]}'?" if close else f"expected one of {', '.join(options)}"


def _objective(raw, recipe, where) -> tuple[str, str]:
    if not isinstance(raw, dict) or "metric" not in raw:
        raise UserError(f"{where('objective')}: objective: expected {{metric: NAME, direction: maximize|minimize}}")
    metric = raw["metric"]
    available = recipe.task.available_metrics
    if metric not in available:
        raise UserError(
            f"{where('objective', 'metric')}: objective.metric: {metric!r} is not a metric of the "
            f"{recipe.task.type} task; {_suggest(str(metric), available)}"
        )
    direction = raw.get("direction", "minimize" if metric in LOWER_IS_BETTER else "maximize")
    if direction not in ("maximize", "minimize"):
        raise UserError(f"{where('objective', 'direction')}: objective.direction: expected maximize or minimize")
    unknown = set(raw) - {"metric", "direction"}
    if unknown:
        raise UserError(f"{where('objective')}: objective: unknown key '{sorted(unknown)[0]}'")
    return metric, direction


def _distribution(key: str, spec, where: str) -> tuple[str, list]:
    """(kind, arguments) of one parameter, checked."""
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
        if isinstance(spec, dict) and len(spec) == 1:
            name = str(next(iter(spec)))
            raise UserError(f"{where}: {key}: unknown distribution {name!r}; {_suggest(name, DISTRIBUTIONS)}")
        raise UserError(
            f"{where}: {key}: expected one of {{log_uniform: [LOW, HIGH]}}, {{uniform: [LOW, HIGH]}}, "
            f"{{int: [LOW, HIGH]}} or {{choice: [...]}}, got {spec!r}"
        )
    kind, args = next(iter(spec.items()))
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise UserError(f"{where}: {key}: choice needs a non-empty list of values")
        return kind, args
    numbers = isinstance(args, list) and len(args) == 2 and all(_is_number(a) for a in args)
    if not numbers or not args[0] < args[1]:
        raise UserError(f"{where}: {key}: {kind} needs [LOW, HIGH] with LOW < HIGH, got {args!r}")
    if kind == "int" and not all(isinstance(a, int) for a in args):
        raise UserError(f"{where}: {key}: int needs whole numbers, got {args!r}")
    if kind == "log_uniform" and args[0] <= 0:
        raise UserError(f"{where}: {key}: log_uniform needs LOW > 0, got {args[0]!r}")
    return kind, [float(a) for a in args] if kind != "int" else args


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _extremes(kind: str, args: list) -> list:
    return args if kind == "choice" else [args[0], args[1]]


def _check_key(recipe_path: Path, overrides: list[str], key: str, value, where: str) -> None:
    """The recipe accepts `key` = `value` (an unknown key, a wrong type or an out-of-range value is refused)."""
    from ..recipe import load_recipe

    item = f"{key}={json.dumps(value)}"
    try:
        load_recipe(recipe_path, [*overrides, item])
    except UserError as error:
        first = str(error).splitlines()[0].removeprefix(f"--set {item}: ")
        raise UserError(f"{where}: {first}") from None
