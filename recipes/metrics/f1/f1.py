"""F1 over class ids: macro (default), micro or weighted average, via scikit-learn.

Local copy of the metric so that `evaluate.load("recipes/metrics/f1")` works offline.
"""
import datasets
import evaluate
from sklearn.metrics import f1_score


class F1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="F1 score (harmonic mean of precision and recall) averaged over classes.",
            citation="",
            inputs_description="predictions, references: lists of int class ids; "
                               "average: 'macro' | 'micro' | 'weighted'",
            features=datasets.Features({"predictions": datasets.Value("int64"),
                                        "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, average="macro"):
        return {"f1": float(f1_score(references, predictions, average=average, zero_division=0))}
