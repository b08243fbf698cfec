"""The database sink: latest score per user and alerts, written idempotently in one transaction.

Replays are safe by construction: a score only moves a user's row forward (by event_count, then
by silence_ms) and an alert is inserted only if its deterministic id is absent. The same code
runs on PostgreSQL (asyncpg) and SQLite (aiosqlite), through each dialect's own INSERT ... ON
CONFLICT.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Insert, Table, and_, or_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from stream.db.models import Alert as AlertRow
from stream.db.models import UserScore
from stream.faults import is_retriable_db_error
from stream.retry import retry_forever
from stream.scoring.alerts import Alert
from stream.scoring.scores import Score, next_items_json
from stream.settings import DatabaseSettings

log = logging.getLogger(__name__)

SCORE_TABLE: Table = UserScore.__table__  # type: ignore[assignment]
ALERT_TABLE: Table = AlertRow.__table__  # type: ignore[assignment]


def create_engine(settings: DatabaseSettings) -> AsyncEngine:
    # pre_ping replaces pooled connections a restarted server has dropped; hide_parameters
    # keeps row values out of error messages, which are logged.
    return create_async_engine(settings.database_url, pool_pre_ping=True, hide_parameters=True)


def insert_for(engine: AsyncEngine) -> Callable[[Table], Any]:
    """The dialect's own `insert`, the one that has on_conflict_do_nothing/do_update."""
    name = engine.dialect.name
    if name == "postgresql":
        return postgresql.insert
    if name == "sqlite":
        return sqlite.insert
    raise ValueError(f"Unsupported database dialect {name!r}: use postgresql or sqlite")


def newer_or_same(incoming: Any, stored: Any) -> ColumnElement[bool]:
    """Whether the incoming score may replace the stored one: (event_count, silence_ms) does
    not go back.

    event_count alone is not enough: a silent re-score has the same events as the score
    before it, so it must win a tie (written), yet a replayed older one must lose to it (a
    re-read window re-scores its users as events, at silence 0; a replayed 1-day re-score
    must not overwrite the 2-day one). Silence levels only grow until the next event, which
    raises event_count. An equal pair is the same score again: rewriting it is harmless.
    """
    return or_(
        incoming.event_count > stored.event_count,
        and_(
            incoming.event_count == stored.event_count,
            incoming.silence_ms >= stored.silence_ms,
        ),
    )


def _at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def score_rows(scores: Sequence[Score]) -> list[dict[str, Any]]:
    """One row per user, the newest (as the upsert orders them: events, then silence):
    Postgres refuses an ON CONFLICT DO UPDATE that touches the same row twice in one
    statement."""
    latest: dict[str, Score] = {}
    for score in scores:
        kept = latest.get(score.user_id)
        if kept is None or (score.event_count, score.silence_ms) >= (
            kept.event_count,
            kept.silence_ms,
        ):
            latest[score.user_id] = score
    return [
        {
            "user_id": s.user_id,
            "churn_risk": s.churn_risk,
            "purchase_intent": s.purchase_intent,
            "anomaly": None if math.isnan(s.anomaly) else s.anomaly,  # not served
            "model_version": s.model_version,
            "event_count": s.event_count,
            "last_event_id": s.last_event_id,
            "last_event_at": _at(s.last_event_ts_ms),
            "scored_at": _at(s.scored_at_ms),
            "next_items": next_items_json(s),
            "next_purchase": None if math.isnan(s.next_purchase) else s.next_purchase,
            "trigger": s.trigger,
            "silence_ms": s.silence_ms,
        }
        for s in latest.values()
    ]


def alert_rows(alerts: Sequence[Alert]) -> list[dict[str, Any]]:
    unique: dict[str, Alert] = {}
    for alert in alerts:
        unique.setdefault(alert.alert_id, alert)
    return [
        {
            "alert_id": a.alert_id,
            "user_id": a.user_id,
            "kind": a.kind,
            "score": a.score,
            "threshold": a.threshold,
            "model_version": a.model_version,
            "event_ids": list(a.event_ids),
            "event_at": _at(a.event_ts_ms),
            "reason": a.reason,
        }
        for a in unique.values()
    ]


class ResultStore:
    """Writes scores and alerts to the database; retries while the database is unreachable."""

    def __init__(self, settings: DatabaseSettings, *, stop: asyncio.Event | None = None) -> None:
        self._settings = settings
        self._stop = stop
        self._engine: AsyncEngine | None = None
        self._upsert_scores: Insert | None = None
        self._insert_alerts: Insert | None = None

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("ResultStore.start() was not awaited")
        return self._engine

    async def start(self) -> None:
        # Connects lazily: a database that is down at start is retried on the first write.
        self._engine = create_engine(self._settings)
        insert = insert_for(self._engine)
        upsert = insert(SCORE_TABLE)
        self._upsert_scores = upsert.on_conflict_do_update(
            index_elements=[SCORE_TABLE.c.user_id],
            set_={c.name: upsert.excluded[c.name] for c in SCORE_TABLE.c if not c.primary_key},
            where=newer_or_same(upsert.excluded, SCORE_TABLE.c),
        )
        self._insert_alerts = insert(ALERT_TABLE).on_conflict_do_nothing(
            index_elements=[ALERT_TABLE.c.alert_id]
        )

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None

    async def write(self, scores: Sequence[Score], alerts: Sequence[Alert]) -> None:
        """Upsert `scores` and insert `alerts` in one transaction, each as one executemany."""
        scores_in, alerts_in = score_rows(scores), alert_rows(alerts)
        if not scores_in and not alerts_in:
            return
        await retry_forever(
            lambda: self._write_once(scores_in, alerts_in),
            is_retriable=is_retriable_db_error,
            what=f"database write of {len(scores_in)} scores and {len(alerts_in)} alerts",
            target="database write",
            max_backoff_s=self._settings.retry_max_backoff_s,
            log=log,
            stop=self._stop,
        )

    async def _write_once(
        self, scores: Sequence[Mapping[str, Any]], alerts: Sequence[Mapping[str, Any]]
    ) -> None:
        assert self._upsert_scores is not None and self._insert_alerts is not None
        async with self.engine.begin() as conn:
            if scores:
                await conn.execute(self._upsert_scores, scores)
            if alerts:
                await conn.execute(self._insert_alerts, alerts)
