"""Hostile traffic through the real worker: malformed events interleaved with valid ones, and
one user flooding the topic (a hot key)."""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest

from stream.contract.events import REASONS, Event, Rejection, event_to_json, parse_event
from stream.contract.state import UserState
from stream.settings import Settings
from stream.worker.pipeline import validation_limits
from stream.worker.tables import TABLE_NAME
from tests.support.checks import (
    alert_rows,
    expected_alerts,
    prepare,
    tally,
    wait_until_scored,
    worker_settings,
)
from tests.support.kafka import produce, read_all
from tests.support.traffic import build_traffic
from tests.support.worker import WorkerProcess

pytestmark = pytest.mark.integration


def hostile_payloads(now_ms: int) -> list[tuple[bytes | None, bytes]]:
    """Distinct malformed messages, each of a kind a broken or hostile producer sends."""
    ok = {"event_id": "h", "user_id": "mallory", "ts": now_ms, "event_type": "view"}

    def variant(n: int, **changes: object) -> bytes:
        return orjson.dumps({**ok, "event_id": f"h{n}", **changes})

    raw: list[bytes] = [
        b"",
        b"\x00\xff\xfe garbage",
        bytes(range(256)),
        b"[" * 5000 + b"]" * 5000,
        b'{"a":' * 600 + b"1" + b"}" * 600,
        b'{"event_id":"h1","user_id":"mallory","ts":NaN,"event_type":"view"}',
        b'{"event_id":"h2","user_id":"mallory","ts":1,"event_type":"view","price":Infinity}',
        b'{"event_id":"h3","user_id":"\\ud800","ts":1,"event_type":"view"}',
        b'{"event_id":"h4","user_id":"mallory","ts":1e308,"event_type":"view"}',
        b'{"event_id":"h5","user_id":"mallory","ts":99999999999999999999999,"event_type":"v"}',
        b'"just a string"',
        b"null",
        b"42",
        variant(6, ts=-(2**63)),
        variant(7, ts="0001-01-01T00:00:00Z"),
        variant(8, ts="not a time"),
        variant(9, user_id=["mallory"]),
        variant(10, event_type={"x": 1}),
        variant(11, price=-1),
        variant(12, price="free"),
        variant(13, user_id="m" * 10_000),
        variant(14, properties={"p": "x" * 5_000}),
        variant(15, properties={"deep": [[[[[[[[[[[[1]]]]]]]]]]]]} | {"pad": "y" * 4_100}),
        variant(16, item_id="\u202e" * 300),
        b"{" + b'"k":1,' * 4_000 + b'"z":1}',  # over the payload limit
        variant(17, event_id=None),
        variant(18, event_id=True),
        variant(19, ts=True),
    ]
    keyed: list[tuple[bytes | None, bytes]] = [(b"mallory", r) for r in raw]
    keyed += [(None, variant(20)), (b"not-mallory", variant(21))]  # key_mismatch
    return keyed


async def test_bad_events_are_dead_lettered_and_valid_ones_scored(
    settings: Settings, tmp_path: Path
) -> None:
    settings = worker_settings(settings)
    await prepare(settings)
    now_ms = int(time.time() * 1000)
    traffic = build_traffic(now_ms, users=100)
    rng = random.Random(3)
    for key, value in hostile_payloads(now_ms):
        parsed = parse_event(value, now_ms, validation_limits(settings))
        reason = parsed.reason if isinstance(parsed, Rejection) else "key_mismatch"
        assert not isinstance(parsed, Event) or key != parsed.user_id.encode()
        traffic.add_bad(key, value, reason, rng)
    await produce(settings, settings.topic_events, traffic.records)

    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        counts = await wait_until_scored(settings, traffic, worker)
        dead = await read_all(settings, settings.topic_dead_letter, until=len(traffic.bad))
    finally:
        worker.stop()

    assert counts == dict(traffic.events_per_user)
    rows = await alert_rows(settings)
    assert Counter((user, kind) for _, user, kind in rows) == expected_alerts(traffic)
    reasons = {r.value: dict(r.headers)["clickscore.reason"].decode() for r in dead}
    assert reasons == traffic.bad  # every bad message, original bytes, with its reason
    assert set(reasons.values()) <= set(REASONS) | {"key_mismatch"}
    for record in dead:
        assert dict(record.headers)["clickscore.detail"], "every dead letter says why"
    assert "x" * 200 not in worker.log_path.read_text(), "payloads are never logged"
    print(f"\nreasons seen: {dict(Counter(reasons.values()))}")
    result = await tally(settings, "hostile input", dict(traffic.events_per_user))
    assert (result.lost, result.duplicated) == (0, 0)


