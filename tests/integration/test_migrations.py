"""Alembic against the real PostgreSQL server: up, down, up again, and models == migrations."""

from __future__ import annotations

import asyncio

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import create_async_engine

from stream.db import migrate
from stream.db.models import Base
from stream.settings import Settings

pytestmark = pytest.mark.integration

TABLES = {"user_scores", "alerts", "model_versions", "retention_actions"}


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
