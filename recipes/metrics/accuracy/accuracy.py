"""Accuracy: the fraction of predictions equal to their reference (labels of -100 are ignored).

Local copy of the metric so that `evaluate.load("recipes/metrics/accuracy")` works offline.
"""
import datasets
import evaluate
import numpy as np


class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Fraction of predictions equal to their reference; references of -100 are ignored.",
            citation="",
            inputs_description="predictions, references: lists of int class ids",
            features=datasets.Features({"predictions": datasets.Value("int64"),
                                        "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references):
        p, r = np.asarray(predictions), np.asarray(references)
        keep = r != -100
        return {"accuracy": float((p[keep] == r[keep]).mean()) if keep.any() else 0.0}
