"""Built-in recipes (`llmtune recipes`) and starter recipes written from the schema (`llmtune init`).

The starter recipe is generated from the schema's field descriptions and defaults, so it cannot drift
from what `llmtune validate` accepts.
"""

from __future__ import annotations

import typing
from pathlib import Path

import yaml

from .. import recipe as schema
from ..common.errors import UserError

# The repository's recipes folder; an editable install imports llmtune from the repository.
RECIPES_DIR = Path(__file__).resolve().parents[2] / "recipes"
DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def builtin_recipes(directory: Path = RECIPES_DIR) -> list[tuple[Path, str]]:
    """Each built-in recipe with its one-line summary: the first sentence of its leading comment.

    Raises:
        UserError: the recipes folder is not there (a non-editable install).
    """
    if not directory.is_dir():
        raise UserError(
            f"no built-in recipes folder at {directory}; install llmtune from its repository with pip install -e ."
        )
    found = []
    for path in sorted(directory.glob("*.yaml")):
        comment = []
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.startswith("#"):
                break
            comment.append(line.lstrip("#").strip())
        text = " ".join(comment)
        summary = text.split(". ", 1)[0].rstrip(".") + "." if text else "(no description)"
        found.append((path, summary))
    return found


def _value(value) -> str:
    """A default as inline YAML."""
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).removesuffix("\n").removesuffix("\n...").strip()


def field_default(field):
    """A schema field's default value (None for a required field), as the starter recipe and the UI show it."""
    if field.default_factory is not None:
        return field.default_factory()
    return None if field.is_required() else field.default


def _fields(
    section, indent: str, values: dict | None = None, commented: bool = False, prefix_note: str = ""
) -> list[str]:
    """`key: default  # description` lines for every field of a section."""
    values = values or {}
    mark = "# " if commented else ""
    return [
        f"{indent}{mark}{name}: {_value(values.get(name, _example(field)))}"
        f"  # {prefix_note}{field.description}{_choices(field)}"
        for name, field in section.model_fields.items()
    ]


def _example(field):
    """The default, or for a required field its documented example (so the starter recipe validates)."""
    return field.examples[0] if field.is_required() and field.examples else field_default(field)


def _choices(field) -> str:
    if typing.get_origin(field.annotation) is typing.Literal and len(typing.get_args(field.annotation)) > 1:
        return " One of: " + ", ".join(map(str, typing.get_args(field.annotation))) + "."
    return ""


def task_sections() -> dict[str, type]:
    """Task name -> its recipe section class, from the schema's `task` field."""
    return schema.union_members("task")


def starter_recipe(task: str, model: str = DEFAULT_MODEL, output_dir: str | None = None) -> str:
    """A recipe with every key, its default and its description, ready for `llmtune validate`.

    Raises:
        UserError: unknown task.
    """
    tasks = task_sections()
    if task not in tasks:
        raise UserError(f"TASK {task}: unknown task; expected one of {', '.join(tasks)}")
    fields = schema.Recipe.model_fields
    lines = [
        f"# Starter {task} recipe: every key with its default and what it does; delete what you do not need.",
        "# Check it with `llmtune validate FILE`, then train with `llmtune train FILE`.",
        "",
        f"model:  # {schema.ModelSpec.__doc__}",
        *_fields(schema.ModelSpec, "  ", {"name": model}),
        "",
        f"task:  # {tasks[task].__doc__}",
        *_fields(tasks[task], "  ", {"type": task}),
        "",
        f"data:  # {schema.DataSpec.__doc__}",
    ]
    lines += _data_lines()
    lines += _method_lines(fields)
    lines += [
        "",
        f"training:  # {schema.Training.__doc__}",
        *_fields(schema.Training, "  "),
        "",
        f"evaluation:  # {schema.Evaluation.__doc__}",
        *_fields(schema.Evaluation, "  "),
        "",
        f"checkpointing:  # {schema.Checkpointing.__doc__}",
        *_fields(schema.Checkpointing, "  "),
        "",
        f"tracking: []  # {fields['tracking'].description}",
        f"output_dir: {output_dir or 'runs/' + task}  # {fields['output_dir'].description}",
        "",
    ]
    return "\n".join(lines)


def _data_lines() -> list[str]:
    """The data section's keys after its comment line: the train source's keys, then the other splits'."""
    lines = []
    data_fields = schema.DataSpec.model_fields
    lines.append(f"  train:  # {data_fields['train'].description}")
    for name, field in schema.DataSource.model_fields.items():
        if name in (
            "parallel",
            "hub",
            "config",
            "split",
            "revision",
        ):  # other sources' keys: shown, but a local path is the default
            lines.append(f"    # {name}: null  # instead of path: {field.description}")
        else:
            value = _value("data/train.csv" if name == "path" else field_default(field))
            lines.append(f"    {name}: {value}  # {field.description}")
    for split in ("validation", "test"):
        lines.append(f"  {split}: data/{split}.csv  # {data_fields[split].description}")
    for name, field in data_fields.items():  # columns, drop_empty, augment, the leakage audit's keys ...
        if name not in ("train", "validation", "test"):
            lines.append(f"  {name}: {_value(field_default(field))}  # {field.description}{_choices(field)}")
    return lines


def _method_lines(fields) -> list[str]:
    """The method section: full fine-tuning, and every other method's keys commented out."""
    lines = []
    methods = schema.union_members("method").values()
    lines += [
        "",
        f"method:  # {fields['method'].description}",
        f"  type: full  # {schema.FullMethod.model_fields['type'].description}",
    ]
    for method in methods:
        kind = typing.get_args(method.model_fields["type"].annotation)[0]
        other = {n: f for n, f in method.model_fields.items() if n != "type"}
        for name, field in other.items():
            lines.append(f"  # {name}: {_value(field_default(field))}  # with type {kind}: {field.description}")
    return lines
