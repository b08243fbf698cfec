"""Users who went quiet before a worker stopped are still re-scored, and churners alerted once:
after a SIGTERM and a restart, after a SIGKILL and a restart, and after one of two workers in
the group stopped for good and its partitions moved. Real worker processes against the real
broker, Triton (the rules model) and Postgres.

The quiet users' events are scored and their offsets committed before the fault, so the next
worker does not read them again: what it knows of them comes from the table alone (a worker
that re-read their events would put them back in its index and hide a lost one).

Event time then moves on in steps, by other users' events on every partition:

    before the fault  +10 min, +1.5 h   each quiet user re-scored at 1 h
    after it          +1.75 h           nothing new is due (a worker that forgot the 1 h
                                        re-score would score it again here)
                      +5 h              4 h (2 h passed too: one re-score); churn risk 0.82
                                        crosses 0.8 under the rules model: one alert each
                      +20 h, +3 d, +6 d 16 h, 64 h, 128 h

So every quiet user must end with exactly five silent scores, at 1, 4, 16, 64 and 128 hours,
and exactly one churn alert.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter, defaultdict
from pathlib import Path

import orjson
import pytest

from stream.contract.events import Event
from stream.settings import Settings
from tests.support.checks import (
    alert_rows,
    committed_total,
    prepare,
    wait_until_scored,
    worker_settings,
)
from tests.support.kafka import produce, read_all
from tests.support.traffic import MINUTE_MS, Traffic
from tests.support.worker import WorkerProcess

pytestmark = pytest.mark.integration

HOUR_MS = 60 * MINUTE_MS
QUIET_USERS = 40
CLOCK_USERS = 40  # over 4 partitions: each partition gets some (the keys are fixed)
BEFORE_FAULT_H = (1 / 6, 1.5)
AFTER_FAULT_H = (1.75, 5, 20, 72, 144)
EXPECTED_LEVELS_H = [1, 4, 16, 64, 128]


def _quiet_traffic(last_ms: int) -> Traffic:
    """A day of visits 30 minutes apart per quiet user (churn risk 0.73: no alert while they
    visit), the last at `last_ms`."""
    traffic = Traffic()
    for u in range(QUIET_USERS):
        for n in range(51):
            ts = last_ms - (50 - n) * 30 * MINUTE_MS
            traffic.add(Event(f"quiet-{u}-{n}", f"quiet-{u}", ts, "view", item_id=f"i{n}"))
    return traffic


def _clock_step(step: int, ts_ms: int) -> Traffic:
    """One event of every clock user at `ts_ms`: every partition's event time moves there."""
    traffic = Traffic()
    for u in range(CLOCK_USERS):
        user = f"clock-{u}"
        traffic.add(Event(f"{user}-{step}", user, ts_ms, "view", item_id="i1"))
    return traffic


async def _committed_everything(settings: Settings, produced: int, worker: WorkerProcess) -> None:
    """Until the group's committed offsets cover every event produced so far."""
    deadline = time.monotonic() + 60
    while await committed_total(settings) < produced:
        assert worker.alive(), worker.log_tail()
        assert time.monotonic() < deadline, f"offsets not committed:\n{worker.log_tail()}"
        await asyncio.sleep(0.5)


