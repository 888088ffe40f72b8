"""Schema problems as the one line a user fixes: the recipe file's line and column (or the `--set` that gave
the value), the key, what was wrong, and the closest valid key."""

from __future__ import annotations

import difflib
import typing
from typing import Any

import yaml
from pydantic import ValidationError

from ..common.errors import UserError
from .schema import Recipe, section_classes, union_members


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
