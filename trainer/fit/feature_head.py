"""The served churn and purchase head: standardised behaviour features, a logistic regression.

The features are stream/contract/features.py's, computed from the user state the worker
keeps; the head is fitted here with scikit-learn and exported as plain numbers (mean, scale,
coefficients, intercept) that stream/serving/version.py `head_scores` applies with numpy, so
the Triton model carries no scikit-learn. A few regularisations are tried and the one with
the best ROC-AUC + PR-AUC on validation rows is kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score

from stream.serving.version import head_scores

Array = npt.NDArray[np.float64]
# Inverse regularisation strengths tried; the pick is made on validation rows only.
CANDIDATES: dict[str, float] = {"logistic_c0.01": 0.01, "logistic_c0.1": 0.1, "logistic_c1": 1.0}


@dataclass(frozen=True)
class FeatureHead:
    mean: list[float]
    scale: list[float]
    coef: list[float]
    intercept: float
    candidate: str

    def scores(self, x: npt.ArrayLike) -> Array:
        """Exactly what the served model computes (stream/serving/version.py head_scores)."""
        return head_scores(self.to_dict(), np.asarray(x, dtype=np.float64))

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean": self.mean,
            "scale": self.scale,
            "coef": self.coef,
            "intercept": self.intercept,
            "candidate": self.candidate,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureHead:
        return cls(
            mean=[float(v) for v in data["mean"]],
            scale=[float(v) for v in data["scale"]],
            coef=[float(v) for v in data["coef"]],
            intercept=float(data["intercept"]),
            candidate=str(data["candidate"]),
        )


def fit_head(x: npt.ArrayLike, y: npt.ArrayLike, candidate: str = "logistic_c0.1") -> FeatureHead:
    features = np.asarray(x, dtype=np.float64)
    labels = np.asarray(y, dtype=np.float64)
    mean = features.mean(axis=0)
    scale = features.std(axis=0)
    scale[scale < 1e-9] = 1.0  # a constant feature: its coefficient is then ~0
    model = LogisticRegression(C=CANDIDATES[candidate], max_iter=5000)
    model.fit((features - mean) / scale, labels)
    return FeatureHead(
        mean=mean.tolist(),
        scale=scale.tolist(),
        coef=model.coef_[0].astype(np.float64).tolist(),
        intercept=float(model.intercept_[0]),
        candidate=candidate,
    )


@dataclass
class Picked:
    head: FeatureHead  # the best candidate, refitted on fit + check rows
    validation: dict[str, dict[str, float]]
    check_scores: Array  # the best candidate's on the check rows, fitted without them


def pick_head(x_fit: Array, y_fit: Array, x_check: Array, y_check: Array) -> Picked:
    """Each candidate fitted on the fit rows and scored on the check rows; the best refitted
    on both."""
    validation: dict[str, dict[str, float]] = {}
    scores: dict[str, Array] = {}
    for name in CANDIDATES:
        scores[name] = fit_head(x_fit, y_fit, name).scores(x_check)
        validation[name] = {
            "roc_auc": float(roc_auc_score(y_check, scores[name])),
            "pr_auc": float(average_precision_score(y_check, scores[name])),
        }
    best = max(validation, key=lambda n: validation[n]["roc_auc"] + validation[n]["pr_auc"])
    head = fit_head(np.vstack([x_fit, x_check]), np.concatenate([y_fit, y_check]), best)
    return Picked(head, validation, scores[best])
