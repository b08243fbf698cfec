"""`clickscore actions` against the real broker, PostgreSQL and a real HTTP webhook: one
retention action per churn alert, replays change nothing, delivered actions are not re-POSTed."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine

from stream.db import migrate
from stream.db.models import RetentionAction
from stream.ops.actions import ActionStats, run_actions
from stream.scoring.alerts import Alert, alert_to_json
from stream.settings import Settings
from tests.conftest import make_settings

pytestmark = pytest.mark.integration

T0_MS = 1_790_000_000_000


def churn_alert(user: str, kind: str = "churn") -> Alert:
    return Alert(
        alert_id=uuid.uuid4().hex,
        user_id=user,
        kind=kind,
        score=0.91,
        threshold=0.8,
        model_version="1",
        event_ids=(f"{user}-e1", f"{user}-e2"),
        event_ts_ms=T0_MS,
        reason="churn risk 0.91 crossed 0.80",
    )


def actions_settings(settings: Settings, **overrides: Any) -> Settings:
    # The per-test fixture does not know this service's group: give it one of its own, and
    # short backoffs so the webhook retry does not slow the test.
    base = settings.model_dump()
    base.update(actions_group=f"actions-{uuid.uuid4().hex[:10]}", retry_max_backoff_s=0.2)
    base.update(overrides)
    return make_settings(**base)


async def prepare(settings: Settings) -> None:
    await asyncio.to_thread(migrate.upgrade, settings)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.broker_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(settings.topic_alerts, 2, replication_factor=1)])
    finally:
        await admin.close()


async def produce(settings: Settings, records: Sequence[tuple[str, bytes]]) -> dict[Any, int]:
    """Send keyed records one by one; return the next offset per partition."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.broker_servers)
    await producer.start()
    ends: dict[Any, int] = {}
    try:
        for key, value in records:
            meta = await producer.send_and_wait(
                settings.topic_alerts, key=key.encode(), value=value
            )
            tp = TopicPartition(meta.topic, meta.partition)
            ends[tp] = max(ends.get(tp, 0), meta.offset + 1)
    finally:
        await producer.stop()
    return ends


async def committed(settings: Settings, partitions: Sequence[Any]) -> dict[Any, int]:
    # A consumer of the service's group that subscribes to nothing never joins the group, so
    # it reads the group's commits without taking partitions away. (The admin client's
    # list_consumer_group_offsets cannot decode tansu's reply.)
    reader = AIOKafkaConsumer(
        bootstrap_servers=settings.broker_servers,
        group_id=settings.actions_group,
        enable_auto_commit=False,
    )
    await reader.start()
    try:
        return {tp: (await reader.committed(tp)) or -1 for tp in partitions}
    finally:
        await reader.stop()


async def run_until_committed(settings: Settings, ends: dict[Any, int]) -> ActionStats:
    """Run the service in-process until it has committed past every record in `ends`.

    A commit comes only after the batch's rows and webhook calls are done, so this waits for
    the work itself, not for a fixed time.
    """
    stop = asyncio.Event()
    service = asyncio.create_task(run_actions(settings, stop=stop))
    try:
        async with asyncio.timeout(60):
            while True:
                assert not service.done(), service.exception()
                done = await committed(settings, list(ends))
                if all(done.get(tp, -1) >= end for tp, end in ends.items()):
                    break
                await asyncio.sleep(0.5)
    finally:
        stop.set()
    return await asyncio.wait_for(service, 30)


async def action_rows(settings: Settings) -> dict[str, dict[str, Any]]:
    engine = create_async_engine(settings.database_url)
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(select(RetentionAction.__table__))).mappings().all()
    finally:
        await engine.dispose()
    return {row["alert_id"]: dict(row) for row in rows}


