"""The per-user score record the worker emits, and its wire form on the scores topic."""

from __future__ import annotations

import math
from dataclasses import dataclass

import orjson

SCORE_SCHEMA_VERSION = 2  # 2: next_items and next_purchase


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
        }
    )
