"""Alembic against the real PostgreSQL server: up, down, up again, models == migrations, and
the revision that added the score trigger on a table that already holds rows."""

from __future__ import annotations

import asyncio

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import create_async_engine

from stream.db import migrate
from stream.db.models import Base
from stream.settings import Settings

pytestmark = pytest.mark.integration

OUTCOME_TABLES = {
    "churn_outcomes",
    "purchase_predictions",
    "churn_quality_daily",
    "purchase_calibration_daily",
}
TABLES = {"user_scores", "alerts", "model_versions", "retention_actions", *OUTCOME_TABLES}


async def _inspect(settings: Settings) -> tuple[set[str], list[object]]:
    engine = create_async_engine(settings.database_url)
    try:
        async with engine.connect() as conn:

            def read(sync_conn):  # type: ignore[no-untyped-def]
                tables = set(inspect(sync_conn).get_table_names())
                diff = compare_metadata(MigrationContext.configure(sync_conn), Base.metadata)
                return tables, diff

            return await conn.run_sync(read)
    finally:
        await engine.dispose()


async def test_upgrade_downgrade_upgrade(settings: Settings) -> None:
    # Alembic's env.py runs its own event loop, so migrations run in a worker thread here.
    await asyncio.to_thread(migrate.upgrade, settings)
    tables, diff = await _inspect(settings)
    assert tables >= TABLES
    assert diff == [], f"models and migrations disagree: {diff}"

    await asyncio.to_thread(migrate.downgrade, settings, "base")
    tables, _ = await _inspect(settings)
    assert not TABLES & tables
    assert await asyncio.to_thread(migrate.current, settings) is None

    await asyncio.to_thread(migrate.upgrade, settings)
    assert await asyncio.to_thread(migrate.current, settings) is not None


async def _score_columns(settings: Settings) -> set[str]:
    engine = create_async_engine(settings.database_url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(
                lambda sync: {c["name"] for c in inspect(sync).get_columns("user_scores")}
            )
    finally:
        await engine.dispose()


async def test_0004_trigger_columns_default_rows_to_event_and_go_back_down(
    settings: Settings,
) -> None:
    """A row written before 0004 (or by a writer that predates it) reads as an
    event-triggered score with no silence; the downgrade drops exactly the two columns."""
    await asyncio.to_thread(migrate.upgrade, settings, "0003")
    before = await _score_columns(settings)
    assert not {"trigger", "silence_ms"} & before
    engine = create_async_engine(settings.database_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO user_scores (user_id, churn_risk, purchase_intent, anomaly, "
                    "model_version, event_count, last_event_id, last_event_at, scored_at) "
                    "VALUES ('old', 0.5, 0.5, 0.5, '1', 3, 'old-e3', now(), now())"
                )
            )
        await asyncio.to_thread(migrate.upgrade, settings, "0004")
        async with engine.connect() as conn:
            row = (await conn.execute(text("SELECT trigger, silence_ms FROM user_scores"))).one()
        assert tuple(row) == ("event", 0)
        # The longest default silence (30 days in ms) does not fit 32 bits.
        async with engine.begin() as conn:
            await conn.execute(
                text("UPDATE user_scores SET trigger = 'silence', silence_ms = 2592000000")
            )
    finally:
        await engine.dispose()

    await asyncio.to_thread(migrate.downgrade, settings, "0003")
    assert await _score_columns(settings) == before
    assert await asyncio.to_thread(migrate.current, settings) == "0003"


async def test_0005_outcome_tables_come_and_go_with_their_revision(settings: Settings) -> None:
    await asyncio.to_thread(migrate.upgrade, settings)
    tables, _ = await _inspect(settings)
    assert tables >= OUTCOME_TABLES
    await asyncio.to_thread(migrate.downgrade, settings, "0004")
    tables, _ = await _inspect(settings)
    assert not OUTCOME_TABLES & tables
    assert {"user_scores", "alerts", "retention_actions"} <= tables
    assert await asyncio.to_thread(migrate.current, settings) == "0004"
