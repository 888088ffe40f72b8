"""Entity-level precision, recall and F1 of tag sequences (the `seqeval` package, as CoNLL evaluations report
them), micro-averaged and per entity type, plus token accuracy.

The default mode scores entities as conlleval does (an I- tag that starts a span opens an entity); `strict`
follows IOB2 to the letter (seqeval's strict mode: such a span is not an entity). Results are fractions.
"""

from __future__ import annotations

from seqeval.metrics import accuracy_score, classification_report
from seqeval.scheme import IOB2


def entity_scores(predictions: list[list[str]], references: list[list[str]], strict: bool = False) -> dict:
    """Micro-averaged precision, recall and F1 of the entities, token accuracy, and per entity type the same with
    its support, for one list of IOB2 tags per sentence."""
    options = {"mode": "strict", "scheme": IOB2} if strict else {}
    report = classification_report(references, predictions, output_dict=True, zero_division=0, **options)
    overall = report.pop("micro avg")
    for average in ("macro avg", "weighted avg"):
        report.pop(average, None)
    per_type = {
        name: {
            "precision": float(v["precision"]),
            "recall": float(v["recall"]),
            "f1": float(v["f1-score"]),
            "support": int(v["support"]),
        }
        for name, v in sorted(report.items())
    }
    return {
        "precision": float(overall["precision"]),
        "recall": float(overall["recall"]),
        "f1": float(overall["f1-score"]),
        "accuracy": float(accuracy_score(references, predictions)),
        "per_type": per_type,
    }
