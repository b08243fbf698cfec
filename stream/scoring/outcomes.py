"""What really happened after an alert or a score, decided from the events the worker reads.
Pure: the worker's window (stream/worker/window.py) notes the moments, this decides.

Churn. An alert at event time A says the user stops. The outcome is the training label's
(trainer/labels/scoring_points.py, `stopped`): did any event come in (A, A + horizon]?

    returned      the user's first event after A came within the horizon: a false alarm,
                  or a saved customer if a retention action was taken (docs/monitoring.md)
    stayed_away   no event within the horizon: a true churner

The worker sees the first event after A (the state remembers A as last_churn_alert_ms, and
no event after it yet as last_ts_ms <= A: `awaits_return`), so it writes `returned` exactly,
with its time, and `stayed_away` when that first event comes later than the horizon. A user
who never comes back sends nothing to decide on: `clickscore outcomes` closes those once
event time passes A + horizon. Both are keyed by (user, A), so replays and the two writers agree.

Purchase intent. Each user's first score on each UTC day (of event time) on which they had
events is kept as a prediction; its outcome is the first purchase within the purchase horizon
after it, set when the worker sees a purchase.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from stream.contract.state import DAY_MS
from stream.scoring.scores import EVENT, Score

RETURNED = "returned"
STAYED_AWAY = "stayed_away"


@dataclass(frozen=True, slots=True)
class ChurnOutcome:
    user_id: str
    alert_ms: int  # the alert's event time: its key with the user
    outcome: str  # RETURNED or STAYED_AWAY
    known_ms: int  # event time it became known: the return, or alert + horizon
    returned_ms: int | None  # the first event after the alert, if one came


def awaits_return(alert_ms: int, last_ms: int) -> bool:
    """Whether a user whose newest event is at last_ms has not come back since their churn
    alert at alert_ms (0: never alerted): their first event after alert_ms decides it."""
    return alert_ms > 0 and last_ms <= alert_ms


def churn_outcome(
    user_id: str, alert_ms: int, first_after_ms: int, horizon_ms: int
) -> ChurnOutcome:
    """The outcome of an alert at alert_ms decided by the first event after it."""
    if first_after_ms - alert_ms <= horizon_ms:
        return ChurnOutcome(user_id, alert_ms, RETURNED, first_after_ms, first_after_ms)
    return ChurnOutcome(user_id, alert_ms, STAYED_AWAY, alert_ms + horizon_ms, first_after_ms)


def new_day(last_before_ms: int, last_ms: int) -> bool:
    """Whether a score after events up to last_ms is the user's first of that UTC day
    (last_before_ms: their newest event before this window, 0 for a new user)."""
    return last_before_ms <= 0 or last_ms // DAY_MS != last_before_ms // DAY_MS


def decile(score: float) -> int:
    """0 for scores below 0.1, ..., 9 for 0.9 and above."""
    return min(9, max(0, int(score * 10)))


@dataclass(frozen=True, slots=True)
class Prediction:
    user_id: str
    scored_ms: int  # the score's event time: the user's newest event
    model_version: str
    purchase_intent: float


@dataclass
class WindowOutcomes:
    """What one window adds: decided churn outcomes, new purchase-intent predictions, and the
    purchases that may decide earlier predictions."""

    churn: list[ChurnOutcome]
    predictions: list[Prediction]
    purchases: list[tuple[str, int]]  # (user, purchase event time)

    def __bool__(self) -> bool:
        return bool(self.churn or self.predictions or self.purchases)

    def with_users(self, rename: Callable[[str], str]) -> WindowOutcomes:
        """The same with every user id renamed (pseudonymised, as the alerts are)."""
        return WindowOutcomes(
            churn=[replace(o, user_id=rename(o.user_id)) for o in self.churn],
            predictions=[replace(p, user_id=rename(p.user_id)) for p in self.predictions],
            purchases=[(rename(u), ts) for u, ts in self.purchases],
        )


def window_outcomes(
    returns: Mapping[str, tuple[int, int]],
    purchases: Mapping[str, list[int]],
    before_ms: Mapping[str, int],
    scores: Sequence[Score],
    churn_horizon_ms: int,
) -> WindowOutcomes:
    """From a window's notes (the first event after a churn alert per user, purchases, and
    each user's newest event before the window) and its event-triggered scores."""
    scored = set()
    predictions = []
    for s in scores:
        scored.add(s.user_id)
        if (
            s.trigger == EVENT
            and new_day(before_ms.get(s.user_id, 0), s.last_event_ts_ms)
            and math.isfinite(s.purchase_intent)
        ):
            predictions.append(
                Prediction(s.user_id, s.last_event_ts_ms, s.model_version, s.purchase_intent)
            )
    return WindowOutcomes(
        churn=[
            churn_outcome(user, alert_ms, first_ms, churn_horizon_ms)
            for user, (alert_ms, first_ms) in returns.items()
            if user in scored
        ],
        predictions=predictions,
        purchases=[(u, ts) for u, times in purchases.items() if u in scored for ts in times],
    )
