"""Classification metrics: accuracy and macro-F1, as scikit-learn computes them."""

from __future__ import annotations

from sklearn.metrics import accuracy_score, f1_score


def accuracy(predictions: list[int], references: list[int]) -> float:
    """The share of predicted class ids equal to the reference's."""
    return float(accuracy_score(references, predictions))


def macro_f1(predictions: list[int], references: list[int], labels: list[int]) -> float:
    """The unweighted mean of the per-class F1 over `labels` (every class the task has, seen or not), a class
    never predicted nor present scoring 0."""
    return float(f1_score(references, predictions, labels=labels, average="macro", zero_division=0))
