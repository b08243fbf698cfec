"""A PostgreSQL cluster of a test's own, which the test may stop and start."""

from __future__ import annotations

import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from stream.db import migrate
from stream.settings import Settings
from stream.stack import postgres
from tests.conftest import make_settings


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def own_cluster(base: Settings | None = None, database: str = "outage") -> Iterator[Settings]:
    """`base` (or default settings) pointed at a fresh, migrated cluster of this test's own.

    Not under pytest's tmp_path: that sits in a 0700 root directory the `postgres` user
    (which initdb and pg_ctl run as, under root) cannot enter. start_cluster hands the
    directory to that user.
    """
    run_dir = Path(tempfile.mkdtemp(prefix="clickscore-pg-"))
    fields = base.model_dump() if base is not None else {}
    fields.update(
        database_url=f"postgresql+asyncpg://postgres@127.0.0.1:{_free_port()}/{database}",
        run_dir=run_dir,
        retry_max_backoff_s=0.5,
    )
    cluster = make_settings(**fields)
    try:
        postgres.start_cluster(cluster)
        postgres.ensure_database(cluster)
        migrate.upgrade(cluster)
        yield cluster
    finally:
        postgres.stop_cluster(cluster)
        shutil.rmtree(run_dir, ignore_errors=True)
