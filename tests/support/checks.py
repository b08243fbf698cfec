"""What the worker tests observe and count: Postgres rows, metrics, committed offsets."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from stream.db import migrate
from stream.settings import Settings
from tests.conftest import RULES_MODEL, free_port, make_settings
from tests.support.kafka import create_topics, read_all
from tests.support.traffic import Traffic
from tests.support.worker import WorkerProcess


def worker_settings(
    settings: Settings, table_store: str = "memory://", **changes: object
) -> Settings:
    return make_settings(
        **{
            **settings.model_dump(),
            "table_store": table_store,
            "triton_model": RULES_MODEL,  # scores the alerts can be predicted from
            # The local broker misreports end offsets of multi-record batches, which Faust
            # reads to restore tables; one record per batch restores them exactly.
            "producer_max_batch_size": 1,
            "metrics_port": free_port(),
            "worker_web_port": free_port(),
            **changes,
        }
    )


async def prepare(settings: Settings) -> None:
    await asyncio.to_thread(migrate.upgrade, settings)
    topics = [
        settings.topic_events,
        settings.topic_scores,
        settings.topic_alerts,
        settings.topic_dead_letter,
    ]
    await create_topics(settings, topics, settings.topic_partitions)


async def scored_event_counts(settings: Settings) -> dict[str, int]:
    engine = create_async_engine(settings.database_url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(text("SELECT user_id, event_count FROM user_scores"))
            return {user: count for user, count in rows}
    finally:
        await engine.dispose()


async def alert_rows(settings: Settings) -> list[tuple[str, str, str]]:
    engine = create_async_engine(settings.database_url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(text("SELECT alert_id, user_id, kind FROM alerts"))
            return [tuple(r) for r in rows]  # type: ignore[misc]
    finally:
        await engine.dispose()


async def wait_until_scored(
    settings: Settings,
    expected: Traffic | dict[str, int],
    worker: WorkerProcess,
    timeout_s: float = 120,
) -> dict[str, int]:
    """Until every user's score reflects all of their distinct events."""
    if isinstance(expected, Traffic):
        expected = dict(expected.events_per_user)
    deadline = time.monotonic() + timeout_s
    counts: dict[str, int] = {}
    while time.monotonic() < deadline:
        assert worker.alive(), f"worker died:\n{worker.log_tail()}"
        counts = await scored_event_counts(settings)
        if counts == expected:
            return counts
        await asyncio.sleep(0.5)
    missing = {u: (counts.get(u), n) for u, n in expected.items() if counts.get(u) != n}
    raise AssertionError(
        f"{len(missing)} users not fully scored, e.g. {list(missing.items())[:5]}\n"
        f"{await consumption_report(settings, worker)}\n{worker.log_tail()}\n"
        f"task dump:\n{worker.task_dump()}"
    )


async def consumption_report(settings: Settings, worker: WorkerProcess) -> str:
    """Where consumption stands, per partition of the events topic: what the topic holds,
    what the worker's group committed, and the worker's own counters (for a failure)."""
    records = await read_all(settings, settings.topic_events, idle_s=1.0)
    ends = Counter[int]()
    for record in records:
        ends[record.partition] = max(ends[record.partition], record.offset + 1)
    committed = await committed_offsets(settings)
    try:
        exposition = scrape_metrics(settings) if worker.alive() else "(worker not running)"
        counters = [line for line in exposition.splitlines() if line.startswith("clickscore_")]
    except OSError as exc:
        counters = [f"(metrics unavailable: {exc})"]
    lines = [f"partition {p}: end {ends[p]}, committed {committed[p]}" for p in sorted(committed)]
    return "\n".join(lines + counters[:30])


def scrape_metrics(settings: Settings) -> str:
    url = f"http://{settings.metrics_host}:{settings.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def metric(exposition: str, name: str) -> float:
    for line in exposition.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not exposed")


