"""Checks before the worker starts, each failing with what to change instead of a traceback.

- The ports the worker binds (metrics and /health, Faust's web port) are free.
- The broker, Triton and the database accept connections, within `startup_wait_s` (a stack
  that is still starting gets that long).
- The local table files (RocksDB) are not newer than their changelog on the broker: after
  the broker lost its data (`clickscore stack down` / `up` with the in-memory local broker,
  or topics deleted and created again), Faust would refuse to start with ConsistencyError.
  Such files are removed with a warning, and the table is rebuilt from what the broker holds.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import shutil
import socket
import time
from pathlib import Path

from stream.kafka_security import aiokafka_options
from stream.settings import KafkaSettings, WorkerSettings, host_port

log = logging.getLogger(__name__)

# The key under which Faust's RocksDB store keeps the last changelog offset it applied.
FAUST_OFFSET_KEY = b"__faust\0offset__"


class StartupError(RuntimeError):
    """The worker cannot start as configured; the message names the setting to change."""


def check_port_free(host: str, port: int, setting: str) -> None:
    if not port:
        return
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        # As the servers themselves bind: a port left in TIME_WAIT by a process that just
        # exited is free to them.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise StartupError(
                    f"port {host}:{port} is already in use: set {setting} to a free port"
                ) from None
            raise StartupError(
                f"cannot bind {host}:{port} ({exc.strerror}): check {setting}"
            ) from None


def check_reachable(address: str, setting: str, what: str, wait_s: float) -> None:
    host, port = host_port(address)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=2.0):
                return
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise StartupError(
                    f"cannot reach {what} at {host}:{port} ({exc.strerror or exc}): start it, "
                    f"or set {setting} to where it runs"
                ) from None
        time.sleep(0.5)


def check_services(settings: WorkerSettings) -> None:
    check_port_free(settings.metrics_host, settings.metrics_port, "CLICKSCORE_METRICS_PORT")
    check_port_free(settings.metrics_host, settings.worker_web_port, "CLICKSCORE_WORKER_WEB_PORT")
    wait_s = settings.startup_wait_s
    for server in settings.broker_servers.split(","):
        check_reachable(server, "CLICKSCORE_BROKER_URL", "the Kafka broker", wait_s)
    check_reachable(settings.triton_grpc_url, "CLICKSCORE_TRITON_GRPC_URL", "Triton (gRPC)", wait_s)
    if not settings.database_url.startswith("sqlite"):
        check_reachable(settings.database_url, "CLICKSCORE_DATABASE_URL", "the database", wait_s)


# --- stale local table files ----------------------------------------------------------------


def stale_partitions(persisted: dict[int, int], end_offsets: dict[int, int]) -> list[int]:
    """Partitions whose local state applied a changelog offset the broker does not hold."""
    return sorted(p for p, offset in persisted.items() if offset >= end_offsets.get(p, 0))


def persisted_offsets(table_files: Path, table: str) -> dict[int, int]:
    """The changelog offset each local RocksDB partition of `table` last applied."""
    from rocksdict import AccessType, Options, Rdict

    found: dict[int, int] = {}
    for path in table_files.rglob(f"{table}-*.db"):
        partition = path.name.removeprefix(f"{table}-").removesuffix(".db")
        if not partition.isdigit():
            continue
        db = Rdict(str(path), options=Options(raw_mode=True), access_type=AccessType.read_only())
        try:
            raw = db.get(FAUST_OFFSET_KEY)
        finally:
            db.close()
        if raw is not None:
            found[int(partition)] = int(raw)
    return found


async def changelog_end_offsets(settings: KafkaSettings, topic: str) -> dict[int, int]:
    """End offset per partition of `topic`; empty when the broker does not have it."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.broker_servers, **aiokafka_options(settings)
    )
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    partitions = [
        p["partition"] for t in described if t.get("error_code") == 0 for p in t["partitions"]
    ]
    if not partitions:
        return {}
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.broker_servers, **aiokafka_options(settings)
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in partitions]
        # Assigned first: aiokafka's stop() of a consumer that never had an assignment
        # raises CancelledError from its own background task.
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        return {tp.partition: offset for tp, offset in ends.items()}
    finally:
        await consumer.stop()


def discard_stale_tables(settings: KafkaSettings, folder: Path, table: str, changelog: str) -> bool:
    """Remove `folder` when its table files are newer than the changelog; True if removed."""
    if not folder.exists():
        return False
    persisted = persisted_offsets(folder, table)
    if not persisted:
        return False
    ends = asyncio.run(changelog_end_offsets(settings, changelog))
    stale = stale_partitions(persisted, ends)
    if not stale:
        return False
    log.warning(
        "local table files are newer than the changelog on the broker (the broker lost its "
        "data, e.g. `clickscore stack down`/`up`, or the topics were recreated): removing %s "
        "and rebuilding the table from the broker",
        folder,
        extra={
            "partitions": stale,
            "persisted": {p: persisted[p] for p in stale},
            "broker_end": {p: ends.get(p, 0) for p in stale},
        },
    )
    shutil.rmtree(folder)
    return True
