"""The New-run form, read off the recipe schema: one field per recipe key, in the schema's sections, with its type,
its allowed values and its description as help. Nothing here names a recipe key (except the few that hold paths,
which must stay inside the workspace), so a key added to the schema appears in the form on its own.

A form's values become a recipe mapping (`to_raw`) that `llmtune.recipe.validate` checks, and its one-line
messages are sorted to the fields they name (`check`).
"""

from __future__ import annotations

import copy
import typing
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import yaml

from .. import recipe as schema
from ..common.errors import UserError
from ..recipe import shortened
from ..recipe.starter import field_default

SOURCE = "form"  # where validate's messages say the problem is
MISSING = object()


@dataclass(frozen=True)
class FormField:
    """One recipe key as a form field."""

    section: str  # model, task, data, ...; "" for a top-level key (output_dir, tracking)
    name: str
    member: str | None  # the task / method type whose key this is; None for keys every recipe has
    kind: str  # choice (one of), multi (some of), flag (true/false) or text (a YAML value)
    choices: tuple
    default: Any
    description: str
    required: bool
    literal: bool = False  # a text key (str): what is typed is the value, not YAML (prompt templates keep their lines)

    @property
    def key(self) -> str:
        """The dotted key validate's messages name (without the union member, as they do)."""
        return f"{self.section}.{self.name}" if self.section else self.name

    @property
    def ident(self) -> str:
        """A unique element id for the page (and the browser tests)."""
        return "field-" + self.key.replace(".", "-").replace("_", "-") + (f"--{self.member}" if self.member else "")

    @property
    def is_type(self) -> bool:
        """The `type` key that picks a union member (task.type, method.type)."""
        return self.name == "type" and self.member is None and bool(self.section)

    def help(self) -> str:
        return self.description + (" Required." if self.required else "")


def _literal_choices(annotation) -> tuple:
    """The allowed values of a Literal (or optional Literal) annotation."""
    if typing.get_origin(annotation) is typing.Literal:
        return typing.get_args(annotation)
    for arg in typing.get_args(annotation):
        if typing.get_origin(arg) is typing.Literal:
            return typing.get_args(arg)
    return ()


def _leaf(section: str, name: str, field, member: str | None) -> FormField:
    annotation = field.annotation
    choices, kind = _literal_choices(annotation), "text"
    if typing.get_origin(annotation) is list and _literal_choices(typing.get_args(annotation)[0]):
        choices, kind = _literal_choices(typing.get_args(annotation)[0]), "multi"
    elif len(choices) > 1:
        kind = "choice"
    elif annotation is bool:
        kind = "flag"
    literal = kind == "text" and annotation in (str, str | None)
    default = field_default(field)
    return FormField(
        section, name, member, kind, tuple(choices), default, field.description or "", field.is_required(), literal
    )


def schema_fields() -> list[FormField]:
    """Every recipe key as a form field, in the schema's order; a union section (task, method) has its `type`
    first, then each member's keys."""
    fields = []
    for section, field in schema.Recipe.model_fields.items():
        classes = schema.section_classes(field.annotation)
        if len(classes) > 1:  # task / method: one member's keys apply, picked by type
            members = schema.union_members(section)
            default = field_default(field)
            fallback = default.type if default is not None else next(iter(members))
            docs = "; ".join(f"{tag}: {cls.__doc__.strip().splitlines()[0]}" for tag, cls in members.items())
            fields.append(FormField(section, "type", None, "choice", tuple(members), fallback, docs, True))
            for tag, cls in members.items():
                fields += [_leaf(section, name, sub, tag) for name, sub in cls.model_fields.items() if name != "type"]
        elif len(classes) == 1 and field.annotation is classes[0]:
            fields += [_leaf(section, name, sub, None) for name, sub in classes[0].model_fields.items()]
        else:
            fields.append(_leaf("", section, field, None))
    return fields


def section_titles() -> dict[str, str]:
    """Section name -> the first line of its docstring (the form's section headings)."""
    titles = {}
    for section, field in schema.Recipe.model_fields.items():
        classes = schema.section_classes(field.annotation)
        if len(classes) == 1 and field.annotation is classes[0]:
            titles[section] = (classes[0].__doc__ or "").strip().splitlines()[0]
        elif len(classes) > 1:
            titles[section] = field.description or f"The {section}: pick its type, then its keys."
    titles[""] = "Run"
    return titles


# --------------------------------------------------------------------------- values <-> recipe mapping


def _parse(field: FormField, value):
    """A field's value as it goes into the recipe, or MISSING to leave the key to its default."""
    if field.kind == "text":
        if value is None or not str(value).strip():
            return MISSING
        if field.literal:
            return str(value)
        try:
            return yaml.safe_load(str(value))
        except yaml.YAMLError:
            return str(value)  # not YAML: the text itself, which validate then judges
    if field.kind == "choice":
        if value in (None, ""):
            return MISSING
        return value if (field.is_type or value != field.default) else MISSING
    if field.kind == "multi":
        return list(value or []) if list(value or []) != list(field.default or []) else MISSING
    return bool(value) if bool(value) != bool(field.default) else MISSING


