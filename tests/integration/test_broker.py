"""The tansu broker, through aiokafka: keyed produce, group consume, commit and resume."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from stream.settings import Settings

pytestmark = pytest.mark.integration


async def _create_topic(settings: Settings, name: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.broker_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, replication_factor=1)])
        assert name in await admin.list_topics()
    finally:
        await admin.close()


async def _consume(settings: Settings, topic: str, count: int) -> list[tuple[bytes, bytes, int]]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.broker_servers,
        group_id=settings.consumer_group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=10_000,
    )
    await consumer.start()
    received: list[tuple[bytes, bytes, int]] = []
    try:
        async with asyncio.timeout(30):
            while len(received) < count:
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    received += [(r.key, r.value, r.partition) for r in records]  # type: ignore[misc]
        await consumer.commit()
    finally:
        await consumer.stop()
    return received


async def test_keyed_produce_consume_commit_and_resume(settings: Settings) -> None:
    topic = settings.topic_events
    await _create_topic(settings, topic, partitions=3)
    producer = AIOKafkaProducer(bootstrap_servers=settings.broker_servers)
    await producer.start()
    try:
        for i in range(300):
            await producer.send(topic, key=f"user-{i % 7}".encode(), value=f"{i}".encode())
        await producer.flush()
    finally:
        await producer.stop()

    first = await _consume(settings, topic, 300)
    assert sorted(int(v) for _, v, _ in first) == list(range(300))
    # Keyed: every record of one user lands in one partition, in the order it was sent.
    partitions_by_user: dict[bytes, set[int]] = {}
    for key, _, partition in first:
        partitions_by_user.setdefault(key, set()).add(partition)
    assert all(len(p) == 1 for p in partitions_by_user.values())
    for user in partitions_by_user:
        values = [int(v) for k, v, _ in first if k == user]
        assert values == sorted(values)

    # Committed: the same group resumes after the last record and sees only new ones.
    producer = AIOKafkaProducer(bootstrap_servers=settings.broker_servers)
    await producer.start()
    try:
        await producer.send_and_wait(topic, key=b"user-0", value=b"300")
    finally:
        await producer.stop()
    second = await _consume(settings, topic, 1)
    assert [int(v) for _, v, _ in second] == [300]


async def test_committed_offsets_are_stored_per_group(settings: Settings) -> None:
    topic = settings.topic_events
    await _create_topic(settings, topic, partitions=1)
    producer = AIOKafkaProducer(bootstrap_servers=settings.broker_servers)
    await producer.start()
    try:
        for i in range(10):
            await producer.send(topic, value=str(i).encode())
        await producer.flush()
    finally:
        await producer.stop()
    await _consume(settings, topic, 10)

    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.broker_servers, group_id=settings.consumer_group
    )
    await consumer.start()
    try:
        committed = await consumer.committed(TopicPartition(topic, 0))
    finally:
        await consumer.stop()
    assert committed == 10
