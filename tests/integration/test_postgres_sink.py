"""ResultStore against real PostgreSQL: idempotent replays, forward-only scores (silent
re-scores included), batches, and a write that waits out a database outage."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.ext.asyncio import create_async_engine

from stream.db import migrate
from stream.db.models import Alert as AlertRow
from stream.db.models import UserScore
from stream.scoring.alerts import Alert
from stream.scoring.scores import Score
from stream.settings import Settings
from stream.sinks.postgres import ResultStore
from stream.stack import postgres
from tests.conftest import make_settings
from tests.support.postgres import own_cluster as own_postgres_cluster

pytestmark = pytest.mark.integration

T0_MS = 1_790_000_000_000


def score(user: str, event_count: int, churn: float = 0.5, silence_ms: int = 0) -> Score:
    return Score(
        user_id=user,
        churn_risk=churn,
        purchase_intent=0.25,
        anomaly=0.125,
        model_version="1",
        event_count=event_count,
        last_event_id=f"{user}-e{event_count}",
        last_event_ts_ms=T0_MS + event_count * 1000,
        scored_at_ms=T0_MS + event_count * 1000 + 50 + silence_ms,
        trigger="silence" if silence_ms else "event",
        silence_ms=silence_ms,
    )


def alert(user: str, n: int, kind: str = "churn") -> Alert:
    return Alert(
        alert_id=f"{kind}-{user}-{n}".ljust(32, "0")[:32],
        user_id=user,
        kind=kind,
        score=0.9,
        threshold=0.8,
        model_version="1",
        event_ids=(f"{user}-e{n - 1}", f"{user}-e{n}"),
        event_ts_ms=T0_MS + n * 1000,
        reason="churn risk 0.90 crossed 0.80",
    )


async def read_rows(settings: Settings, model: Any) -> dict[str, Any]:
    engine = create_async_engine(settings.database_url)
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(select(model.__table__))).mappings().all()
    finally:
        await engine.dispose()
    key = "user_id" if model is UserScore else "alert_id"
    return {row[key]: dict(row) for row in rows}


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[ResultStore]:
    await asyncio.to_thread(migrate.upgrade, settings)
    result_store = ResultStore(settings)
    await result_store.start()
    yield result_store
    await result_store.close()


async def test_write_converts_and_replays_without_duplicates(
    settings: Settings, store: ResultStore
) -> None:
    scores = [score("u1", 3), score("u2", 5)]
    alerts = [alert("u1", 3), alert("u2", 5, kind="anomaly")]
    await store.write(scores, alerts)
    await store.write(scores, alerts)  # a replay after a crash before the offset commit

    users = await read_rows(settings, UserScore)
    stored_alerts = await read_rows(settings, AlertRow)
    assert set(users) == {"u1", "u2"}
    assert len(stored_alerts) == 2
    u1 = users["u1"]
    assert u1["event_count"] == 3 and u1["last_event_id"] == "u1-e3"
    assert u1["last_event_at"].timestamp() == (T0_MS + 3000) / 1000
    assert u1["last_event_at"].tzinfo is not None
    stored = stored_alerts[alerts[0].alert_id]
    assert stored["event_ids"] == ["u1-e2", "u1-e3"]
    assert stored["event_at"].timestamp() == (T0_MS + 3000) / 1000
    assert stored["kind"] == "churn" and stored["user_id"] == "u1"


async def test_an_older_score_never_overwrites_a_newer_one(
    settings: Settings, store: ResultStore
) -> None:
    await store.write([score("u1", 10, churn=0.9)], [])
    await store.write([score("u1", 4, churn=0.1)], [])  # a replayed older result
    row = (await read_rows(settings, UserScore))["u1"]
    assert (row["event_count"], row["churn_risk"]) == (10, 0.9)
    assert (row["trigger"], row["silence_ms"]) == ("event", 0)

    await store.write([score("u1", 11, churn=0.2)], [])
    row = (await read_rows(settings, UserScore))["u1"]
    assert (row["event_count"], row["churn_risk"]) == (11, 0.2)


async def test_a_silent_rescore_lands_and_a_replay_never_undoes_it(
    settings: Settings, store: ResultStore
) -> None:
    """A silent re-score has the events of the score before it, so event_count ties: it must
    still be written, and a replay of that earlier score, or of a shorter silence, must not
    overwrite it. The next event moves the row on again."""
    day_ms = 86_400_000
    await store.write([score("u1", 6, churn=0.2)], [])
    await store.write([score("u1", 6, churn=0.7, silence_ms=day_ms)], [])
    row = (await read_rows(settings, UserScore))["u1"]
    assert (row["trigger"], row["silence_ms"], row["churn_risk"]) == ("silence", day_ms, 0.7)
    assert row["event_count"] == 6 and row["last_event_id"] == "u1-e6"

    await store.write([score("u1", 6, churn=0.8, silence_ms=8 * day_ms)], [])
    await store.write([score("u1", 6, churn=0.2)], [])  # the event score, replayed
    await store.write([score("u1", 6, churn=0.7, silence_ms=day_ms)], [])  # a shorter silence
    row = (await read_rows(settings, UserScore))["u1"]
    assert (row["trigger"], row["silence_ms"], row["churn_risk"]) == ("silence", 8 * day_ms, 0.8)

    # In one batch too, the newest of a user's scores is the one kept.
    await store.write([score("u2", 3, silence_ms=day_ms), score("u2", 3)], [])
    assert (await read_rows(settings, UserScore))["u2"]["trigger"] == "silence"

    await store.write([score("u1", 7, churn=0.1)], [])
    row = (await read_rows(settings, UserScore))["u1"]
    assert (row["trigger"], row["silence_ms"], row["event_count"]) == ("event", 0, 7)


async def test_duplicates_inside_one_batch(settings: Settings, store: ResultStore) -> None:
    same_alert = alert("u1", 7)
    await store.write(
        [score("u1", 7), score("u1", 9), score("u1", 8), score("u2", 1)],
        [same_alert, same_alert, alert("u2", 1)],
    )
    users = await read_rows(settings, UserScore)
    assert {u: r["event_count"] for u, r in users.items()} == {"u1": 9, "u2": 1}
    assert set(await read_rows(settings, AlertRow)) == {
        same_alert.alert_id,
        alert("u2", 1).alert_id,
    }


async def test_a_large_batch_goes_in_one_call(settings: Settings, store: ResultStore) -> None:
    scores = [score(f"user-{i}", i + 1) for i in range(5000)]
    alerts = [alert(f"user-{i}", i + 1) for i in range(0, 5000, 10)]
    started = time.perf_counter()
    await store.write(scores, alerts)
    elapsed = time.perf_counter() - started
    logging.getLogger(__name__).warning("5000 scores + 500 alerts written in %.3f s", elapsed)
    print(f"\n5000 scores + 500 alerts written in {elapsed:.3f} s")
    assert len(await read_rows(settings, UserScore)) == 5000
    assert len(await read_rows(settings, AlertRow)) == 500


# --- A database outage --------------------------------------------------------------------


@pytest.fixture
def own_cluster() -> Iterator[Settings]:
    """A PostgreSQL cluster of this test's own, which it may stop and start."""
    with own_postgres_cluster() as cluster:
        yield cluster


