"""Writes quickstart.ipynb (run: python notebooks/make_quickstart.py). Edit the cells here, not in the notebook."""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

cells = [
    new_markdown_cell(
        "# llmtune quickstart\n\nFine-tune MiniLM with LoRA on the small review set of `recipes/sentiment.yaml` "
        "through the Python API, look at the curves, evaluate on the test split and label new sentences. "
        "Runs offline on a CPU in a minute or two."
    ),
    new_code_cell(
        "import tempfile\nfrom pathlib import Path\n\nfrom IPython.display import Image, display\n\n"
        "from llmtune import evaluate, load_recipe, predict, train"
    ),
    new_markdown_cell(
        "Load the built-in recipe and override a few keys, as `--set` does on the command line: LoRA adapters "
        "instead of full fine-tuning, the first 320 training reviews for two epochs, "
        "and a validation pass every 10 steps for the curves."
    ),
    new_code_cell(
        'recipe = load_recipe(Path("..") / "recipes" / "sentiment.yaml", [\n'
        '    "method.type=lora", "training.learning_rate=5e-4", "training.epochs=2", "training.max_length=64",\n'
        '    "data.train.max_samples=320", "data.validation.max_samples=100", "evaluation.every_n_steps=10",\n])\n'
        "recipe.method"
    ),
    new_markdown_cell(
        "Train. `train` returns the metrics and prints nothing unless given `echo=print`. "
        "The run goes to a scratch directory here; pass your own `output_dir` to keep it."
    ),
    new_code_cell(
        'result = train(recipe, output_dir=Path(tempfile.mkdtemp()) / "sentiment-lora")\nresult.metrics["validation"]'
    ),
    new_markdown_cell(
        "The run directory holds the plots: training and validation loss, validation accuracy, "
        "and the confusion matrix on the test split."
    ),
    new_code_cell(
        'display(Image(filename=result.run_dir / "loss.png"))\n'
        'display(Image(filename=result.run_dir / "metric.png"))\n'
        'display(Image(filename=result.run_dir / "confusion_matrix.png"))'
    ),
    new_markdown_cell(
        "Evaluate the saved run on the test split (the same numbers as `llmtune eval RUN_DIR --split test`)."
    ),
    new_code_cell(
        'metrics, predictions = evaluate(result.run_dir, split="test")\n'
        "print({name: round(value, 4) for name, value in metrics.items()})\n"
        'mistakes = [row for row in predictions if row["reference"] != row["predicted"]]\n'
        'print(f"{len(mistakes)} of {len(predictions)} test reviews misclassified")'
    ),
    new_markdown_cell("Label new sentences."),
    new_code_cell(
        'for row in predict(result.run_dir, ["A warm, funny and clever film.", "Cold food and a rude waiter.", '
        '"I would not recommend it to anyone."]):\n'
        "    print(f\"{row['predicted']:>8}  {row['score']:.3f}  {row['inputs']['text']}\")"
    ),
    new_markdown_cell(
        "Next: `llmtune report RUN_DIR` writes an HTML page with all of this, and "
        "`llmtune compare RUN_A RUN_B` puts runs side by side."
    ),
]
notebook = new_notebook(
    cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
)
nbformat.write(notebook, Path(__file__).with_name("quickstart.ipynb"))
