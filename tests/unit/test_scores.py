"""The score record on the scores topic: every score says why it was made."""

from __future__ import annotations

import math

import orjson
import pytest

from stream.scoring.scores import (
    EVENT,
    SCORE_SCHEMA_VERSION,
    SILENCE,
    Score,
    is_event_triggered,
    score_to_json,
)

T0_MS = 1_800_000_000_000
DAY_MS = 86_400_000


def score(**changes: object) -> Score:
    fields: dict[str, object] = {
        "user_id": "u1",
        "churn_risk": 0.25,
        "purchase_intent": 0.5,
        "anomaly": 0.125,
        "model_version": "6",
        "event_count": 4,
        "last_event_id": "u1-e4",
        "last_event_ts_ms": T0_MS,
        "scored_at_ms": T0_MS + 40,
        "next_items": (("sku-1", 0.75),),
        "next_purchase": 0.0625,
    }
    return Score(**(fields | changes))  # type: ignore[arg-type]


def test_an_event_score_says_event_with_no_silence() -> None:
    record = orjson.loads(score_to_json(score()))
    assert SCORE_SCHEMA_VERSION == 3
    assert record == {
        "schema_version": 3,
        "user_id": "u1",
        "churn_risk": 0.25,
        "purchase_intent": 0.5,
        "anomaly": 0.125,
        "model_version": "6",
        "event_count": 4,
        "last_event_id": "u1-e4",
        "last_event_ts_ms": T0_MS,
        "scored_at_ms": T0_MS + 40,
        "next_items": [{"item_id": "sku-1", "probability": 0.75}],
        "next_purchase": 0.0625,
        "trigger": "event",
        "silence_ms": 0,
    }
    assert is_event_triggered(record)


def test_a_silent_rescore_says_silence_and_its_level() -> None:
    silent = score(trigger=SILENCE, silence_ms=2 * DAY_MS, next_items=(), next_purchase=math.nan)
    record = orjson.loads(score_to_json(silent))
    assert (record["trigger"], record["silence_ms"]) == ("silence", 2 * DAY_MS)
    # The same event as the score before it: only the trigger tells them apart.
    assert (record["last_event_id"], record["event_count"]) == ("u1-e4", 4)
    assert record["next_purchase"] is None
    assert not is_event_triggered(record)


def test_a_schema_2_record_without_trigger_counts_as_event() -> None:
    old = orjson.loads(score_to_json(score()))
    del old["trigger"], old["silence_ms"]
    old["schema_version"] = 2
    assert is_event_triggered(old)
    assert EVENT == "event"


def test_an_unknown_trigger_is_refused() -> None:
    with pytest.raises(ValueError, match="trigger"):
        score(trigger="timer")


def test_an_anomaly_the_version_does_not_serve_is_null_on_the_topic_and_in_postgres() -> None:
    """Version 7 serves no anomaly (NaN from Triton): null, never NaN, where it is written."""
    from stream.sinks.postgres import score_rows

    unserved = score(anomaly=math.nan)
    assert orjson.loads(score_to_json(unserved))["anomaly"] is None
    [row] = score_rows([unserved])
    assert row["anomaly"] is None and row["churn_risk"] == 0.25
    [served] = score_rows([score()])
    assert served["anomaly"] == 0.125
