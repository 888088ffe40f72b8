"""The README's recipe reference is a valid recipe and documents every key of the schema."""

from __future__ import annotations

import re

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


def test_recipe_reference_documents_every_key():
    text = readme_block("recipe-reference")
    sections = [
        schema.Recipe,
        schema.ModelSpec,
        *tasks.option_classes(),  # every registered task's section
        schema.DataSpec,
        schema.DataSource,
        schema.LoraMethod,
        schema.IA3Method,
        schema.PrefixTuningMethod,
        schema.Training,
        schema.Evaluation,
        schema.Checkpointing,
    ]
    missing = [
        f"{cls.__name__}.{name}" for cls in sections for name in cls.model_fields if not re.search(rf"\b{name}\b", text)
    ]
    assert not missing, f"README recipe reference lacks: {missing}"


def test_ci_runs_the_readme_commands():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "readme_block install" in ci and "readme_block test" in ci
    assert "pip install" in readme_block("ci:install") and "pytest" in readme_block("ci:test")