def to_raw(fields: list[FormField], values: list) -> dict:
    """The recipe mapping the form's values say (keys left empty or at their default are left out)."""
    chosen = {field.section: value for field, value in zip(fields, values) if field.is_type}
    raw: dict = {}
    for field, value in zip(fields, values):
        if field.member is not None and chosen.get(field.section) != field.member:
            continue
        parsed = _parse(field, value)
        if parsed is MISSING:
            continue
        if field.section:
            raw.setdefault(field.section, {})[field.name] = parsed
        else:
            raw[field.name] = parsed
    for section in ("model", "task", "data"):  # required sections: present, so a missing key is named in full
        raw.setdefault(section, {})
    return raw


def _shown(value) -> str:
    if isinstance(value, str):
        return value
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).removesuffix("\n").removesuffix("\n...")


def from_raw(fields: list[FormField], raw: dict) -> list:
    """The form's values for a recipe mapping (keys it does not set show their defaults)."""
    values = []
    for field in fields:
        holder = raw.get(field.section) if field.section else raw
        holder = holder if isinstance(holder, dict) else {}
        if field.member is not None and holder.get("type") != field.member:
            holder = {}
        present = field.name in holder
        value = holder.get(field.name)
        if field.kind == "text":
            shown = value if field.literal and isinstance(value, str) else _shown(value)
            values.append(shown if present and value is not None else "")
        elif field.kind == "choice":
            values.append(value if present and value in field.choices else field.default)
        elif field.kind == "multi":
            values.append([v for v in value if v in field.choices] if present and isinstance(value, list) else [])
        else:
            values.append(bool(value) if present else bool(field.default))
    return values


def read_yaml(text: str, name: str) -> dict:
    """A recipe file's mapping, as load_recipe reads it.

    Raises:
        UserError: not YAML, or not a mapping.
    """
    try:
        raw = yaml.safe_load(text)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"{name}:{mark.line + 1}:{mark.column + 1}" if mark else name
        raise UserError(f"{where}: invalid YAML: {error.problem or error.context}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{name}:1:1: expected a mapping of sections (model, task, data, ...)")
    return raw


def dump(raw: dict) -> str:
    return yaml.safe_dump(raw, sort_keys=False, allow_unicode=True)


# --------------------------------------------------------------------------- checks


def _outside(value) -> bool:
    """Whether a path from the browser leaves the workspace: absolute, home-relative or climbing with `..`."""
    if not isinstance(value, str):
        return False
    posix, windows = PurePosixPath(value), PureWindowsPath(value)
    return posix.is_absolute() or windows.is_absolute() or value.startswith("~") or ".." in posix.parts + windows.parts


def path_values(raw: dict):
    """(dotted key, value) of every recipe value that names a file or folder to read or write."""
    model = raw.get("model") if isinstance(raw.get("model"), dict) else {}
    for name in ("name", "decoder", "gguf_file"):
        yield f"model.{name}", model.get(name)
    data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
    for split in schema.SPLITS:
        source = data.get(split)
        yield f"data.{split}", source if isinstance(source, str) else None
        source = source if isinstance(source, dict) else {}
        yield f"data.{split}.path", source.get("path")
        for column, file in (source.get("parallel") if isinstance(source.get("parallel"), dict) else {}).items():
            yield f"data.{split}.parallel.{column}", file
    augment = data.get("augment") if isinstance(data.get("augment"), list) else []
    for number, method in enumerate(augment):
        if isinstance(method, dict):
            yield f"data.augment.{number}.lexicon", method.get("lexicon")
    yield "output_dir", raw.get("output_dir")


def path_problems(raw: dict) -> list[str]:
    """One line per path that would leave the workspace."""
    return [
        f"{SOURCE}: {key}: paths from the browser stay inside the workspace (relative, no '..'); "
        f"got {shortened(repr(value))}"
        for key, value in path_values(raw)
        if _outside(value)
    ]


def problems(raw: dict) -> list[str]:
    """Every problem of a recipe mapping, as `llmtune validate` words it (schema only: files are not read)."""
    lines = path_problems(raw)
    try:
        schema.validate(copy.deepcopy(raw), source=SOURCE)
    except UserError as error:
        lines += str(error).splitlines()
    return lines


def field_of(line: str, keys: list[str]) -> str | None:
    """The form key a message is about: the longest key it names (`data.train` for `data.train.path: ...`)."""
    for key in sorted(keys, key=len, reverse=True):
        if any(f"{before}{key}{after}" in line for before in (" ", "'") for after in (":", "'", ".", ";")):
            return key
    return None


def check(fields: list[FormField], values: list) -> tuple[dict, list[str], dict[str, list[str]]]:
    """The recipe mapping of the form, its problems, and those problems by the key they name."""
    raw = to_raw(fields, values)
    lines = problems(raw)
    keys = list(dict.fromkeys(field.key for field in fields))
    by_key: dict[str, list[str]] = {}
    for line in lines:
        by_key.setdefault(field_of(line, keys) or "", []).append(line)
    return raw, lines, by_key


def for_run(raw: dict, workspace: Path) -> dict:
    """The mapping written for `llmtune train`: data paths made absolute from the workspace, since the recipe file
    is kept outside the folders it names."""
    resolved = copy.deepcopy(raw)
    data = resolved.get("data") if isinstance(resolved.get("data"), dict) else {}
    for split in schema.SPLITS:
        if isinstance(data.get(split), str):
            data[split] = {"path": data[split]}
        source = data.get(split)
        if isinstance(source, dict):
            schema.resolve_paths(source, workspace)
    for method in data.get("augment") or []:
        if isinstance(method, dict) and isinstance(method.get("lexicon"), str):
            method["lexicon"] = str((workspace / method["lexicon"]).resolve())
    return resolved
