"""Entity-level precision, recall and F1 of tag sequences (the `seqeval` package, as CoNLL evaluations report
them), micro-averaged and per entity type, plus token accuracy.

The default mode scores entities as conlleval does (an I- tag that starts a span opens an entity); `strict`
follows IOB2 to the letter (seqeval's strict mode: such a span is not an entity). Results are fractions.
"""

import datasets
import evaluate
from seqeval.metrics import accuracy_score, classification_report
from seqeval.scheme import IOB2


class Seqeval(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation="Nakayama 2018, seqeval: a Python framework for sequence labeling evaluation",
            inputs_description="predictions, references: one list of IOB2 tags (strings) per sentence",
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("string")),
                    "references": datasets.Sequence(datasets.Value("string")),
                }
            ),
        )

    def _compute(self, predictions, references, strict=False):
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
