"""Classification metrics checked against references outside llmtune: scikit-learn on the saved predictions, and
a log-softmax of plain transformers' logits for the cross-entropy."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import RECIPES

from llmtune import load_recipe, train


def test_classification_metrics_match_sklearn_and_a_plain_log_softmax(minilm_path, tmp_path):
    from sklearn.metrics import accuracy_score, f1_score, log_loss
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    # A short run, so that the test split gets both labels predicted and some of them wrong.
    overrides = [f"model.name={minilm_path}", "data.train.max_samples=160", "training.epochs=1"]
    recipe = load_recipe(RECIPES / "sentiment.yaml", [*overrides, f"output_dir={tmp_path / 'run'}"])
    result = train(recipe, echo=lambda *a: None)
    test = result.metrics["test"]
    rows = [json.loads(line) for line in (result.run_dir / "predictions.jsonl").read_text().splitlines()]
    references, predicted = [row["reference"] for row in rows], [row["predicted"] for row in rows]
    assert len(rows) == test["num_examples"] == 200
    assert set(predicted) == {"negative", "positive"} and 0.5 < test["accuracy"] < 1, test

    assert test["accuracy"] == pytest.approx(accuracy_score(references, predicted), abs=1e-12)
    assert test["macro_f1"] == pytest.approx(f1_score(references, predicted, average="macro"), abs=1e-12)
    names = recipe.task.label_names
    probabilities = [[row["probabilities"][name] for name in names] for row in rows]
    assert test["cross_entropy"] == pytest.approx(log_loss(references, probabilities, labels=names), abs=1e-4)

    # The cross-entropy from the saved model's own logits: mean -log softmax(logits)[reference], natural log.
    tokenizer = AutoTokenizer.from_pretrained(result.run_dir)
    model = AutoModelForSequenceClassification.from_pretrained(result.run_dir).eval()
    texts = [row["inputs"]["text"] for row in rows]
    with torch.no_grad():
        batches = [
            tokenizer(texts[i : i + 50], padding=True, truncation=True, max_length=128, return_tensors="pt")
            for i in range(0, len(texts), 50)
        ]
        logits = torch.cat([model(**batch).logits for batch in batches])
    targets = torch.tensor([names.index(reference) for reference in references])
    nll = -logits.log_softmax(-1)[torch.arange(len(targets)), targets]
    assert test["cross_entropy"] == pytest.approx(nll.mean().item(), abs=1e-5)
