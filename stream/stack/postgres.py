"""The local database: the PostgreSQL server that answers at the configured address, or a
throwaway cluster of our own (initdb + pg_ctl) when none does. SQLite URLs need no server.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path

from sqlalchemy.engine import URL, make_url

from stream.settings import StackSettings
from stream.stack.process import StackError, port_open

NAME = "postgres"
INSTALL_HINT = "install PostgreSQL (Debian: `apt-get install postgresql`)"


def url_of(settings: StackSettings) -> URL:
    return make_url(settings.database_url)


def is_sqlite(settings: StackSettings) -> bool:
    return url_of(settings).get_backend_name() == "sqlite"


def _asyncpg_dsn(url: URL, database: str) -> str:
    plain = url.set(drivername="postgresql", database=database)
    return plain.render_as_string(hide_password=False)


async def _connect(url: URL, database: str):  # type: ignore[no-untyped-def]
    import asyncpg

    return await asyncpg.connect(_asyncpg_dsn(url, database), timeout=3)


def server_answers(settings: StackSettings) -> bool:
    url = url_of(settings)

    async def probe() -> bool:
        try:
            conn = await _connect(url, "postgres")
        except Exception:
            return False
        await conn.close()
        return True

    return asyncio.run(probe())


def ensure_database(settings: StackSettings, database: str | None = None) -> str:
    """Create the database named in the URL (or `database`) unless it exists."""
    url = url_of(settings)
    name = database or url.database
    if not name:
        raise StackError(f"CLICKSCORE_DATABASE_URL names no database: {url!r}")

    async def create() -> None:
        conn = await _connect(url, "postgres")
        try:
            exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
            if not exists:
                await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())
    return name


def drop_database(settings: StackSettings, database: str) -> None:
    url = url_of(settings)

    async def drop() -> None:
        conn = await _connect(url, "postgres")
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(drop())


# --- A throwaway cluster, for machines where PostgreSQL is installed but not running ---------


def _bindir() -> Path:
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        candidate = Path(out.stdout.strip())
        if (candidate / "initdb").is_file():
            return candidate
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").is_file():
            return candidate
    raise StackError(
        "No PostgreSQL server answers at the configured address and initdb was not found to "
        f"start one: {INSTALL_HINT}, or point CLICKSCORE_DATABASE_URL at a running server."
    )


def _as_postgres_user(argv: list[str]) -> list[str]:
    # initdb and pg_ctl refuse to run as root.
    if os.geteuid() == 0:
        runuser = shutil.which("runuser")
        if runuser is None:
            raise StackError("Running as root, and runuser is missing to start PostgreSQL.")
        return [runuser, "-u", "postgres", "--", *argv]
    return argv


def cluster_dir(run_dir: Path) -> Path:
    return run_dir / "pgdata"


def start_cluster(settings: StackSettings) -> None:
    url = url_of(settings)
    host, port = url.host or "127.0.0.1", url.port or 5432
    if port_open(host, port):
        raise StackError(
            f"Something listens on {host}:{port} but does not answer as PostgreSQL "
            f"for user '{url.username}'. Check CLICKSCORE_DATABASE_URL."
        )
    bindir = _bindir()
    data = cluster_dir(settings.run_dir)
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        data.mkdir(exist_ok=True)
        shutil.chown(data, "postgres", "postgres")
        shutil.chown(settings.run_dir, "postgres")
    if not (data / "PG_VERSION").exists():
        _run(
            [
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                url.username or "postgres",
                "--auth=trust",
                "--no-sync",
            ]
        )
    options = f"-p {port} -c listen_addresses={host} -k {data}"
    log = data / "server.log"
    _run([str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(log), "-w", "start"])


def stop_cluster(settings: StackSettings) -> bool:
    data = cluster_dir(settings.run_dir)
    if not (data / "postmaster.pid").exists():
        return False
    _run([str(_bindir() / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"])
    return True


def _run(argv: list[str]) -> None:
    done = subprocess.run(_as_postgres_user(argv), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise StackError(f"{' '.join(argv[:2])} failed:\n{done.stdout}\n{done.stderr}")
