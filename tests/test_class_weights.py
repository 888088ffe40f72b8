"""Class weights for single-label classification (task.class_weights): `balanced` as scikit-learn computes it,
explicit weights by label name, the weights reaching the training loss, the run's recipe keeping them, and bad
weights refused in one line."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import write_recipe
from test_bad_input import assert_user_error

from llmtune import load_recipe, train
from llmtune.common.errors import Notice

# Six negative reviews for every two positive ones.
REVIEWS = [("dull and far too long", "negative")] * 6 + [("a wonderful, moving film", "positive")] * 2


def write_imbalanced(folder, rows=REVIEWS) -> dict:
    files = {}
    for split in ("train", "validation", "test"):
        files[split] = folder / f"{split}.csv"
        files[split].write_text("text,label\n" + "".join(f'"{text}",{label}\n' for text, label in rows))
    return files


def prepared_task(recipe_path, *overrides: str):
    from llmtune import tasks
    from llmtune.data.reading import load_splits

    recipe = load_recipe(recipe_path, list(overrides))
    task = tasks.create(recipe.task)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        task.prepare(load_splits(recipe.data), recipe.data)
    return task, [str(w.message) for w in caught if issubclass(w.category, Notice)]


def test_balanced_weights_are_scikit_learns_and_said_once(tiny_bert, tmp_path):
    from sklearn.utils.class_weight import compute_class_weight

    recipe = write_recipe(tmp_path / "r.yaml", tiny_bert, write_imbalanced(tmp_path))
    task, notices = prepared_task(recipe, "task.class_weights=balanced")
    labels = [label for _, label in REVIEWS]
    expected = compute_class_weight("balanced", classes=np.array(["negative", "positive"]), y=labels)
    assert task.label_names == ["negative", "positive"]
    assert list(task.resolved_options().class_weights.values()) == pytest.approx(list(expected), abs=1e-6)
    assert [n for n in notices if "class_weights" in n] == [
        "task.class_weights: the training loss weighs 'negative': 0.666667, 'positive': 2 (balanced on the train split)"
    ]


def test_a_mapping_names_labels_and_the_rest_weigh_one(tiny_bert, tmp_path):
    files = write_imbalanced(tmp_path, [("dull", 0), ("fine", 1), ("great", 2)])
    recipe = write_recipe(tmp_path / "r.yaml", tiny_bert, files)
    task, _ = prepared_task(recipe, "task.class_weights={2: 3.5}")  # YAML reads the label as an integer key
    assert task.resolved_options().class_weights == {"0": 1.0, "1": 1.0, "2": 3.5}


def fixed_logits_model(logits: torch.Tensor):
    return lambda **inputs: SimpleNamespace(logits=logits)


def test_the_weights_reach_the_training_loss():
    from llmtune.tasks.classification import Classification, ClassificationOptions

    options = ClassificationOptions(
        type="classification", label_names=["negative", "positive"], class_weights={"positive": 4.0}
    )
    task = Classification(options)
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.2], [-0.3, 1.0]])
    batch = {
        "input_ids": torch.zeros(3, 2, dtype=torch.long),
        "index": torch.arange(3),
        "labels": torch.tensor([0, 1, 1]),
    }
    weighted = F.cross_entropy(logits, batch["labels"], weight=torch.tensor([1.0, 4.0]))
    assert task.loss(fixed_logits_model(logits), batch) == pytest.approx(weighted.item())
    assert weighted.item() != pytest.approx(F.cross_entropy(logits, batch["labels"]).item())
    # Validation cross-entropy stays the plain one, comparable between weighted and unweighted runs.
    outputs = task.eval_step(fixed_logits_model(logits), batch)
    assert outputs["loss"].mean() == pytest.approx(F.cross_entropy(logits, batch["labels"]).item())


def test_the_runs_recipe_keeps_the_weights_it_trained_with(tiny_bert, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_bert, write_imbalanced(tmp_path))
    with pytest.warns(Notice, match="task.class_weights: the training loss weighs"):
        run = train(load_recipe(recipe, ["task.class_weights=balanced"]), echo=lambda *a: None).run_dir
    saved = load_recipe(run / "recipe.yaml").task
    assert saved.class_weights == {"negative": pytest.approx(0.666667), "positive": 2.0}


@pytest.mark.parametrize(
    ("weights", "fragment"),
    [
        ("{positive: 2, neutral: 3}", "task.class_weights: label 'neutral' is not among the label names"),
        ("{positive: -1}", "task.class_weights: the weight of label 'positive' is -1; expected a positive number"),
        ("heavy", "task.class_weights: expected `balanced` or a mapping {label: weight}, got 'heavy'"),
    ],
    ids=["unknown-label", "negative-weight", "unknown-word"],
)
def test_bad_weights_are_one_line(weights, fragment, cli, tiny_bert, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_bert, write_imbalanced(tmp_path))
    assert_user_error(cli("validate", recipe, "--set", f"task.class_weights={weights}"), fragment)
