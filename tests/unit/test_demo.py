"""The demo's pure decisions: whether a first model must be trained, what it replays, and how
it times the scores it reads."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from stream.contract.events import Event
from stream.datasets.synthetic import UserTruth
from stream.demo.report_data import RunResults
from stream.demo.run import DemoOptions, _accuracy, _clickstream, _facts, _has_model, _Run
from stream.demo.score_times import ScoreTimes
from tests.conftest import make_settings


def test_a_first_model_is_trained_only_when_no_version_is_served(tmp_path: Path) -> None:
    settings = make_settings(model_repo=tmp_path, triton_model="clickscore")
    assert not _has_model(settings)  # no model folder at all
    (tmp_path / "clickscore").mkdir()
    (tmp_path / "clickscore" / "config.pbtxt").write_text('name: "clickscore"\n')
    (tmp_path / "clickscore" / "notes").mkdir()
    assert not _has_model(settings)  # a config and a non-version folder
    (tmp_path / "clickscore" / "3").mkdir()
    assert _has_model(settings)


def test_synthetic_by_default_with_ground_truth() -> None:
    events, truth, source = _clickstream(DemoOptions(users=20, days=2))
    assert truth is not None and set(truth) >= {e.user_id for e in events}
    assert source == "20 synthetic users, 2 days"


def test_a_dataset_is_replayed_in_time_order_without_ground_truth(tmp_path: Path) -> None:
    path = tmp_path / "UserBehavior.csv"
    # Taobao UserBehavior: user_id,item_id,category_id,behavior,timestamp (sorted by user).
    path.write_text(
        "1,100,7,pv,1511700000\n1,101,7,buy,1511700300\n2,200,8,cart,1511600000\n"
        "2,201,8,pv,1511800000\n"
    )
    events, truth, source = _clickstream(DemoOptions(dataset=("taobao", path), max_events=3))
    assert truth is None and source == "taobao UserBehavior.csv"
    assert [e.ts_ms for e in events] == sorted(e.ts_ms for e in events)
    assert len(events) == 3 and events[0].user_id == "2"


def test_the_truth_report_scores_each_anomaly_kind_and_all_detectors_together() -> None:
    truth = {
        "bot": UserTruth("bot", "bot", anomaly="bot", anomaly_start_ms=1),
        "thief": UserTruth("thief", "takeover", anomaly="takeover", anomaly_start_ms=1),
        "thief2": UserTruth("thief2", "takeover", anomaly="takeover", anomaly_start_ms=1),
        "shopper": UserTruth("shopper", "regular"),
        "leaver": UserTruth("leaver", "churner", churn_ms=5),
    }
    at = datetime(2026, 11, 30, tzinfo=UTC)
    alerts = [
        ("bot", "burst", at),
        ("bot", "takeover", at),  # a hoarding bot on a new platform: still an anomaly
        ("thief", "takeover", at),
        ("shopper", "anomaly", at),
        ("leaver", "churn", at),
    ]
    rows = {r.label: r for r in _accuracy(RunResults({}, alerts, 0, []), truth)}
    takeover = rows["takeover alerts vs anomalies"]
    assert (takeover.flagged, takeover.actual, takeover.hits) == (2, 3, 2)
    assert takeover.base_rate == 3 / 5
    against_takeovers = rows["takeover alerts vs takeovers"]
    assert (against_takeovers.precision, against_takeovers.recall) == (0.5, 0.5)
    combined = rows["anomaly+burst+takeover vs anomalies"]
    assert (combined.flagged, combined.hits, combined.actual) == (3, 2, 3)


def test_the_rules_reach_the_anomaly_target_on_fresh_generated_users() -> None:
    """docs/evaluation.md, "Takeovers": precision and recall of at least 0.9 over bots,
    scrapers and takeovers per user, with the rules alone (no model scores)."""
    from stream.datasets.synthetic import SyntheticConfig
    from stream.demo.rules_truth import measure
    from stream.scoring.alerts import AlertRules

    result = measure(SyntheticConfig(users=400, days=4, seed=11), AlertRules(), 64)
    rows = {r.label: r for r in result.rows}
    combined = rows["burst+takeover vs anomalies"]
    assert combined.actual == 24
    assert combined.precision is not None and combined.precision >= 0.9
    assert combined.recall is not None and combined.recall >= 0.9
    assert rows["takeover alerts vs takeovers"].recall == 1.0
    assert result.flagged_before_start == 0 and not result.people_flagged


def test_the_demo_times_event_scores_as_latency_and_silent_rescores_from_when_they_fell_due() -> (
    None
):
    """The demo sends u1's last view at wall time 100 s (event time 1 h), then, 2 s later, an
    event at 2 h that moves event time past u1's first hour of silence. u1's event score
    lands 50 ms after its view; its silent re-score 500 ms after the 2 h event was sent."""
    hour_ms = 3_600_000
    times = ScoreTimes()
    times.sent([Event("u1-e1", "u1", hour_ms, "view")], at_ms=100_000)
    times.sent([Event("u2-e1", "u2", 2 * hour_ms, "view")], at_ms=102_000)
    record = {
        "schema_version": 3,
        "user_id": "u1",
        "last_event_id": "u1-e1",
        "last_event_ts_ms": hour_ms,
        "event_count": 1,
        "scored_at_ms": 100_050,
        "trigger": "event",
        "silence_ms": 0,
    }
    assert times.observe(record) == pytest.approx(0.05)
    silent = record | {"trigger": "silence", "silence_ms": hour_ms, "scored_at_ms": 102_500}
    assert times.observe(silent) is None  # not latency
    assert times.event_s == [pytest.approx(0.05)]  # counted, the silent one would read 2.45 s
    assert times.silent_delay_s == [pytest.approx(0.5)]
    # A record from before trigger existed (schema_version 2) is event-triggered.
    old = {k: v for k, v in record.items() if k not in ("trigger", "silence_ms")}
    assert times.observe(old | {"schema_version": 2}) == pytest.approx(0.05)
    assert len(times.event_s) == 2 and len(times.silent_delay_s) == 1


def test_the_summary_labels_event_latency_and_silent_rescores_apart() -> None:
    run = _Run(events=3, users=2)
    run.times.event_s += [0.02, 0.04]
    run.times.silent_delay_s += [1.5]
    results = RunResults({"churn_risk": [0.1, 0.2]}, [], 0, [])
    facts = dict(_facts(run, results))
    assert facts["scores emitted"] == "2 event-triggered, 1 silent re-scores"
    assert facts["event-triggered score latency"].startswith("p50 30 ms, p99 40 ms")
    assert facts["silent re-scores"] == "1, due-to-emitted p50 1.5 s, p99 1.5 s, still due -"
