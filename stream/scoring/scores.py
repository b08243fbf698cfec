"""The per-user score record the worker emits, and its wire form on the scores topic.

One JSON object per score on the scores topic, keyed by user id (schema_version 3):

    schema_version    3 (2 had no trigger/silence_ms: read a missing trigger as "event")
    user_id           the user (pseudonymised when the worker is configured to)
    churn_risk, purchase_intent, anomaly    the model's scores, 6 decimals
    model_version     the served version that scored
    event_count       events of this user the score reflects
    last_event_id     the user's newest event; last_event_ts_ms its time (ms)
    scored_at_ms      when the worker scored (wall clock, ms)
    next_items        [{"item_id", "probability"}], most likely first; [] without a next-event
                      model
    next_purchase     P(next event is a purchase), or null without a next-event model
    trigger           why this score exists: "event" (new events of the user) or "silence"
                      (the worker re-scored a user who went quiet, stream/scoring/idle.py)
    silence_ms        for "silence", the level of silence scored at: the score is the user's
                      as of last_event_ts_ms + silence_ms (event time); 0 for "event"

Versions only add fields, so a consumer of an older version keeps working.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import orjson

SCORE_SCHEMA_VERSION = 3  # 2: next_items and next_purchase; 3: trigger and silence_ms

EVENT = "event"  # scored because new events of the user arrived
SILENCE = "silence"  # re-scored because the user went quiet (stream/scoring/idle.py)
TRIGGERS = (EVENT, SILENCE)


@dataclass(frozen=True, slots=True)
class Score:
    user_id: str
    churn_risk: float
    purchase_intent: float
    anomaly: float
    model_version: str
    # Events of this user seen so far: sinks only move forward, so a replay of an older
    # result never overwrites a newer one.
    event_count: int
    last_event_id: str
    last_event_ts_ms: int
    scored_at_ms: int
    # The served version's most likely next items (raw item id, probability), most likely
    # first, and the probability that the next event is a purchase (NaN: a version without
    # a next-event model).
    next_items: tuple[tuple[str, float], ...] = ()
    next_purchase: float = math.nan
    # Why this score exists (EVENT or SILENCE), and for a silent re-score the silence it was
    # scored at (0 for an event): latency figures count only event-triggered scores.
    trigger: str = EVENT
    silence_ms: int = 0

    def __post_init__(self) -> None:
        if self.trigger not in TRIGGERS:
            raise ValueError(f"trigger must be one of {TRIGGERS}, not {self.trigger!r}")


def is_event_triggered(record: Mapping[str, object]) -> bool:
    """Whether a score record from the scores topic came from new events; a record of
    schema_version 2 or older has no trigger and always did."""
    return record.get("trigger", EVENT) == EVENT


def next_items_json(score: Score) -> list[dict[str, object]]:
    return [{"item_id": item, "probability": round(p, 6)} for item, p in score.next_items]


def score_to_json(score: Score) -> bytes:
    return orjson.dumps(
        {
            "schema_version": SCORE_SCHEMA_VERSION,
            "user_id": score.user_id,
            "churn_risk": round(score.churn_risk, 6),
            "purchase_intent": round(score.purchase_intent, 6),
            "anomaly": round(score.anomaly, 6),
            "model_version": score.model_version,
            "event_count": score.event_count,
            "last_event_id": score.last_event_id,
            "last_event_ts_ms": score.last_event_ts_ms,
            "scored_at_ms": score.scored_at_ms,
            "next_items": next_items_json(score),
            "next_purchase": None
            if math.isnan(score.next_purchase)
            else round(score.next_purchase, 6),
            "trigger": score.trigger,
            "silence_ms": score.silence_ms,
        }
    )
