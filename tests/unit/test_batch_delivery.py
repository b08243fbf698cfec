"""What the worker's batch delivery takes out of a fetch: queued, or handed back unread."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from faust.types import TP

from stream.faust_ext import BatchDelivery

EVENTS = "events"


def records(tp: TP, *offsets: int) -> list[Any]:
    return [SimpleNamespace(topic=tp.topic, partition=tp.partition, offset=o) for o in offsets]


def delivery() -> tuple[BatchDelivery, SimpleNamespace]:
    app = SimpleNamespace(batch_delivery=None, consumer_generation_id=3)
    consumer = SimpleNamespace(_buffered_partitions=set(), _read_offset={})
    return BatchDelivery(app, [EVENTS], max_queued=100), consumer  # type: ignore[arg-type]


def test_records_fetched_while_the_flow_is_stopped_are_handed_back_with_where_they_start() -> None:
    batches, _ = delivery()
    p0, p1, changelog = TP(EVENTS, 0), TP(EVENTS, 1), TP("changelog", 0)
    fetch = {p0: records(p0, 5, 6, 7), p1: records(p1, 40), changelog: records(changelog, 9)}
    assert batches.take_unread(fetch) == {p0: 5, p1: 40}
    assert list(fetch) == [changelog]  # Faust keeps what is not ours


def test_a_partition_paused_since_the_fetch_started_is_handed_back_and_the_rest_queued() -> None:
    batches, consumer = delivery()
    p0, p1 = TP(EVENTS, 0), TP(EVENTS, 1)
    fetch = {p0: records(p0, 5, 6), p1: records(p1, 40, 41)}

    async def run() -> tuple[dict[TP, int], list[int]]:
        unread = await batches.divert(consumer, fetch, active={p0})
        window = await anext(batches.windows(max_events=10))
        return unread, [r.offset for r in window.records]

    consumer.app = SimpleNamespace(monitor=SimpleNamespace(stream_inbound_time={}))
    consumer._to_message = lambda tp, record: SimpleNamespace(tp=tp, offset=record.offset)
    consumer.track_message = lambda message: None
    batches._app.consumer = consumer  # type: ignore[attr-defined]
    unread, queued = asyncio.run(run())
    assert unread == {p1: 40}
    assert queued == [5, 6]
    assert fetch == {}
    assert consumer._read_offset == {p0: 6}
