"""Percentile bootstrap over held-out users, paired across versions and tasks.

Each round resamples users with replacement; all of a user's rows move together (as weights
on their rows), so a heavy user's rows do not pass for independent evidence. Every version
and baseline is measured on the same rounds, so a difference's interval is paired.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from trainer.evaluate.customers import weighted_metrics
from trainer.gate import Estimate

Array = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Bootstrap:
    counts: npt.NDArray[np.int64]  # (rounds, users): how often each user is drawn
    index: dict[str, int]
    rows: npt.NDArray[np.intp]  # the user of each row

    @classmethod
    def over(cls, users: Sequence[str], rounds: int, seed: int) -> Bootstrap:
        index = {u: i for i, u in enumerate(sorted(set(users)))}
        rng = np.random.default_rng(seed)
        n = len(index)
        counts = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(rounds)])
        return cls(counts, index, np.array([index[u] for u in users], dtype=np.intp))

    def for_rows(self, users: Sequence[str]) -> Bootstrap:
        """The same rounds, over other rows of these users (another task's rows)."""
        return Bootstrap(self.counts, self.index, np.array([self.index[u] for u in users]))

    @property
    def weights(self) -> Array:
        return self.counts[:, self.rows].astype(np.float64)

    def estimate(self, draws: Array, point: float) -> Estimate:
        finite = draws[np.isfinite(draws)]
        if not finite.size:
            return Estimate(float(point), (float("nan"), float("nan")))
        lo, hi = np.percentile(finite, [2.5, 97.5])
        return Estimate(float(point), (float(lo), float(hi)))


def auc_draws(boot: Bootstrap, y: Array, scores: Array) -> Array:
    """ROC-AUC of each round (NaN where a round drew one class only)."""
    order = np.argsort(-scores, kind="stable")
    ordered = scores[order]
    last_of_tie = np.r_[ordered[1:] != ordered[:-1], True]
    weights = boot.weights
    out = []
    with np.errstate(invalid="ignore", divide="ignore"):
        for chunk in np.array_split(weights, max(1, len(weights) // 100)):
            out.append(weighted_metrics(y[order], chunk[:, order], last_of_tie)[0])
    return np.concatenate(out)


def mean_draws(boot: Bootstrap, values: Array) -> Array:
    weights = boot.weights
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(weights @ values / weights.sum(axis=1), dtype=np.float64)


def ratio_draws(boot: Bootstrap, numerator: Array, denominator: Array) -> Array:
    """sum(w * numerator) / sum(w * denominator) per round (precision, recall)."""
    weights = boot.weights
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray((weights @ numerator) / (weights @ denominator), dtype=np.float64)


def point_auc(y: Array, scores: Array) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, scores)) if 0 < y.sum() < len(y) else float("nan")


def ratio(numerator: Array, denominator: Array) -> float:
    total = float(denominator.sum())
    return float(numerator.sum()) / total if total else float("nan")


def describe(values: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.to_dict() if isinstance(v, Estimate) else v) for k, v in values.items()}
