"""`replay` against the real broker: every event arrives, keyed by its user, shifted to now."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import defaultdict
from pathlib import Path

import pytest
from aiokafka.structs import ConsumerRecord

from stream.contract.events import Event, ValidationLimits, parse_event
from stream.datasets.synthetic import SyntheticConfig, generate, read_jsonl
from stream.ops.replay import add_parsers, replay
from stream.settings import Settings
from tests.support.kafka import read_all

pytestmark = pytest.mark.integration

Records = list[ConsumerRecord[bytes, bytes]]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _received(records: Records, now_ms: int, settings: Settings) -> list[Event]:
    """Parsed as the worker would, each checked to be keyed by its user."""
    limits = ValidationLimits(max_age_s=settings.max_event_age_s)
    events = []
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        assert record.value is not None
        event = parse_event(record.value, now_ms, limits)
        assert isinstance(event, Event), event
        assert record.key == event.user_id.encode()
        events.append(event)
    return events


async def test_replay_sends_every_event_keyed_shifted_to_now(settings: Settings) -> None:
    sent, _ = generate(SyntheticConfig(users=25, days=2, seed=4))
    before_ms = _now_ms()
    # Reversed: replay must put them back in time order itself.
    stats = await replay(settings, reversed(sent), rate=0, shift_to_now=True)
    after_ms = _now_ms()
    assert stats.sent == len(sent) and stats.too_old == 0

    got = _received(
        await read_all(settings, settings.topic_events, until=len(sent)), after_ms, settings
    )
    by_id = {e.event_id: e for e in got}
    assert len(got) == len(sent) and by_id.keys() == {e.event_id for e in sent}
    # One constant shift: the newest lands at now, every gap is kept.
    assert before_ms - 1_000 <= max(e.ts_ms for e in got) <= after_ms
    assert {by_id[e.event_id].ts_ms - e.ts_ms for e in sent} == {stats.shift_ms}
    # Each user's events sit in one partition in time order, as the worker needs them.
    per_user: dict[str, list[int]] = defaultdict(list)
    for event in got:
        per_user[event.user_id].append(event.ts_ms)
    assert all(times == sorted(times) for times in per_user.values())


async def test_paced_replay_keeps_recorded_times(settings: Settings) -> None:
    now_ms = _now_ms()
    events = [Event(f"p{n}", f"user-{n % 3}", now_ms - 60_000 + n, "view") for n in range(60)]
    started = time.monotonic()
    stats = await replay(settings, events, rate=200, shift_to_now=False)
    # 60 events at 200/s after a first burst of 20 take at least 0.2 s.
    assert time.monotonic() - started >= 0.2
    assert stats.shift_ms == 0
    got = _received(await read_all(settings, settings.topic_events, until=60), _now_ms(), settings)
    assert sorted(e.ts_ms for e in got) == [e.ts_ms for e in events]


def test_generate_then_replay_the_file_through_the_commands(
    settings: Settings, tmp_path: Path
) -> None:
    # Synchronous: the command handlers run their own event loop, as under `clickscore`.
    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers())
    out, truth = tmp_path / "events.jsonl", tmp_path / "truth.json"
    args = parser.parse_args(
        ["generate", str(out), "--users", "8", "--days", "1", "--truth", str(truth)]
    )
    assert args.handler(settings, args) == 0
    assert truth.is_file()
    first = [e.event_id for e in read_jsonl(out)][:50]

    args = parser.parse_args(["replay", "jsonl", str(out), "--limit", "50"])
    assert args.handler(settings, args) == 0
    records = asyncio.run(read_all(settings, settings.topic_events, until=50))
    assert sorted(e.event_id for e in _received(records, _now_ms(), settings)) == sorted(first)

    args = parser.parse_args(["replay", "taobao", str(tmp_path / "missing.csv")])
    assert args.handler(settings, args) == 2