async def test_a_hot_key_is_burst_flagged_bounded_and_does_not_starve_others(
    settings: Settings, tmp_path: Path
) -> None:
    settings = worker_settings(settings)
    await prepare(settings)
    now_ms = int(time.time() * 1000)
    traffic = build_traffic(now_ms, users=200, events_per_user=5)
    hot, flood_size = "hot-1", 5_000
    start = now_ms - 120_000
    # 5,000 events within one second of event time.
    flood = [
        (hot.encode(), event_to_json(Event(f"{hot}-{n}", hot, start + n // 5, "view")))
        for n in range(flood_size)
    ]
    # Interleave: other users' traffic between ten slices of the flood, in order.
    others, pieces = traffic.records, 10
    merged: list[tuple[bytes | None, bytes]] = []
    for i in range(pieces):
        merged += others[i * len(others) // pieces : (i + 1) * len(others) // pieces]
        merged += flood[i * flood_size // pieces : (i + 1) * flood_size // pieces]
    traffic.records = merged
    traffic.events_per_user[hot] = flood_size
    await produce(settings, settings.topic_events, traffic.records)

    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        counts = await wait_until_scored(settings, traffic, worker)
    finally:
        worker.stop()
    assert counts == dict(traffic.events_per_user)

    # Burst-flagged once (and the rules model's anomaly once), nothing else for it.
    rows = await alert_rows(settings)
    expected = expected_alerts(traffic) + Counter({(hot, "burst"): 1, (hot, "anomaly"): 1})
    assert Counter((user, kind) for _, user, kind in rows) == expected

    # Its state stays bounded: every changelog record of the hot user holds at most
    # sequence_length events, however many it sent.
    changelog = f"{settings.consumer_group}-{TABLE_NAME}-changelog"
    states = [
        UserState.from_bytes(r.value)
        for r in await read_all(settings, changelog, idle_s=2.0)
        if r.key == hot.encode()
    ]
    assert states and states[-1].event_count == flood_size
    assert max(s.tokens.shape[0] for s in states) == settings.sequence_length
    biggest = max(len(s.to_bytes()) for s in states)
    assert biggest < 2_000

    # Other users are scored while the flood is being worked through, not after it.
    scores = [orjson.loads(r.value) for r in await read_all(settings, settings.topic_scores)]
    hot_scores = sorted(s["scored_at_ms"] for s in scores if s["user_id"] == hot)
    flood_began, flood_done = hot_scores[0], hot_scores[-1]
    other_first = {}
    for s in scores:
        if s["user_id"] != hot:
            other_first.setdefault(s["user_id"], s["scored_at_ms"])
            other_first[s["user_id"]] = min(other_first[s["user_id"]], s["scored_at_ms"])
    during = sum(flood_began <= t <= flood_done for t in other_first.values())
    print(
        f"\nhot key: {flood_size} events in 1 s of event time, scored in {len(hot_scores)} "
        f"windows over {(flood_done - flood_began) / 1000:.2f} s; state at most {biggest} bytes "
        f"({settings.sequence_length} events); {during} of {len(other_first)} other users "
        "first scored while the flood was in progress"
    )
    assert len(other_first) == len(traffic.users) - 1
    assert during >= len(other_first) // 2
    result = await tally(settings, "hot key", dict(traffic.events_per_user))
    assert (result.lost, result.duplicated) == (0, 0)
