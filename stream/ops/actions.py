"""`clickscore actions`: turns churn alerts from the alerts topic into retention actions.

A consumer of its own group reads the alerts topic, records one `retention_actions` row per
churn alert (insert-if-absent on the alert id) and, when a webhook is configured, POSTs each
action not yet delivered with an `Idempotency-Key` header. Offsets are committed only after a
batch's rows and webhook attempts are done: at-least-once delivery, made exactly-once in effect
by the alert id.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from stream.db.models import RetentionAction
from stream.kafka_security import aiokafka_options
from stream.ops import action_metrics
from stream.retry import backoff_delays, retry_forever, summary
from stream.settings import ActionsSettings
from stream.sinks.postgres import create_engine, insert_for, is_retriable_db_error
from stream.worker.alerts import CHURN

log = logging.getLogger(__name__)
T = TypeVar("T")

ACTION = "retention_offer"
RECORDED, DELIVERED, FAILED = "recorded", "delivered", "failed"
TABLE: Table = RetentionAction.__table__  # type: ignore[assignment]
# Parallel POSTs per batch: enough to hide one slow response, few enough not to flood a
# downstream service that is struggling.
WEBHOOK_CONCURRENCY = 8
# A stop waits this long for the batch in hand before cancelling it; its offsets are not
# committed, so the next start redoes it.
STOP_GRACE_S = 10.0
POLL_TIMEOUT_MS = 500


@dataclass(frozen=True)
class ChurnAlert:
    alert_id: str
    user_id: str
    body: bytes  # the record as read: POSTed unchanged


@dataclass
class ActionStats:
    churn: int = 0
    ignored: int = 0
    malformed: int = 0
    delivered: int = 0
    failed: int = 0


class MalformedAlert(ValueError):
    pass


def parse_alert(value: bytes | None) -> ChurnAlert | None:
    """The churn alert in an alerts-topic record, None for another kind of alert."""
    try:
        doc: Any = orjson.loads(value or b"")
    except orjson.JSONDecodeError as exc:
        raise MalformedAlert(f"not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise MalformedAlert("not a JSON object")
    alert_id, user_id, kind = doc.get("alert_id"), doc.get("user_id"), doc.get("kind")
    if not isinstance(kind, str):
        raise MalformedAlert("no kind")
    if not isinstance(alert_id, str) or not 0 < len(alert_id) <= 64:
        raise MalformedAlert("no alert_id of 1-64 characters")
    if not isinstance(user_id, str) or not 0 < len(user_id) <= 256:
        raise MalformedAlert("no user_id of 1-256 characters")
    if kind != CHURN:
        return None
    assert value is not None
    return ChurnAlert(alert_id=alert_id, user_id=user_id, body=value)


def churn_alerts(
    records: Sequence[ConsumerRecord[Any, Any]], stats: ActionStats
) -> list[ChurnAlert]:
    """The batch's churn alerts, each alert id once; others are counted, bad ones logged."""
    found: dict[str, ChurnAlert] = {}
    for record in records:
        try:
            alert = parse_alert(record.value)
        except MalformedAlert as exc:
            # Our own output, so a bug upstream: log where it is and go on rather than stall.
            stats.malformed += 1
            log.error(
                "malformed alert skipped at %s[%d]@%d: %s",
                record.topic,
                record.partition,
                record.offset,
                exc,
            )
            continue
        if alert is None:
            stats.ignored += 1
            continue
        stats.churn += 1
        found.setdefault(alert.alert_id, alert)
    return list(found.values())


@dataclass(frozen=True)
class Outcome:
    alert_id: str
    delivered: bool
    attempts: int
    error: str | None


class ActionStore:
    """The retention_actions table."""

    def __init__(self, engine: AsyncEngine, settings: ActionsSettings) -> None:
        self._engine = engine
        self._settings = settings
        self._insert = insert_for(engine)(TABLE).on_conflict_do_nothing(
            index_elements=[TABLE.c.alert_id]
        )
        self._finish = (
            update(TABLE)
            .where(TABLE.c.alert_id == bindparam("b_alert_id"))
            .values(
                status=bindparam("b_status"),
                attempts=TABLE.c.attempts + bindparam("b_attempts"),
                last_error=bindparam("b_error"),
                delivered_at=bindparam("b_delivered_at"),
            )
        )

    async def record(self, alerts: Sequence[ChurnAlert]) -> set[str]:
        """Insert the actions that are absent; return the ids not yet delivered."""
        rows = [
            {"alert_id": a.alert_id, "user_id": a.user_id, "action": ACTION, "status": RECORDED}
            for a in alerts
        ]
        ids = [a.alert_id for a in alerts]

        async def once() -> set[str]:
            async with self._engine.begin() as conn:
                await conn.execute(self._insert, rows)
                pending = await conn.execute(
                    select(TABLE.c.alert_id).where(
                        TABLE.c.alert_id.in_(ids), TABLE.c.status != DELIVERED
                    )
                )
                return {str(alert_id) for alert_id in pending.scalars()}

        return await self._retry(once, f"recording {len(rows)} retention actions")

    async def finish(self, outcomes: Sequence[Outcome]) -> None:
        now = datetime.now(UTC)
        rows = [
            {
                "b_alert_id": o.alert_id,
                "b_status": DELIVERED if o.delivered else FAILED,
                "b_attempts": o.attempts,
                "b_error": o.error,
                "b_delivered_at": now if o.delivered else None,
            }
            for o in outcomes
        ]

        async def once() -> None:
            async with self._engine.begin() as conn:
                await conn.execute(self._finish, rows)

        await self._retry(once, f"updating {len(rows)} retention actions")

    async def _retry(self, op: Callable[[], Awaitable[T]], what: str) -> T:
        return await retry_forever(
            op,
            is_retriable=is_retriable_db_error,
            what=what,
            max_backoff_s=self._settings.retry_max_backoff_s,
            log=log,
        )


