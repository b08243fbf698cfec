"""Alert thresholds chosen by precision: the rule a retention team can budget for.

Given validation labels and scores, the threshold is the lowest score whose alerts (every
score at or above it) reach the target precision, which is the one with the most recall at
that precision. At least `min_alerts` alerts must be above it, so one lucky top score cannot
set it. None when no threshold reaches the target: the caller then raises no alert of that
kind rather than alert at a precision nobody asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class PrecisionThreshold:
    threshold: float
    target_precision: float
    precision: float  # on the data it was chosen on
    recall: float
    alerts: int
    base_rate: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "target_precision": self.target_precision,
            "validation_precision": self.precision,
            "validation_recall": self.recall,
            "validation_alerts": self.alerts,
            "validation_base_rate": self.base_rate,
        }


def threshold_for_precision(
    labels: npt.ArrayLike, scores: npt.ArrayLike, target: float, min_alerts: int = 10
) -> PrecisionThreshold | None:
    y = np.asarray(labels, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    if not 0 < target <= 1:
        raise ValueError("target precision must be in (0, 1]")
    if not len(y) or y.sum() == 0:
        return None
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    # Only the last row of each run of equal scores is a cut a threshold can make.
    last_of_tie = np.r_[s_sorted[1:] != s_sorted[:-1], True]
    hits = np.cumsum(y_sorted)
    flagged = np.arange(1, len(y) + 1)
    precision = hits / flagged
    ok = last_of_tie & (precision >= target) & (flagged >= min_alerts)
    if not ok.any():
        return None
    k = int(np.flatnonzero(ok)[-1])
    return PrecisionThreshold(
        threshold=float(s_sorted[k]),
        target_precision=target,
        precision=float(precision[k]),
        recall=float(hits[k] / y.sum()),
        alerts=int(flagged[k]),
        base_rate=float(y.mean()),
    )


def precision_recall_at(
    labels: npt.ArrayLike, scores: npt.ArrayLike, threshold: float
) -> dict[str, float]:
    y = np.asarray(labels, dtype=np.float64)
    flagged = np.asarray(scores, dtype=np.float64) >= threshold
    tp = float((flagged & (y == 1)).sum())
    return {
        "precision": tp / flagged.sum() if flagged.any() else float("nan"),
        "recall": tp / y.sum() if y.sum() else float("nan"),
        "alerts": float(flagged.sum()),
        "base_rate": float(y.mean()) if len(y) else float("nan"),
    }


def best_precision(
    labels: npt.ArrayLike, scores: npt.ArrayLike, min_alerts: int = 10
) -> dict[str, float] | None:
    """The highest precision any threshold reaches with at least `min_alerts` alerts, at the
    highest such threshold (what a target above it would have to beat); None without one."""
    y = np.asarray(labels, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    last_of_tie = np.r_[s_sorted[1:] != s_sorted[:-1], True]
    flagged = np.arange(1, len(y) + 1)
    precision = np.cumsum(y_sorted) / flagged
    ok = last_of_tie & (flagged >= min_alerts)
    if not ok.any() or not y.sum():
        return None
    cuts = np.flatnonzero(ok)
    k = int(cuts[np.argmax(precision[cuts])])
    return {
        "threshold": float(s_sorted[k]),
        **precision_recall_at(y, s, float(s_sorted[k])),
    }
