"""llmtune: fine-tune BERT- and GPT-style checkpoints on NLP tasks from one YAML recipe.

Python API (mirrors the CLI, returns results instead of printing them)::

    from llmtune import load_recipe, train, evaluate, predict

    recipe = load_recipe("recipes/sentiment.yaml", ["method.type=lora"])
    result = train(recipe, output_dir="runs/sentiment-lora")
    metrics, predictions = evaluate(result.run_dir, split="test")
    predict(result.run_dir, ["A warm, funny film."])

Can the result be trusted (the CLI's validate, calibrate, audit and compare)::

    validate(recipe).leakage             # rows that validation or test share with an earlier split
    calibrate_run(result.run_dir)        # temperature scaling fitted on validation, stored in the run
    find_label_issues(result.run_dir)    # training rows most likely mislabeled (cleanlab, out-of-fold)
    significance([run_a, run_b], ["a", "b"])  # paired bootstrap of every metric's difference
"""

from __future__ import annotations

import importlib

# Where each public name lives (module, or module and its name there); imported on first use, so `llmtune --help`
# does not wait for torch.
_EXPORTS = {
    "Recipe": "recipe",
    "load_recipe": "recipe",
    "UserError": "common.errors",
    "TrainResult": "engine.training",
    "train": "engine.training",
    "evaluate": "inference.evaluation",
    "load_run": "inference.saved",
    "predict": "inference.prediction",
    "validate": ("engine.preparation", "prepare"),
    "calibrate_run": "commands.calibrate",
    "find_label_issues": ("commands.audit", "audit"),
    "significance": "reports.significance",
}
__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'llmtune' has no attribute {name!r}")
    module, attribute = _EXPORTS[name] if isinstance(_EXPORTS[name], tuple) else (_EXPORTS[name], name)
    return getattr(importlib.import_module(f".{module}", __name__), attribute)
