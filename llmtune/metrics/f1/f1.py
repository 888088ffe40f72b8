"""F1 score (scikit-learn's f1_score); `average="macro"` gives the unweighted mean over classes."""

import datasets
import evaluate
from sklearn.metrics import f1_score


class F1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation="",
            inputs_description="predictions, references: integer class ids; labels, average as in scikit-learn",
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, labels=None, average="macro", sample_weight=None):
        score = f1_score(
            references, predictions, labels=labels, average=average, sample_weight=sample_weight, zero_division=0
        )
        return {"f1": score.tolist() if hasattr(score, "tolist") and getattr(score, "ndim", 0) else float(score)}