async def wait_for_metric(
    settings: Settings,
    worker: WorkerProcess,
    prefix: str,
    *,
    at_least: float,
    timeout_s: float = 90,
) -> float:
    """Until the worker's samples starting with `prefix` add up to `at_least`; their sum."""
    deadline = time.monotonic() + timeout_s
    value = 0.0
    while time.monotonic() < deadline:
        assert worker.alive(), f"worker died:\n{worker.log_tail()}"
        try:
            value = metric_sum(await asyncio.to_thread(scrape_metrics, settings), prefix)
        except OSError:
            value = 0.0  # not serving yet
        if value >= at_least:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"{prefix} stayed at {value} < {at_least}\n{worker.log_tail()}")


def expected_alerts(traffic: Traffic) -> Counter[tuple[str, str]]:
    return Counter(
        {(traffic.churner, "churn"): 1, (traffic.bot, "anomaly"): 1, (traffic.bot, "burst"): 1}
    )


async def committed_offsets(settings: Settings) -> dict[int, int | None]:
    """The worker group's committed offset per partition of the events topic (without
    joining the group); None where it committed nothing."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.broker_servers, group_id=settings.consumer_group
    )
    await consumer.start()
    try:
        return {
            p: await consumer.committed(TopicPartition(settings.topic_events, p))
            for p in range(settings.topic_partitions)
        }
    finally:
        await consumer.stop()


async def committed_total(settings: Settings) -> int:
    """Sum of the worker group's committed offsets on the events topic."""
    return sum(o or 0 for o in (await committed_offsets(settings)).values())


@dataclass
class Tally:
    """The counts a fault test ends with, printed as a small table in the run log."""

    fault: str
    events_in: int
    users: int
    kafka_scores: int
    kafka_users_scored: int
    pg_users_scored: int
    kafka_alerts: int
    pg_alerts: int
    lost: int
    duplicated: int

    def table(self) -> str:
        rows = [
            ("events in (valid, distinct)", self.events_in),
            ("users", self.users),
            ("scores in Kafka (records)", self.kafka_scores),
            ("users scored in Kafka", self.kafka_users_scored),
            ("users scored in Postgres", self.pg_users_scored),
            ("alerts in Kafka (records)", self.kafka_alerts),
            ("alerts in Postgres", self.pg_alerts),
            ("lost (events not in Postgres counts)", self.lost),
            ("duplicated (Postgres)", self.duplicated),
        ]
        width = max(len(name) for name, _ in rows)
        lines = [f"--- {self.fault} ---"] + [f"{name:<{width}}  {n:>8}" for name, n in rows]
        return "\n".join(lines)


async def tally(settings: Settings, fault: str, expected: dict[str, int]) -> Tally:
    """Count what reached Kafka and Postgres against the events that went in.

    lost: distinct events whose effect is missing from a user's Postgres event_count (or
    users missing entirely); duplicated: events counted twice in Postgres plus repeated
    alert rows per (user, kind, alert_id).
    """
    counts = await scored_event_counts(settings)
    alerts = await alert_rows(settings)
    scores = [orjson.loads(r.value) for r in await read_all(settings, settings.topic_scores)]
    kafka_alerts = await read_all(settings, settings.topic_alerts, idle_s=1.0)
    lost = sum(max(0, n - counts.get(user, 0)) for user, n in expected.items())
    duplicated = sum(max(0, counts.get(user, 0) - n) for user, n in expected.items())
    duplicated += len(alerts) - len({a for a, _, _ in alerts})
    result = Tally(
        fault=fault,
        events_in=sum(expected.values()),
        users=len(expected),
        kafka_scores=len(scores),
        kafka_users_scored=len({s["user_id"] for s in scores}),
        pg_users_scored=len(counts),
        kafka_alerts=len(kafka_alerts),
        pg_alerts=len(alerts),
        lost=lost,
        duplicated=duplicated,
    )
    print("\n" + result.table())
    return result


def metric_sum(exposition: str, prefix: str) -> float:
    """Sum of every sample whose name and labels start with `prefix` (0 if none)."""
    return sum(
        float(line.split()[-1])
        for line in exposition.splitlines()
        if line.startswith(prefix) and not line.startswith("#")
    )


def rss_mb(pid: int) -> float:
    """Resident memory of a process, from /proc/<pid>/status (VmRSS, in kB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")
