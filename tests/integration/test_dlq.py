"""`clickscore dlq replay` against the real broker, worker and Postgres."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest

from stream.contract.events import Event, event_to_json
from stream.ops import dlq
from stream.settings import Settings
from tests.support.checks import prepare, scored_event_counts, tally, wait_until_scored
from tests.support.checks import worker_settings as base_worker_settings
from tests.support.kafka import produce, read_all
from tests.support.worker import WorkerProcess

pytestmark = pytest.mark.integration
DAY_MS = 86_400_000


def test_cli_parses() -> None:
    parser = argparse.ArgumentParser()
    dlq.add_parsers(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["dlq", "replay", "--reason", "bad_json", "--limit", "5"])
    assert (args.reason, args.limit, args.handler) == ("bad_json", 5, dlq._replay_command)


async def test_replay_after_a_fix_scores_every_event_once(
    settings: Settings, tmp_path: Path
) -> None:
    # The "bug": a worker deployed with a one-hour age limit dead-letters a two-day backfill.
    strict = base_worker_settings(settings, max_event_age_s=3_600)
    await prepare(strict)
    now_ms = int(time.time() * 1000)
    records: list[tuple[bytes | None, bytes]] = []
    expected: Counter[str] = Counter()
    for u in range(40):
        user = f"user-{u}"
        old = u < 25  # 25 backfilled users (100 events), 15 live ones
        start = now_ms - (2 * DAY_MS if old else 600_000)
        for n in range(4):
            event = Event(f"{user}-{n}", user, start + n * 30_000, "view", item_id=f"i{n}")
            records.append((user.encode(), event_to_json(event)))
            expected[user] += 1
    records += [(b"mallory", b"{broken %d" % i) for i in range(3)]  # stays bad
    await produce(strict, strict.topic_events, records)

    log = tmp_path / "worker.log"
    worker = WorkerProcess(strict, log).start()
    try:
        live = {f"user-{u}": 4 for u in range(25, 40)}
        await wait_until_scored(strict, live, worker)
        dead = await read_all(strict, strict.topic_dead_letter, until=103)
    finally:
        worker.stop()
    reasons = Counter(dict(r.headers)["clickscore.reason"].decode() for r in dead)
    assert reasons == {"timestamp_out_of_range": 100, "bad_json": 3}

    # The fix is deployed (the default 30-day limit), and once the fixed worker is up, the
    # dead letters are replayed in two steps, then once more: the operators' order. (A worker
    # started with the replayed events already waiting is test_faults.py's restart test.)
    fixed = base_worker_settings(settings)
    worker = WorkerProcess(fixed, log).start()
    try:
        await asyncio.to_thread(worker.wait_ready)
        why = "timestamp_out_of_range"
        first = await dlq.replay_dead_letters(fixed, reason=why, limit=40, idle_s=2)
        rest = await dlq.replay_dead_letters(fixed, reason=why, idle_s=2)
        again = await dlq.replay_dead_letters(fixed, reason=why, idle_s=2)
        assert (first.replayed, rest.replayed, again.replayed) == (40, 60, 0)
        # The bad JSON is left alone, by whichever run reaches its partition first.
        assert first.skipped + rest.skipped + again.skipped == 3
        counts = await wait_until_scored(fixed, dict(expected), worker)
    finally:
        worker.stop()
    assert counts == dict(expected)

    # The tool sent each dead letter once, with the original key and bytes.
    events = await read_all(fixed, fixed.topic_events)
    replayed = [r for r in events if dlq.REPLAYED_HEADER in dict(r.headers)]
    assert len(replayed) == 100
    assert len({dict(r.headers)[dlq.REPLAYED_HEADER] for r in replayed}) == 100
    originals = {r.value: r.key for r in dead if r.value.startswith(b"{")}
    assert all(originals[r.value] == r.key for r in replayed)
    assert {orjson.loads(r.value)["user_id"] for r in replayed} == {f"user-{u}" for u in range(25)}
    assert len(await scored_event_counts(fixed)) == 40
    result = await tally(fixed, "dead-letter replay", dict(expected))
    assert (result.lost, result.duplicated) == (0, 0)
