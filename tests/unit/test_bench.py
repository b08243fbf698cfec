"""The pure parts of `clickscore bench latency | table`."""

from __future__ import annotations

import math

import pytest

from stream.bench.latency import newest_sent_s, percentiles_ms, rate_events, score_latency_s
from stream.bench.scaling import measure_table
from stream.contract.events import Event


def test_rate_events_takes_the_newest_and_prefixes_ids() -> None:
    events = [Event(f"e{i}", f"u{i % 3}", 1_000 * (10 - i), "view") for i in range(10)]
    chosen = rate_events(events, rate=2, seconds=2, prefix="r1-")
    assert [e.ts_ms for e in chosen] == [7_000, 8_000, 9_000, 10_000]
    assert [e.event_id for e in chosen] == ["r1-e3", "r1-e2", "r1-e1", "r1-e0"]
    assert {e.user_id for e in chosen} == {"r1-u0", "r1-u1", "r1-u2"}


def test_percentiles_and_the_newest_sent_event() -> None:
    assert percentiles_ms([0.001 * i for i in range(1, 101)]) == pytest.approx((50.5, 95.05, 99.01))
    assert all(math.isnan(v) for v in percentiles_ms([]))
    sent = {"a": 1_000, "b": 3_000}
    assert newest_sent_s(["a", "b", "unknown"], sent) == 3.0
    assert newest_sent_s(["unknown"], sent) is None


def test_latency_counts_event_triggered_scores_and_skips_silent_rescores() -> None:
    sent = {"u1-e9": 1_000_000}
    event = {"user_id": "u1", "last_event_id": "u1-e9", "trigger": "event", "silence_ms": 0}
    silent = event | {"trigger": "silence", "silence_ms": 86_400_000}
    schema_2 = {"user_id": "u1", "last_event_id": "u1-e9"}  # no trigger: always an event
    assert score_latency_s(event, sent, now_s=1_000.25) == pytest.approx(0.25)
    assert score_latency_s(schema_2, sent, now_s=1_000.25) == pytest.approx(0.25)
    # The same event id, read hours later: counted, it would be hours of "latency".
    assert score_latency_s(silent, sent, now_s=4_600.0) is None
    assert score_latency_s(event | {"last_event_id": "other"}, sent, now_s=1_001.0) is None


@pytest.mark.parametrize("store", ["memory", "rocksdb"])
def test_table_bench_fills_and_folds(store: str) -> None:
    point = measure_table(store, users=300, updates=200, length=64)
    assert (point.store, point.users, point.sequence_bytes) == (store, 300, 64 * 6 * 2)
    assert point.state_bytes > point.sequence_bytes  # header and remembered ids on top
    assert point.update_us > 0 and point.fill_s >= 0


def test_cpu_samples_are_read_between_samples() -> None:
    from stream.bench.worker import CpuSamples
    from stream.stack.process import ProcessRecord

    samples = CpuSamples(ProcessRecord("w", 1, 0, [], "log"))
    samples.times, samples.cpu = [10.0, 11.0, 13.0], [1.0, 1.5, 2.5]
    assert samples.at(9.0) == 1.0  # before the first sample: the first
    assert samples.at(10.5) == pytest.approx(1.25)
    assert samples.at(12.0) == pytest.approx(2.0)
    assert samples.at(20.0) == 2.5  # after the last: the last
