"""llmtune: fine-tune BERT- and GPT-style checkpoints on NLP tasks from one YAML recipe.

Python API (mirrors the CLI, returns results instead of printing them)::

    from llmtune import load_recipe, train, evaluate, predict

    recipe = load_recipe("recipes/sentiment.yaml", ["method.type=lora"])
    result = train(recipe, output_dir="runs/sentiment-lora")
    metrics, predictions = evaluate(result.run_dir, split="test")
    predict(result.run_dir, ["A warm, funny film."])
"""

from __future__ import annotations

import importlib

# Where each public name lives; imported on first use, so `llmtune --help` does not wait for torch.
_EXPORTS = {
    "Recipe": "recipe",
    "load_recipe": "recipe",
    "UserError": "errors",
    "TrainResult": "engine.training",
    "train": "engine.training",
    "evaluate": "deploy.inference",
    "load_run": "deploy.inference",
    "predict": "deploy.inference",
}
__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'llmtune' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