async def _silence_levels(settings: Settings) -> dict[str, list[int]]:
    """Each quiet user's silent re-scores on the scores topic, as hours of silence."""
    levels: dict[str, list[int]] = defaultdict(list)
    for record in await read_all(settings, settings.topic_scores, idle_s=1.5):
        score = orjson.loads(record.value)
        if score["user_id"].startswith("quiet-") and score.get("trigger") == "silence":
            levels[score["user_id"]].append(score["silence_ms"] // HOUR_MS)
    return levels


async def _run_steps(
    settings: Settings,
    steps: tuple[float, ...],
    last_ms: int,
    first_step: int,
    expected: dict[str, int],
    worker: WorkerProcess,
) -> None:
    for n, hours in enumerate(steps, first_step):
        step = _clock_step(n, last_ms + int(hours * HOUR_MS))
        await produce(settings, settings.topic_events, step.records)
        for user, count in step.events_per_user.items():
            expected[user] = expected.get(user, 0) + count
        await wait_until_scored(settings, expected, worker)


@pytest.mark.parametrize("fault", ["sigterm", "sigkill", "rebalance"])
async def test_quiet_users_are_rescored_and_alerted_once_after_the_fault(
    settings: Settings, tmp_path: Path, fault: str
) -> None:
    silent = {"silent_rescore_after_s": 3600, "silent_rescore_max_s": 7 * 86_400}
    settings = worker_settings(settings, **silent)
    await prepare(settings)
    last_ms = int(time.time() * 1000) - 7 * 24 * HOUR_MS
    quiet = _quiet_traffic(last_ms)
    expected = dict(quiet.events_per_user)
    produced = await produce(settings, settings.topic_events, quiet.records)

    first = WorkerProcess(settings, tmp_path / "first.log").start()
    # In the rebalance case a second worker of the same group shares the partitions from the
    # start and stays; the first one stops for good.
    other = worker_settings(settings, **silent) if fault == "rebalance" else settings
    survivor = WorkerProcess(other, tmp_path / "survivor.log")
    if fault == "rebalance":
        survivor.start()
        survivor.wait_ready()
    try:
        await wait_until_scored(settings, expected, first)
        await _run_steps(settings, BEFORE_FAULT_H, last_ms, 0, expected, first)
        produced += CLOCK_USERS * len(BEFORE_FAULT_H)
        await _committed_everything(settings, produced, first)
        before = await _silence_levels(settings)
        assert before == {u: [1] for u in quiet.users}, before  # the 1 h level, once each

        if fault == "sigkill":
            first.kill()
        else:
            first.terminate()
        if fault != "rebalance":
            survivor.start()
        survivor.wait_ready()
        await _run_steps(settings, AFTER_FAULT_H, last_ms, 10, expected, survivor)
        deadline = time.monotonic() + 60
        levels = await _silence_levels(settings)
        while time.monotonic() < deadline and any(
            levels.get(u) != EXPECTED_LEVELS_H for u in quiet.users
        ):
            assert survivor.alive(), survivor.log_tail()
            await asyncio.sleep(1)
            levels = await _silence_levels(settings)
        alerts = await alert_rows(settings)
        kafka_alerts = [
            orjson.loads(r.value) for r in await read_all(settings, settings.topic_alerts)
        ]
        events = await read_all(settings, settings.topic_events, idle_s=1.0)
    finally:
        first.stop()
        survivor.stop()

    # The quiet users the next worker had to learn from the table: all of them after a
    # restart, those of the stopped worker's partitions after a rebalance.
    partition_of = {r.key.decode(): r.partition for r in events if r.key is not None}
    taken_over = _last_assignment(first, settings.topic_events)
    moved = [u for u in sorted(quiet.users) if partition_of[u] in taken_over]
    rescored = [u for u in moved if levels.get(u, [])[1:] == EXPECTED_LEVELS_H[1:]]
    print(
        f"\n{fault}: {len(rescored)} of {len(moved)} quiet users on the partitions the next "
        f"worker took over re-scored at every level after the fault "
        f"({len(quiet.users)} quiet users in all)"
    )
    if fault == "rebalance":
        assert 0 < len(moved) < len(quiet.users)  # the first worker owned some of them
    assert {u: levels.get(u) for u in quiet.users} == {u: EXPECTED_LEVELS_H for u in quiet.users}
    churn = Counter(user for _, user, kind in alerts if kind == "churn")
    assert {u: churn[u] for u in quiet.users} == {u: 1 for u in quiet.users}
    on_topic = Counter(a["user_id"] for a in kafka_alerts if a["kind"] == "churn")
    assert {u: on_topic[u] for u in quiet.users} == {u: 1 for u in quiet.users}


def _last_assignment(worker: WorkerProcess, topic: str) -> set[int]:
    """The partitions of `topic` in the worker's last assignment, as aiokafka logged it."""
    pattern = re.compile(rf"TopicPartition\(topic='{re.escape(topic)}', partition=(\d+)\)")
    lines = [
        line
        for line in worker.log_path.read_text().splitlines()
        if "Setting newly assigned partitions" in line
    ]
    assert lines, f"no assignment logged:\n{worker.log_tail()}"
    return {int(p) for p in pattern.findall(lines[-1])}
