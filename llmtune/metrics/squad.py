"""SQuAD v1.1 exact match and F1, as the official evaluation script (evaluate-v1.1.py) defines them.

Answers are normalised (lower case, punctuation and the articles a/an/the removed, white space
collapsed); each prediction scores the maximum over its gold answers; results are percentages.
"""

from __future__ import annotations

import collections
import re
import string

PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    text = text.lower()
    text = "".join(ch for ch in text if ch not in PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match_score(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str) -> float:
    prediction_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    common = collections.Counter(prediction_tokens) & collections.Counter(gold_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(prediction_tokens)
    recall = overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def best_over_golds(score, prediction: str, golds: list) -> float:
    return max(score(prediction, gold) for gold in golds)


def squad_scores(predictions: list[str], references: list[list[str]]) -> dict:
    """Exact match and F1 over a corpus, each prediction scored against the best of its gold answers (percent)."""
    exact = sum(best_over_golds(exact_match_score, p, golds) for p, golds in zip(predictions, references))
    f1 = sum(best_over_golds(f1_score, p, golds) for p, golds in zip(predictions, references))
    total = len(predictions)
    return {"exact_match": 100.0 * exact / total, "f1": 100.0 * f1 / total}
