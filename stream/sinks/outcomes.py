"""The worker's outcome rows (stream/scoring/outcomes.py) into PostgreSQL, idempotently, with
the result store's engine, in the window's results step (before its table write, so a crash
replays them).

    churn_outcomes        insert if absent on (user_id, alert_at); a worker `returned`
                          replaces a `stayed_away` the outcomes job closed too early (its
                          clock is the newest event of any user, another partition may be
                          ahead of this one)
    purchase_predictions  insert if absent on (user_id, day)
    purchases             each purchase sets purchased_at of the user's predictions in the
                          horizon before it, to the earliest such purchase
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import Table, and_, bindparam, or_, update

from stream.db.models import ChurnOutcome as ChurnOutcomeRow
from stream.db.models import PurchasePrediction
from stream.faults import is_retriable_db_error
from stream.retry import retry_forever
from stream.scoring.outcomes import RETURNED, STAYED_AWAY, WindowOutcomes
from stream.settings import WorkerSettings
from stream.sinks.postgres import ResultStore, insert_for

log = logging.getLogger(__name__)

CHURN_TABLE: Table = ChurnOutcomeRow.__table__  # type: ignore[assignment]
PREDICTION_TABLE: Table = PurchasePrediction.__table__  # type: ignore[assignment]
WORKER = "worker"


def _at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def _day(ms: int) -> date:
    return _at(ms).date()


class OutcomeWriter:
    def __init__(
        self, store: ResultStore, settings: WorkerSettings, *, stop: asyncio.Event | None = None
    ) -> None:
        self._store = store
        self._settings = settings
        self._stop = stop
        self._horizon = timedelta(seconds=settings.purchase_horizon_s)

    async def write(self, outcomes: WindowOutcomes) -> None:
        if not outcomes:
            return
        await retry_forever(
            lambda: self._write_once(outcomes),
            is_retriable=is_retriable_db_error,
            what=f"database write of {len(outcomes.churn)} churn outcomes, "
            f"{len(outcomes.predictions)} predictions and {len(outcomes.purchases)} purchases",
            target="database write",
            max_backoff_s=self._settings.retry_max_backoff_s,
            log=log,
            stop=self._stop,
        )

    async def _write_once(self, outcomes: WindowOutcomes) -> None:
        engine = self._store.engine
        insert = insert_for(engine)
        async with engine.begin() as conn:
            if outcomes.churn:
                rows = [
                    {
                        "user_id": o.user_id,
                        "alert_at": _at(o.alert_ms),
                        "outcome": o.outcome,
                        "known_at": _at(o.known_ms),
                        "returned_at": None if o.returned_ms is None else _at(o.returned_ms),
                        "source": WORKER,
                    }
                    for o in {(o.user_id, o.alert_ms): o for o in outcomes.churn}.values()
                ]
                statement = insert(CHURN_TABLE)
                await conn.execute(
                    statement.on_conflict_do_update(
                        index_elements=[CHURN_TABLE.c.user_id, CHURN_TABLE.c.alert_at],
                        set_={
                            c: statement.excluded[c]
                            for c in ("outcome", "known_at", "returned_at", "source")
                        },
                        where=and_(
                            CHURN_TABLE.c.outcome == STAYED_AWAY,
                            CHURN_TABLE.c.source != WORKER,
                            statement.excluded.outcome == RETURNED,
                        ),
                    ),
                    rows,
                )
            if outcomes.predictions:
                by_key: dict[tuple[str, date], dict[str, Any]] = {}
                for p in outcomes.predictions:
                    by_key.setdefault(
                        (p.user_id, _day(p.scored_ms)),
                        {
                            "user_id": p.user_id,
                            "day": _day(p.scored_ms),
                            "scored_at": _at(p.scored_ms),
                            "model_version": p.model_version,
                            "purchase_intent": p.purchase_intent,
                        },
                    )
                await conn.execute(
                    insert(PREDICTION_TABLE).on_conflict_do_nothing(
                        index_elements=[PREDICTION_TABLE.c.user_id, PREDICTION_TABLE.c.day]
                    ),
                    list(by_key.values()),
                )
            if outcomes.purchases:
                t = PREDICTION_TABLE
                statement = (
                    update(t)
                    .where(
                        t.c.user_id == bindparam("buyer"),
                        t.c.scored_at < bindparam("bought_at"),
                        t.c.scored_at >= bindparam("earliest"),
                        or_(t.c.purchased_at.is_(None), t.c.purchased_at > bindparam("bought_at")),
                    )
                    .values(purchased_at=bindparam("bought_at"))
                )
                await conn.execute(
                    statement,
                    [
                        {
                            "buyer": user,
                            "bought_at": _at(ms),
                            "earliest": _at(ms) - self._horizon,
                        }
                        for user, ms in outcomes.purchases
                    ],
                )