async def test_one_action_per_churn_alert_and_replays_change_nothing(settings: Settings) -> None:
    service_settings = actions_settings(settings)
    await prepare(service_settings)
    churn = [churn_alert(f"user-{i}") for i in range(3)]
    records = [(a.user_id, alert_to_json(a)) for a in churn]
    records += [("user-9", alert_to_json(churn_alert("user-9", kind="anomaly")))]
    records += [("user-0", b'{"alert_id": "half a record')]
    records += [("user-0", alert_to_json(churn[0]))]  # a duplicate inside one run

    stats = await run_until_committed(service_settings, await produce(service_settings, records))
    assert (stats.churn, stats.ignored, stats.malformed) == (4, 1, 1)
    rows = await action_rows(service_settings)
    assert set(rows) == {a.alert_id for a in churn}
    for a in churn:
        row = rows[a.alert_id]
        assert (row["user_id"], row["action"], row["status"]) == (
            a.user_id,
            "retention_offer",
            "recorded",
        )
        assert row["attempts"] == 0 and row["delivered_at"] is None

    # The same alerts again, as after a worker replay: read, and still one action each.
    replay = await produce(service_settings, records)
    stats = await run_until_committed(service_settings, replay)
    assert stats.churn == 4, "the replayed alerts were consumed"
    assert await action_rows(service_settings) == rows


@dataclass
class Webhook:
    """A real HTTP endpoint that refuses its first request with 500 and records the rest."""

    fail_first: int = 1
    refused: list[str] = field(default_factory=list)
    accepted: list[tuple[str, bytes]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        key = request.headers.get("Idempotency-Key", "")
        body = await request.read()
        if len(self.refused) < self.fail_first:
            self.refused.append(key)
            return web.Response(status=500, text="try again")
        self.accepted.append((key, body))
        return web.Response(status=204)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def webhook() -> AsyncIterator[tuple[Webhook, str]]:
    hook = Webhook()
    app = web.Application()
    app.router.add_post("/actions", hook.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = _free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield hook, f"http://127.0.0.1:{port}/actions"
    await runner.cleanup()


async def test_webhook_delivery_retries_and_is_not_repeated_on_replay(
    settings: Settings, webhook: tuple[Webhook, str]
) -> None:
    hook, url = webhook
    service_settings = actions_settings(settings, webhook_url=url)
    await prepare(service_settings)
    churn = [churn_alert(f"user-{i}") for i in range(4)]
    records = [(a.user_id, alert_to_json(a)) for a in churn]
    records += [("user-9", alert_to_json(churn_alert("user-9", kind="anomaly")))]

    stats = await run_until_committed(service_settings, await produce(service_settings, records))
    assert (stats.delivered, stats.failed) == (4, 0)
    assert len(hook.refused) == 1 and hook.refused[0] in {a.alert_id for a in churn}
    assert sorted(hook.accepted) == sorted((a.alert_id, alert_to_json(a)) for a in churn)
    rows = await action_rows(service_settings)
    assert {r["status"] for r in rows.values()} == {"delivered"}
    assert all(r["delivered_at"] is not None and r["last_error"] is None for r in rows.values())
    assert sorted(r["attempts"] for r in rows.values()) == [1, 1, 1, 2]

    replay = await produce(service_settings, records)
    stats = await run_until_committed(service_settings, replay)
    assert stats.churn == 4 and stats.delivered == 0
    assert len(hook.accepted) == 4, "a delivered action is never POSTed again"
    assert await action_rows(service_settings) == rows


async def test_webhook_gives_up_after_max_attempts_and_retries_on_replay(
    settings: Settings, webhook: tuple[Webhook, str]
) -> None:
    hook, url = webhook
    hook.fail_first = 3  # both attempts of the first run fail, and the replay's first
    service_settings = actions_settings(settings, webhook_url=url, webhook_max_attempts=2)
    await prepare(service_settings)
    a = churn_alert("user-1")
    records = [(a.user_id, alert_to_json(a))]

    stats = await run_until_committed(service_settings, await produce(service_settings, records))
    assert (stats.delivered, stats.failed) == (0, 1)
    row = (await action_rows(service_settings))[a.alert_id]
    assert (row["status"], row["attempts"], row["last_error"]) == ("failed", 2, "HTTP 500")

    # A failed action is not delivered, so a replay of its alert tries it again.
    stats = await run_until_committed(service_settings, await produce(service_settings, records))
    assert (stats.delivered, stats.failed) == (1, 0)
    row = (await action_rows(service_settings))[a.alert_id]
    assert (row["status"], row["attempts"], row["last_error"]) == ("delivered", 4, None)
    assert [key for key, _ in hook.accepted] == [a.alert_id]
