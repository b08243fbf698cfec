"""Quantiles and means from Prometheus histogram buckets, and parsing the worker's metrics."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from stream.demo.live import LiveState, plain_line, snapshot
from stream.ops.promstats import (
    Histogram as Buckets,
)
from stream.ops.promstats import (
    histogram_of,
    histogram_quantile,
    parse_worker_metrics,
)

INF = math.inf


def test_quantile_interpolates_inside_the_bucket() -> None:
    # 10 observations <= 1, 10 more in (1, 2]: the median is the top of the first bucket,
    # the 75th percentile halfway through the second.
    buckets = Buckets(((1.0, 10.0), (2.0, 20.0), (INF, 20.0)))
    assert histogram_quantile(buckets, 0.5) == pytest.approx(1.0)
    assert histogram_quantile(buckets, 0.75) == pytest.approx(1.5)
    assert histogram_quantile(buckets, 0.25) == pytest.approx(0.5)  # lower bound of 0


def test_quantile_in_the_inf_bucket_is_the_highest_finite_bound() -> None:
    buckets = Buckets(((1.0, 1.0), (5.0, 2.0), (INF, 10.0)))
    assert histogram_quantile(buckets, 0.99) == 5.0


def test_quantile_without_observations_is_none() -> None:
    assert histogram_quantile(Buckets(((1.0, 0.0), (INF, 0.0))), 0.5) is None
    assert histogram_quantile(Buckets(), 0.5) is None
    with pytest.raises(ValueError):
        histogram_quantile(Buckets(((1.0, 1.0), (INF, 1.0))), 1.5)


def test_histogram_of_values_matches_prometheus_client() -> None:
    values = [0.003, 0.004, 0.03, 0.03, 0.2, 7.0, 400.0]
    bounds = (0.005, 0.01, 0.05, 0.5, 10.0)
    registry = CollectorRegistry()
    histogram = Histogram(
        "clickscore_event_to_score_seconds", "x", buckets=bounds, registry=registry
    )
    for value in values:
        histogram.observe(value)
    parsed = parse_worker_metrics(generate_latest(registry).decode())
    ours = histogram_of(values, bounds)
    assert parsed.event_to_score.buckets == ours.buckets
    assert parsed.event_to_score.total == pytest.approx(ours.total)
    assert ours.count == len(values)
    assert ours.mean == pytest.approx(sum(values) / len(values))


def test_minus_gives_the_recent_observations_and_survives_a_reset() -> None:
    before = Buckets(((1.0, 2.0), (INF, 3.0)), 4.0)
    now = Buckets(((1.0, 5.0), (INF, 8.0)), 14.0)
    recent = now.minus(before)
    assert recent.buckets == ((1.0, 3.0), (INF, 5.0))
    assert recent.mean == pytest.approx(2.0)
    assert before.minus(now) is before  # counters went down: the worker restarted


def test_parse_worker_metrics_sums_labelled_counters() -> None:
    registry = CollectorRegistry()
    consumed = Counter("clickscore_events_consumed", "x", registry=registry)
    dead = Counter("clickscore_dead_letters", "x", ["reason"], registry=registry)
    alerts = Counter("clickscore_alerts", "x", ["kind"], registry=registry)
    consumed.inc(120)
    dead.labels("bad_json").inc(2)
    dead.labels("missing_field").inc(3)
    alerts.labels("churn").inc(4)
    parsed = parse_worker_metrics(generate_latest(registry).decode())
    assert parsed.events_consumed == 120
    assert parsed.dead_letters == 5
    assert parsed.alerts == {"churn": 4}


def test_parse_worker_metrics_reads_the_silent_rescores() -> None:
    registry = CollectorRegistry()
    rescored = Counter("clickscore_silent_rescored", "x", registry=registry)
    due = Gauge("clickscore_silent_rescores_due", "x", registry=registry)
    assert parse_worker_metrics(generate_latest(registry).decode()).silent_rescored == 0
    rescored.inc(7)
    due.set(3)
    parsed = parse_worker_metrics(generate_latest(registry).decode())
    assert (parsed.silent_rescored, parsed.silent_due) == (7, 3)
    assert parse_worker_metrics("").silent_due is None  # a worker without the gauge

    state = LiveState(started=0.0)
    state.add_scrape(1.0, parsed)
    view = snapshot(state, now=2.0)
    assert (view.silent_rescored, view.silent_due) == (7, 3)
    assert "silent re-scores 7 (still due 3)" in plain_line(view, {})


def test_snapshot_rates_and_plain_line() -> None:
    state = LiveState(started=0.0)
    registry = CollectorRegistry()
    consumed = Counter("clickscore_events_consumed", "x", registry=registry)
    state.add_scrape(10.0, parse_worker_metrics(generate_latest(registry).decode()))
    consumed.inc(6000)
    state.add_scrape(13.0, parse_worker_metrics(generate_latest(registry).decode()))
    for latency in (0.01, 0.02, 0.03, 0.5):
        state.latencies_s.append(latency)
    alert = {"alert_id": "a1", "kind": "churn", "user_id": "u1", "score": 0.9, "reason": "r"}
    state.add_alert(alert)
    state.add_alert(alert)  # delivered twice, counted once
    view = snapshot(state, now=14.0)
    assert view.events_per_s == pytest.approx(2000.0)
    assert view.alerts_by_kind == {"churn": 1}
    assert view.latency_p50_s is not None and 0.01 <= view.latency_p50_s <= 0.05
    line = plain_line(view, {"replay": (10, 20)})
    assert "2,000 events/s" in line and "replay 10/20" in line and "churn 1" in line


def test_parse_worker_metrics_reads_the_partitions_the_worker_owns() -> None:
    """The demo replays only once this is above 0: before, events wait out the group join."""
    registry = CollectorRegistry()
    owned = Gauge("clickscore_assigned_partitions", "x", registry=registry)
    assert parse_worker_metrics(generate_latest(registry).decode()).ready_partitions == 0
    owned.set(4)
    assert parse_worker_metrics(generate_latest(registry).decode()).ready_partitions == 4
    assert parse_worker_metrics("").ready_partitions is None  # a worker without the gauge
