"""`clickscore dlq replay`: send dead-lettered events back to the events topic after a fix.

A dead letter holds the original key and bytes untouched, so replaying it is producing the
same key and value to the events topic again (with a `clickscore.replayed-from` header
naming the dead letter). Typical fixes before a replay: the worker's limits were raised
(`CLICKSCORE_MAX_EVENT_AGE_S` for a backfill), or a bug in validation was fixed.

No duplicates, twice over:
- The tool remembers how far it got in its own consumer group on the dead-letter topic
  (`<consumer_group>.dlq-replay[.<reason>]`), and commits only after the broker has
  acknowledged what it re-sent, so a second run starts where the first one stopped.
- A crash between the acknowledgement and the commit re-sends at most that batch; the worker
  drops events whose id the user's recent sequence already holds.
Each `--reason` has its own group; mixing filtered and unfiltered runs may send an event
twice, which the worker drops as above if it is among the user's recent event ids.

The topic is read to its end as seen when the run started: the run stops after `idle_s`
without new records (end offsets are not trusted: the local broker misreports them).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from stream.kafka_security import aiokafka_options
from stream.retry import retry_forever
from stream.settings import KafkaSettings

log = logging.getLogger(__name__)

REASON_HEADER = "clickscore.reason"
REPLAYED_HEADER = "clickscore.replayed-from"


@dataclass
class DlqReplayStats:
    read: int = 0
    replayed: int = 0
    skipped: int = 0  # other reasons than the one asked for
    by_reason: Counter[str] = field(default_factory=Counter)


def replay_group(settings: KafkaSettings, reason: str | None) -> str:
    return f"{settings.consumer_group}.dlq-replay" + (f".{reason}" if reason else "")


def _is_retriable(exc: BaseException) -> bool:
    from aiokafka.errors import KafkaTimeoutError

    return isinstance(exc, KafkaTimeoutError) or bool(getattr(exc, "retriable", False))


async def _send_all(
    producer: Any, topic: str, records: list[tuple[bytes | None, bytes, bytes]]
) -> None:
    """Send a batch and wait until the broker has all of it; a retry re-sends it whole."""
    deliveries = [
        await producer.send(topic, key=key, value=value, headers=[(REPLAYED_HEADER, origin)])
        for key, value, origin in records
    ]
    for delivery in deliveries:
        await delivery


async def replay_dead_letters(
    settings: KafkaSettings,
    *,
    reason: str | None = None,
    limit: int | None = None,
    idle_s: float = 3.0,
) -> DlqReplayStats:
    """Re-send dead letters (of `reason`, at most `limit`) to the events topic."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    source = settings.topic_dead_letter
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.broker_servers,
        group_id=replay_group(settings, reason),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **aiokafka_options(settings),
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.broker_servers,
        acks="all",
        linger_ms=5,
        **aiokafka_options(settings),
    )
    stats = DlqReplayStats()
    await consumer.start()
    await producer.start()
    try:
        partitions = consumer.partitions_for_topic(source) or set()
        if not partitions:
            log.warning("dead-letter topic %s does not exist or has no partitions", source)
            return stats
        # Manual assignment: no group join (and its wait); the group only keeps offsets.
        consumer.assign([TopicPartition(source, p) for p in sorted(partitions)])
        loop = asyncio.get_running_loop()
        last_record = loop.time()
        done = False
        while not done and loop.time() - last_record < idle_s:
            batch = await consumer.getmany(timeout_ms=500, max_records=500)
            positions: dict[TopicPartition, int] = {}
            outgoing: list[tuple[bytes | None, bytes, bytes]] = []
            for tp, records in batch.items():
                for record in records:
                    if limit is not None and stats.replayed >= limit:
                        done = True
                        break
                    last_record = loop.time()
                    stats.read += 1
                    positions[tp] = record.offset + 1
                    headers = dict(record.headers or ())
                    why = headers.get(REASON_HEADER, b"").decode("utf-8", "replace")
                    if reason is not None and why != reason:
                        stats.skipped += 1
                        continue
                    origin = f"{source}/{record.partition}/{record.offset}".encode()
                    outgoing.append((record.key, record.value, origin))
                    stats.replayed += 1
                    stats.by_reason[why] += 1
            if outgoing:
                await retry_forever(
                    partial(_send_all, producer, settings.topic_events, outgoing),
                    is_retriable=_is_retriable,
                    what="dead-letter replay produce",
                    max_backoff_s=settings.retry_max_backoff_s,
                )
            if positions:
                # Only after the broker has every re-sent record of the batch.
                await consumer.commit(positions)
                if done:
                    break
    finally:
        await producer.stop()
        await consumer.stop()
    return stats


def _replay_command(settings: KafkaSettings, args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    stats = asyncio.run(
        replay_dead_letters(settings, reason=args.reason, limit=args.limit, idle_s=args.idle)
    )
    by_reason = ", ".join(f"{r} {n}" for r, n in sorted(stats.by_reason.items())) or "none"
    print(
        f"replayed {stats.replayed} of {stats.read} dead letters read "
        f"({stats.skipped} of other reasons left); by reason: {by_reason}",
        file=sys.stdout,
    )
    return 0


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dlq = commands.add_parser("dlq", help="the dead-letter topic")
    actions = dlq.add_subparsers(dest="action", required=True)
    replay = actions.add_parser(
        "replay", help="re-send dead-lettered events to the events topic (after a fix)"
    )
    replay.add_argument("--reason", help="only dead letters of this reason (e.g. bad_timestamp)")
    replay.add_argument("--limit", type=int, help="re-send at most this many")
    replay.add_argument(
        "--idle", type=float, default=3.0, help="stop after this many seconds without records"
    )
    replay.set_defaults(handler=_replay_command)