def _retriable_status(status: int) -> bool:
    return status >= 500 or status in (408, 425, 429)


async def post_action(
    session: aiohttp.ClientSession, settings: ActionsSettings, alert: ChurnAlert
) -> Outcome:
    """POST one alert, retrying with backoff up to webhook_max_attempts times."""
    assert settings.webhook_url is not None
    delays = backoff_delays(max_s=settings.retry_max_backoff_s)
    headers = {"Content-Type": "application/json", "Idempotency-Key": alert.alert_id}
    error = ""
    attempt = 0
    while attempt < settings.webhook_max_attempts:
        attempt += 1
        retriable = True
        try:
            async with session.post(settings.webhook_url, data=alert.body, headers=headers) as r:
                if r.status < 300:
                    return Outcome(alert.alert_id, True, attempt, None)
                error, retriable = f"HTTP {r.status}", _retriable_status(r.status)
        except (aiohttp.ClientError, TimeoutError) as exc:
            error = summary(exc)
        action_metrics.WEBHOOK_FAILURES.inc()
        log.warning(
            "webhook POST of action %s failed (attempt %d of %d): %s",
            alert.alert_id,
            attempt,
            settings.webhook_max_attempts,
            error,
        )
        if not retriable:
            break  # a 4xx will be refused again: mark it failed for a person to look at
        if attempt < settings.webhook_max_attempts:
            await asyncio.sleep(next(delays))
    return Outcome(alert.alert_id, False, attempt, error[:512])


async def _deliver(
    session: aiohttp.ClientSession, settings: ActionsSettings, alerts: Sequence[ChurnAlert]
) -> list[Outcome]:
    gate = asyncio.Semaphore(WEBHOOK_CONCURRENCY)

    async def one(alert: ChurnAlert) -> Outcome:
        async with gate:
            return await post_action(session, settings, alert)

    return list(await asyncio.gather(*(one(a) for a in alerts)))


async def _commit(
    consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int], settings: ActionsSettings
) -> None:
    try:
        await retry_forever(
            lambda: consumer.commit(offsets),
            is_retriable=lambda exc: isinstance(exc, KafkaError) and bool(exc.retriable),
            what="offset commit",
            max_backoff_s=settings.retry_max_backoff_s,
            log=log,
        )
    except CommitFailedError as exc:
        # The partitions moved to another member during the batch; it redoes the batch,
        # which the alert-id key makes harmless.
        log.warning("offset commit refused after a rebalance: %s", summary(exc))


async def _consume(
    consumer: AIOKafkaConsumer,
    store: ActionStore,
    session: aiohttp.ClientSession | None,
    settings: ActionsSettings,
    stats: ActionStats,
    stop: asyncio.Event,
) -> None:
    while not stop.is_set():
        batch = await consumer.getmany(timeout_ms=POLL_TIMEOUT_MS)
        if not batch:
            continue
        records = [record for records in batch.values() for record in records]
        alerts = churn_alerts(records, stats)
        if alerts:
            pending = await store.record(alerts)
            action_metrics.ACTIONS_RECORDED.inc(len(alerts))
            if session is not None and pending:
                outcomes = await _deliver(
                    session, settings, [a for a in alerts if a.alert_id in pending]
                )
                await store.finish(outcomes)
                delivered = sum(o.delivered for o in outcomes)
                stats.delivered += delivered
                stats.failed += len(outcomes) - delivered
                action_metrics.ACTIONS_DELIVERED.inc(delivered)
                action_metrics.ACTIONS_FAILED.inc(len(outcomes) - delivered)
        offsets = {tp: rs[-1].offset + 1 for tp, rs in batch.items() if rs}
        await _commit(consumer, offsets, settings)


async def run_actions(
    settings: ActionsSettings, *, stop: asyncio.Event | None = None
) -> ActionStats:
    """Consume alerts into retention actions until `stop` is set; return what was done."""
    stop = stop or asyncio.Event()
    stats = ActionStats()
    consumer = AIOKafkaConsumer(
        settings.topic_alerts,
        bootstrap_servers=settings.broker_servers,
        **aiokafka_options(settings),
        group_id=settings.actions_group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=10_000,
    )
    engine = create_engine(settings)
    session = (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=settings.webhook_timeout_s))
        if settings.webhook_url
        else None
    )
    try:
        await consumer.start()
        work: asyncio.Task[None] = asyncio.create_task(
            _consume(consumer, ActionStore(engine, settings), session, settings, stats, stop)
        )
        stopped = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({work, stopped}, return_when=asyncio.FIRST_COMPLETED)
            # A non-retriable failure in `work` is raised here: the service stops loudly.
            await asyncio.wait_for(work, STOP_GRACE_S)
        except TimeoutError:
            log.warning("stopped in the middle of a batch; it is redone on the next start")
        finally:
            stopped.cancel()
            work.cancel()
    finally:
        await consumer.stop()
        if session is not None:
            await session.close()
        await engine.dispose()
        log.info("retention actions stopped: %s", stats)
    return stats
