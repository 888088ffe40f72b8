"""llmtune: fine-tune BERT- and GPT-style checkpoints on NLP tasks from one YAML recipe.

Python API (mirrors the CLI, returns results instead of printing them)::

    from llmtune import load_recipe, train, evaluate, predict

    recipe = load_recipe("recipes/sentiment.yaml", ["method.type=lora"])
    result = train(recipe, output_dir="runs/sentiment-lora")
    metrics, predictions = evaluate(result.run_dir, split="test")
    predict(result.run_dir, ["A warm, funny film."])
"""

from .errors import UserError
from .inference import evaluate, load_run, predict
from .recipe import Recipe, load_recipe
from .train import TrainResult, train

__all__ = ["Recipe", "TrainResult", "UserError", "evaluate", "load_recipe", "load_run", "predict", "train"]
__version__ = "0.1.0"
