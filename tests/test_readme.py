"""The README's recipe reference is a valid recipe and documents every key of the schema."""

from __future__ import annotations

import re
from typing import get_args

import yaml
from conftest import ROOT

from llmtune import recipe as schema
from llmtune import tasks


def readme_block(marker: str) -> str:
    text = (ROOT / "README.md").read_text()
    after = text.split(f"<!-- {marker} -->", 1)[1]
    return re.search(r"```\w*\n(.*?)```", after, re.S).group(1)


def test_recipe_reference_is_a_valid_recipe():
    raw = yaml.safe_load(readme_block("recipe-reference"))
    recipe = schema.validate(raw)
    assert recipe.method.type == "lora"


def comment_text(block: str, section: str) -> str:
    """The comment lines inside one top-level section of the YAML block, without their leading '#'."""
    body = block.split(f"\n{section}:", 1)[1]
    body = re.split(r"\n(?=\w)", body, maxsplit=1)[0]  # up to the next top-level key
    return "\n".join(line.split("#", 1)[1] for line in body.splitlines() if line.lstrip().startswith("#"))


def test_recipe_reference_documents_every_key():
    """Each key is a line of the YAML in its own section, or, for the variants the example does not use (other
    task types, other methods), a word in the comments that describe that variant."""
    text = readme_block("recipe-reference")
    raw = yaml.safe_load(text)
    as_yaml = {
        schema.Recipe: raw,
        schema.ModelSpec: raw["model"],
        schema.DataSpec: raw["data"],
        schema.DataSource: raw["data"]["train"],
        schema.LoraMethod: raw["method"],
        schema.Training: raw["training"],
        schema.Evaluation: raw["evaluation"],
        schema.Checkpointing: raw["checkpointing"],
    }
    missing = [
        f"{cls.__name__}.{name}" for cls, section in as_yaml.items() for name in cls.model_fields if name not in section
    ]

    task_comments = comment_text(text, "task")
    paragraphs = re.split(r"\n(?= type: )", task_comments)  # one per "# type: X takes ..." paragraph
    for cls in tasks.option_classes():
        (task_type,) = get_args(cls.model_fields["type"].annotation)
        if task_type == raw["task"]["type"]:
            missing += [f"{cls.__name__}.{name}" for name in cls.model_fields if name not in raw["task"]]
            continue
        paragraph = next((p for p in paragraphs if re.search(rf"\btype: {task_type}\b", p)), "")
        missing += [f"{cls.__name__}.{name}" for name in cls.model_fields if not re.search(rf"\b{name}\b", paragraph)]
    method_comments = comment_text(text, "method")
    for cls in (schema.FullMethod, schema.IA3Method, schema.PrefixTuningMethod):
        missing += [
            f"{cls.__name__}.{name}"
            for name in cls.model_fields
            if name not in raw["method"] and not re.search(rf"\b{name}\b", method_comments)
        ]
    data_comments = comment_text(text, "data")
    for cls in (schema.WordAugment, schema.SynonymAugment, schema.BackTranslationAugment):
        undocumented = [name for name in cls.model_fields if not re.search(rf"\b{name}\b", data_comments)]
        missing += [f"{cls.__name__}.{name}" for name in undocumented]
    assert not missing, f"README recipe reference lacks: {missing}"


def test_ci_runs_the_readme_commands():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "readme_block install" in ci and "readme_block test" in ci
    assert "pip install" in readme_block("ci:install") and "pytest" in readme_block("ci:test")
