"""Outcome decisions from plain values, and the window's notes they are made from (no
services; the real stack: tests/integration/test_outcomes.py)."""

from __future__ import annotations

import math

from stream.contract.events import Event, ValidationLimits, event_to_json
from stream.contract.state import DAY_MS, UserState, apply_event
from stream.contract.tokenizer import Vocabulary
from stream.scoring.outcomes import (
    RETURNED,
    STAYED_AWAY,
    ChurnOutcome,
    awaits_return,
    churn_outcome,
    decile,
    new_day,
    window_outcomes,
)
from stream.scoring.scores import EVENT, SILENCE, Score
from stream.worker.window import Message, fold

HORIZON = 3 * DAY_MS
T0 = 1_800_000_000_000


def test_the_first_event_after_an_alert_decides_it() -> None:
    assert awaits_return(alert_ms=T0, last_ms=T0 - DAY_MS)  # a silent alert
    assert awaits_return(alert_ms=T0, last_ms=T0)  # an alert at an event
    assert not awaits_return(alert_ms=T0, last_ms=T0 + 5)  # already came back
    assert not awaits_return(alert_ms=0, last_ms=T0)  # never alerted
    assert churn_outcome("u", T0, T0 + DAY_MS, HORIZON) == ChurnOutcome(
        "u", T0, RETURNED, T0 + DAY_MS, T0 + DAY_MS
    )
    assert churn_outcome("u", T0, T0 + HORIZON, HORIZON).outcome == RETURNED  # inclusive
    late = churn_outcome("u", T0, T0 + HORIZON + 1, HORIZON)
    assert (late.outcome, late.known_ms, late.returned_ms) == (
        STAYED_AWAY,
        T0 + HORIZON,
        T0 + HORIZON + 1,
    )


def test_a_users_first_score_of_a_day_is_a_prediction_and_deciles_bin_scores() -> None:
    day = (T0 // DAY_MS) * DAY_MS
    assert new_day(0, day + 5)
    assert new_day(day - 1, day + 5)
    assert not new_day(day + 1, day + 5)
    assert [decile(s) for s in (0.0, 0.09, 0.1, 0.55, 0.9, 1.0, 1.2, -0.1)] == [
        0,
        0,
        1,
        5,
        9,
        9,
        9,
        0,
    ]


def _score(user: str, last_ms: int, trigger: str = EVENT, purchase: float = 0.4) -> Score:
    return Score(
        user_id=user,
        churn_risk=0.5,
        purchase_intent=purchase,
        anomaly=0.1,
        model_version="6",
        event_count=3,
        last_event_id="e",
        last_event_ts_ms=last_ms,
        scored_at_ms=last_ms,
        next_items=(),
        next_purchase=math.nan,
        trigger=trigger,
        silence_ms=0 if trigger == EVENT else DAY_MS,
    )


def test_a_windows_outcomes_keep_only_scored_users_and_event_scores() -> None:
    day = (T0 // DAY_MS) * DAY_MS
    outcomes = window_outcomes(
        returns={"back": (day - DAY_MS, day + 10), "refused": (day - DAY_MS, day + 10)},
        purchases={"back": [day + 10], "refused": [day + 20]},
        before_ms={"back": day - 2 * DAY_MS, "same-day": day + 1},
        scores=[
            _score("back", day + 10),
            _score("same-day", day + 9),  # scored today before: no new prediction
            _score("quiet", day + 5, SILENCE),  # a silent re-score is no prediction
            _score("nan", day + 5, purchase=math.nan),
        ],
        churn_horizon_ms=HORIZON,
    )
    assert [(o.user_id, o.outcome) for o in outcomes.churn] == [("back", RETURNED)]
    assert [p.user_id for p in outcomes.predictions] == ["back"]
    assert outcomes.purchases == [("back", day + 10)]
    renamed = outcomes.with_users(lambda u: f"x-{u}")
    assert renamed.churn[0].user_id == "x-back" and renamed.purchases == [("x-back", day + 10)]
    assert not window_outcomes({}, {}, {}, [], HORIZON)


def _message(event: Event, offset: int) -> Message:
    return Message(event.user_id.encode(), event_to_json(event), "events", 0, offset)


def test_the_window_notes_returns_purchases_and_where_each_user_stood() -> None:
    vocab = Vocabulary()
    alerted, _ = apply_event(None, Event("a-0", "a", T0, "view"), vocab, 64)
    alerted.last_churn_alert_ms = T0 + DAY_MS  # a silent alert a day after their last event
    stored: dict[str, UserState] = {"a": alerted}
    window = fold(
        [
            _message(Event("a-1", "a", T0 + 2 * DAY_MS, "view"), 1),
            _message(Event("a-2", "a", T0 + 2 * DAY_MS + 5, "buy"), 2),  # an alias of purchase
            _message(Event("n-0", "n", T0, "view"), 3),
        ],
        lambda user, partition: stored.get(user),
        vocab=vocab,
        max_len=64,
        limits=ValidationLimits(max_age_s=10**9, max_future_s=10**9),
        now_ms=T0,
    )
    assert window.returns == {"a": (T0 + DAY_MS, T0 + 2 * DAY_MS)}  # the first event only
    assert window.purchases == {"a": [T0 + 2 * DAY_MS + 5]}
    assert window.before_ms == {"a": T0, "n": 0}
