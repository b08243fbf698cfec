"""The pipeline's thresholds step: churn alerts counted per user, as the demo counts them.

A user is flagged when any of their scores at the times the worker scores them, with enough
history for a churn alert (CLICKSCORE_CHURN_MIN_EVENTS, _MIN_HISTORY_S), reaches the
threshold; so the threshold is chosen on each validation user's highest eligible score
(trainer/thresholds.py `choose_threshold`: target precision, clearly above the base rate,
at most CLICKSCORE_CHURN_ALERT_MAX_RATE of users). The truth per user: the generator's
churners on synthetic data; elsewhere a user whose last event is at least a churn horizon
before the data's end, scored only up to that point (later scores cannot be judged).

The anomaly alert is served only with a threshold chosen on labelled anomalies; real data has
none, and without the encoder there is no anomaly score: no anomaly alert, and why.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from trainer.labels.points import Points

Array = npt.NDArray[np.float64]
# Each user's scores at their points -> one float per point.
Scorer = Callable[[Points], Array]


def user_max(points: Points, scores: Array, until_ms: int | None) -> dict[str, float]:
    """Each user's highest score among the points that may raise a churn alert (-1: never
    scored with enough history, never flagged)."""
    best: dict[str, float] = {u: -1.0 for u in points.users}
    for user, at, may, score in zip(
        points.users, points.at_ms, points.may_alert, scores, strict=True
    ):
        if may and (until_ms is None or at <= until_ms) and np.isfinite(score):
            best[user] = max(best[user], float(score))
    return best


def user_labels(
    points: Points, churners: set[str] | None, end_ms: int, horizon_ms: int
) -> tuple[list[str], Array, int | None]:
    """(users, churn truth per user, the last scoring time that counts)."""
    users = sorted(set(points.users))
    if churners is not None:
        return users, np.array([float(u in churners) for u in users]), None
    last: dict[str, int] = {}
    for user, state in zip(points.users, points.states, strict=True):
        last[user] = max(last.get(user, 0), state.last_ts_ms)
    until = end_ms - horizon_ms
    return users, np.array([float(last.get(u, end_ms) <= until) for u in users]), until


def per_user(
    points: Points, scores: Array, churners: set[str] | None, end_ms: int, horizon_ms: int
) -> tuple[list[str], Array, Array]:
    users, truth, until = user_labels(points, churners, end_ms, horizon_ms)
    best = user_max(points, scores, until)
    return users, truth, np.array([best[u] for u in users])


def churn_threshold(
    settings: Any,
    points: Points,
    scores: Array,
    churners: set[str] | None,
    end_ms: int,
) -> dict[str, Any]:
    """model_config.json's alert_thresholds.churn, chosen on these (validation) users."""
    from trainer.thresholds import choose_threshold

    _, truth, best = per_user(points, scores, churners, end_ms, settings.churn_horizon_s * 1000)
    choice = choose_threshold(
        truth,
        best,
        target_precision=settings.churn_alert_precision,
        max_alert_rate=settings.churn_alert_max_rate,
        min_alerts=10,
    )
    return {**choice.to_dict(), "unit": "users"}


def no_anomaly_alert(reason: str) -> dict[str, Any]:
    return {"threshold": None, "reason": reason}