async def test_a_write_waits_out_a_database_outage(
    own_cluster: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    store = ResultStore(own_cluster)
    await store.start()
    try:
        await store.write([score("before", 1)], [])  # the pool now holds a live connection

        await asyncio.to_thread(postgres.stop_cluster, own_cluster)
        caplog.set_level(logging.WARNING, logger="stream.sinks.postgres")
        write = asyncio.create_task(
            store.write([score(f"u{i}", i + 1) for i in range(100)], [alert("u1", 2)])
        )
        await asyncio.sleep(3)
        assert not write.done(), "the write should wait while the database is down"
        await asyncio.to_thread(postgres.start_cluster, own_cluster)
        await asyncio.wait_for(write, timeout=30)
    finally:
        await store.close()

    users = await read_rows(own_cluster, UserScore)
    assert set(users) == {"before"} | {f"u{i}" for i in range(100)}
    assert list(await read_rows(own_cluster, AlertRow)) == [alert("u1", 2).alert_id]
    retries = [r for r in caplog.records if "retrying" in r.getMessage()]
    assert retries, "each failed attempt should be logged"
    assert all("u1" not in r.getMessage() for r in retries), "no payload in the log"


async def test_a_bad_query_is_raised_not_retried(settings: Settings) -> None:
    # This test's database is not migrated: the missing table will not appear by retrying.
    store = ResultStore(settings)
    await store.start()
    try:
        with pytest.raises(ProgrammingError):
            await asyncio.wait_for(store.write([score("u1", 1)], []), timeout=10)
    finally:
        await store.close()


async def test_the_same_code_writes_to_sqlite(tmp_path: Path) -> None:
    sqlite_settings = make_settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/scores.db")
    await asyncio.to_thread(migrate.upgrade, sqlite_settings)
    store = ResultStore(sqlite_settings)
    await store.start()
    try:
        await store.write([score("u1", 5), score("u1", 7)], [alert("u1", 7), alert("u1", 7)])
        await store.write([score("u1", 3)], [alert("u1", 7)])
        await store.write([score("u1", 7, silence_ms=3_600_000)], [])
        await store.write([score("u1", 7)], [])
    finally:
        await store.close()
    users = await read_rows(sqlite_settings, UserScore)
    assert {u: r["event_count"] for u, r in users.items()} == {"u1": 7}
    assert (users["u1"]["trigger"], users["u1"]["silence_ms"]) == ("silence", 3_600_000)
    assert list(await read_rows(sqlite_settings, AlertRow)) == [alert("u1", 7).alert_id]
