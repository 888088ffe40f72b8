"""The recipe: its whole schema, YAML loading with `--set` overrides, located messages, built-in recipes.

The schema (`schema.py`), reading a YAML file with `--set` overrides (`loading.py`), schema problems as one
located line each (`messages.py`), and the built-in and starter recipes (`starter.py`).
`from llmtune.recipe import load_recipe` is the way in; the sections are importable from here as well."""

from ..data.schema import SPLITS, BackTranslationAugment, DataSource, DataSpec, SynonymAugment, WordAugment
from ..models.schema import FullMethod, IA3Method, LoraMethod, Method, ModelSpec, PrefixTuningMethod
from .loading import apply_override, dump_recipe, load_recipe, resolve_paths
from .messages import shortened, validate
from .schema import Checkpointing, Evaluation, Recipe, Training, section_classes, union_members

__all__ = [
    "SPLITS",
    "BackTranslationAugment",
    "Checkpointing",
    "DataSource",
    "DataSpec",
    "Evaluation",
    "FullMethod",
    "IA3Method",
    "LoraMethod",
    "Method",
    "ModelSpec",
    "PrefixTuningMethod",
    "Recipe",
    "SynonymAugment",
    "Training",
    "WordAugment",
    "apply_override",
    "dump_recipe",
    "load_recipe",
    "resolve_paths",
    "section_classes",
    "shortened",
    "union_members",
    "validate",
]
