"""Follow the scores topic until every user's score reflects all of their events.

Used by `clickscore demo` and `clickscore bench` to know when a replayed backlog is done.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import orjson
from aiokafka import AIOKafkaConsumer

from stream.kafka_security import aiokafka_options
from stream.settings import KafkaSettings


async def wait_for_scores(
    settings: KafkaSettings,
    expected: Mapping[str, int],
    *,
    alive: Callable[[], bool],
    timeout_s: float,
    on_score: Callable[[dict[str, object]], None] | None = None,
) -> tuple[float, float]:
    """Monotonic times of the first score and of the last one needed.

    `expected` maps user id to the number of distinct events the user's score must cover.
    """
    consumer = AIOKafkaConsumer(
        settings.topic_scores,
        bootstrap_servers=settings.broker_servers,
        **aiokafka_options(settings),
        auto_offset_reset="earliest",
        fetch_max_bytes=64 * 1024 * 1024,
        # A broker may hold an empty fetch this long (see stream/faust_ext.py); a longer
        # wait would show up in the demo's and the benchmark's latency figures.
        fetch_max_wait_ms=20,
    )
    await consumer.start()
    remaining = dict(expected)
    first = 0.0
    deadline = time.monotonic() + timeout_s
    try:
        while remaining:
            if not alive():
                raise RuntimeError("the worker exited; see its log")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(remaining)} users not fully scored in {timeout_s} s")
            batch = await consumer.getmany(timeout_ms=200, max_records=100_000)
            for records in batch.values():
                first = first or time.monotonic()
                for record in records:
                    score = orjson.loads(record.value)
                    if on_score is not None:
                        on_score(score)
                    user = score["user_id"]
                    if user in remaining and score["event_count"] >= remaining[user]:
                        del remaining[user]
        return first, time.monotonic()
    finally:
        await consumer.stop()
