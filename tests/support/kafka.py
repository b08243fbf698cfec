"""Small aiokafka helpers for tests: create topics, produce, read a topic to its end."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import ConsumerRecord

from stream.settings import Settings


async def create_topics(settings: Settings, names: Iterable[str], partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.broker_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, partitions, replication_factor=1) for n in names])
    finally:
        await admin.close()


async def produce(
    settings: Settings, topic: str, records: Iterable[tuple[bytes | None, bytes]]
) -> int:
    producer = AIOKafkaProducer(bootstrap_servers=settings.broker_servers, linger_ms=5)
    await producer.start()
    count = 0
    try:
        for key, value in records:
            await producer.send(topic, key=key, value=value)
            count += 1
        await producer.flush()
    finally:
        await producer.stop()
    return count


async def read_all(
    settings: Settings, topic: str, *, until: int | None = None, idle_s: float = 3.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """Read a topic from the start until `until` records arrived or it stays idle `idle_s`.

    No consumer group and no end offsets: the local broker misreports end offsets of
    multi-record batches, so reading until idle is what is reliable here.
    """
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=settings.broker_servers, auto_offset_reset="earliest"
    )
    await consumer.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    loop = asyncio.get_running_loop()
    last = loop.time()
    try:
        while (until is None or len(records) < until) and loop.time() - last < idle_s:
            batch = await consumer.getmany(timeout_ms=200)
            for partition_records in batch.values():
                records += partition_records
                last = loop.time()
    finally:
        await consumer.stop()
    return records
