"""Every use of Faust internals, in one place, for the faust-streaming version it was read on.

The worker relies on Faust for its consumer, its table and the table's changelog recovery.
Six things Faust does not let us configure are done here, each through the narrowest hook
Faust has, and each read against faust-streaming 0.15.3 (and mode-streaming 0.7.1):

1. The consumer's fetch wait. faust-streaming creates its aiokafka consumer with
   `fetch_max_wait_ms=1500`: how long the broker may hold a fetch that finds no new records.
   Apache Kafka answers such a fetch as soon as a record arrives, so the figure costs nothing
   there; a broker that holds the fetch for the whole wait (the local tansu does: `clickscore
   bench latency` measured a median 0.4 s from event to score at 500 events/s) adds it to the
   latency of every event that arrives while the consumer is idle. `ClickscoreApp` takes
   `Settings.consumer_fetch_max_wait_ms` instead, through Faust's own chain: the app makes the
   transport, the transport names its consumer class, the consumer makes the thread that
   creates the aiokafka consumer.

2. Table recovery with the fetcher held still while stream partitions are seeked. When
   recovery ends, `Recovery.on_recovery_completed` resumes the stream partitions, seeks them
   to their committed offsets, and then resumes flow control, which empties the stream
   queues. Its fetcher runs all along, so on a worker that starts with events already
   waiting, records fetched before the seek are queued and then thrown away with the queues,
   and a record handed on after the seek moves the read offsets past records the seek will
   fetch again, which are then dropped as already read (docs/reliability.md). Stopping the
   consumer's flow before Faust's method runs keeps the fetcher from handing on any record
   until that method resumes the flow itself, after the seek.

3. The partition of a table access. Faust takes it from the stream's "current event" (a
   private context variable): the changelog partition of a write and, for the RocksDB store,
   which partition's database a read or write goes to. `in_partition_of` makes a chosen event
   current for the duration of one access.

4. Whole fetched batches for the events topic. Faust hands each record to its stream on
   its own: two asyncio tasks per record in `Consumer._drain_messages` (`wait_first`), the
   conductor's callback, an `Event`, a queue put and get, `take_events`' buffer, one ack
   per record; about 250 µs of one core per event, most of the worker's CPU
   (docs/flamegraphs/). `_Consumer._wait_next_records` takes the records of the topics a
   `BatchDelivery` names out of each fetch, whole, and queues them for the agent; Faust's
   fetch, its flow control and everything it reads for itself (the table's changelog during
   recovery) are unchanged. Offsets are acknowledged through Faust's own bookkeeping only
   after the agent's window is done (`DeliveredWindow.ack`), so Faust commits exactly what it
   would have committed for the same events; while a window is in flight, one Faust message
   per partition stands for it among the consumer's unacknowledged messages, so a rebalance
   waits for the window (`Consumer.wait_empty`) as it would for a stream. A batch fetched
   before a rebalance is dropped unprocessed: Faust seeks every partition back to its
   committed offset after the rebalance, so its records are read again.
   No fetched record of these topics is ever dropped unread otherwise: a fetch that returns
   while the flow is stopped, or with records of a partition paused since it started, has
   their partitions moved back to their first record (`_rewind`). Faust drops such records
   and relies on its next seek to committed offsets, but that seek leaves a partition with no
   committed offset where it is (aiokafka's `seek_to_committed`): in a new group, or after a
   kill before the first commit, records caught by the fetch that recovery's
   `resume_partitions` widens (Faust's active-partition set is shared with the fetch in
   flight) while the flow is stopped for the seek were lost to that run.

5. Leaving a window unacknowledged at shutdown. Faust's consumer waits for every message it
   tracks to be acknowledged (its `wait_empty`), including the unfinished window's stand-ins
   and anything buffered behind it. `withhold_unfinished` marks those messages as already
   acknowledged, which makes an acknowledgement a no-op for the consumer: their offsets are
   never committed, the shutdown ends, and the next start reads them again.

6. A stop request before Faust's shutdown. Faust's worker stops on SIGTERM/SIGINT by waiting
   for the streams to empty; a window that waits out a fault would hold that forever.
   `StopAwareWorker` sets an asyncio event first, which the worker's retries observe.

`check_versions()` runs before the app is built and refuses to start on any other version,
so an upgrade of Faust fails loudly at start instead of losing events quietly.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

import aiokafka
import faust
from faust.streams import _current_event
from faust.tables.manager import TableManager
from faust.tables.recovery import Recovery
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from faust.types.tuples import ack_lock

# The versions whose internals this module was read against. Change them only after reading
# the three hooks above in the new version's source and running the fault suite.
SUPPORTED_VERSIONS = {"faust-streaming": ("0.15.3",), "mode-streaming": ("0.7.1",)}


class UnsupportedFaustVersion(RuntimeError):
    pass


def check_versions() -> None:
    for package, supported in SUPPORTED_VERSIONS.items():
        found = version(package)
        if found not in supported:
            raise UnsupportedFaustVersion(
                f"{package} {found} is installed, but stream/faust_ext.py patches the internals "
                f"of {package} {', '.join(supported)}: read its hooks against {found}'s source "
                f"and the fault suite's results before adding it to SUPPORTED_VERSIONS"
            )


# --- 1. the consumer's fetch wait ----------------------------------------------------------


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):  # type: ignore[misc]
    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka hands this to its fetcher when the consumer starts, which is later.
        consumer._fetch_max_wait_ms = self.app.fetch_max_wait_ms
        return consumer


class _Consumer(faust_aiokafka.Consumer):  # type: ignore[misc]
    def _new_consumer_thread(self) -> _ConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _wait_next_records(self, timeout: float) -> tuple[Any, set[TP] | None]:
        records, active = await super()._wait_next_records(timeout)
        delivery: BatchDelivery | None = self.app.batch_delivery
        if not records or delivery is None:
            return records, active
        if self.flow_active:
            unread = await delivery.divert(self, records, active)
        else:
            unread = delivery.take_unread(records)
        if unread:
            self.log.info("records fetched while stopped, read again from %s", unread)
            await self._thread.call_thread(_rewind, self._thread._ensure_consumer(), unread)
        return records, active


def _rewind(consumer: aiokafka.AIOKafkaConsumer, offsets: dict[TP, int]) -> None:
    """In the consumer's thread: move each still-assigned partition back to `offsets`."""
    assigned = consumer.assignment()
    for tp, offset in offsets.items():
        if tp in assigned:
            consumer.seek(tp, offset)


class _Transport(faust_aiokafka.Transport):  # type: ignore[misc]
    Consumer = _Consumer


class ClickscoreApp(faust.App):  # type: ignore[misc]
    """A Faust app whose worker consumer waits at most `fetch_max_wait_ms` for records."""

    def __init__(self, *args: Any, fetch_max_wait_ms: int, **kwargs: Any) -> None:
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.batch_delivery: BatchDelivery | None = None
        super().__init__(*args, **kwargs)

    def _new_transport(self) -> _Transport:
        return _Transport(self.conf.broker_consumer, self)


# --- 2. recovery that seeks with the fetcher held --------------------------------------------


class SeekSafeRecovery(Recovery):  # type: ignore[misc]
    async def on_recovery_completed(self, generation_id: int = 0) -> None:
        # Faust resumes the flow at the end of this method, after its seek (and a newer
        # rebalance, which returns early from it, stops and resumes the flow itself).
        self.app.consumer.stop_flow()
        await super().on_recovery_completed(generation_id)


class SeekSafeTableManager(TableManager):  # type: ignore[misc]
    """Faust's table manager, recovering with `SeekSafeRecovery`."""

    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:  # type: ignore[has-type]
            self._recovery = SeekSafeRecovery(self.app, self, beacon=self.beacon, loop=self.loop)
        recovery: Recovery = self._recovery
        return recovery


# --- 3. the partition of a table access --------------------------------------------------------


@contextmanager
def in_partition_of(event: faust.EventT) -> Iterator[None]:
    """Make `event` the stream's current event, so table accesses go to its partition."""
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


# --- 4. whole fetched batches for the events topic ---------------------------------------------


@dataclass(frozen=True, slots=True)
class _Batch:
    tp: TP
    records: Sequence[Any]  # aiokafka ConsumerRecords, in offset order
    generation_id: int


class DeliveredWindow:
    """Records of one or more fetched batches, in offset order per partition, to be acked."""

    def __init__(self, consumer: Any, batches: Sequence[_Batch]) -> None:
        self._consumer = consumer
        self.records: list[Any] = [r for b in batches for r in b.records]
        first: dict[TP, int] = {}
        last: dict[TP, Any] = {}
        for batch in batches:
            first.setdefault(batch.tp, batch.records[0].offset)
            last[batch.tp] = batch.records[-1]
        self._first = first
        # One Faust message per partition stands for the window until it is acked.
        self._standing = {tp: consumer._to_message(tp, record) for tp, record in last.items()}
        now = time.monotonic()
        inbound = consumer.app.monitor.stream_inbound_time
        for tp, message in self._standing.items():
            consumer.track_message(message)
            # What a stream records per event: Faust's stall check (`verify_event_path`)
            # would otherwise report these partitions as never processed.
            inbound[tp] = now

    def events(self, app: faust.App) -> list[faust.EventT]:
        """One Faust event per partition, for `in_partition_of`."""
        return [faust.Event(app, m.key, m.value, m.headers, m) for m in self._standing.values()]

    def ack(self) -> None:
        """Acknowledge every record: Faust commits them at its next commit."""
        consumer = self._consumer
        for tp, message in self._standing.items():
            offsets = range(self._first[tp], message.offset)
            with ack_lock:  # the bookkeeping `Consumer.ack` does, for a range of offsets
                committed = consumer._committed_offset[tp]
                index = consumer._acked_index[tp]
                fresh = [
                    o for o in offsets if (committed is None or o >= committed) and o not in index
                ]
                index.update(fresh)
                consumer._acked[tp].extend(fresh)
                consumer._n_acked += len(fresh)
            consumer.ack(message)  # the last offset, and wakes whoever waits for acks


class BatchDelivery:
    """The records of `topics`, fetched batches at a time, at most about `max_queued` waiting."""

    def __init__(self, app: ClickscoreApp, topics: Sequence[str], max_queued: int) -> None:
        self._app = app
        self._topics = frozenset(topics)
        self._max_queued = max_queued
        self._queue: deque[_Batch] = deque()
        self._queued = 0
        self._changed = asyncio.Event()
        app.batch_delivery = self

    def take_unread(self, records: dict[TP, Any]) -> dict[TP, int]:
        """Take this delivery's records out of `records` unread: where each partition's
        records start, to read them again from there."""
        unread: dict[TP, int] = {}
        for tp in [tp for tp in records if tp.topic in self._topics]:
            batch = records.pop(tp)
            if batch:
                unread[tp] = batch[0].offset
        return unread

    async def divert(
        self, consumer: Any, records: dict[TP, Any], active: set[TP] | None
    ) -> dict[TP, int]:
        """Take this delivery's records out of `records` (a fetch) and queue them; where the
        records of partitions paused since the fetch started, which are not queued, start."""
        generation = self._app.consumer_generation_id
        unread: dict[TP, int] = {}
        for tp in [tp for tp in records if tp.topic in self._topics]:
            batch = records.pop(tp)
            if not batch:
                continue
            # Faust's `getmany` filter: a paused partition's records are not handed on.
            if not (active is None or tp in active or tp in consumer._buffered_partitions):
                unread[tp] = batch[0].offset
                continue
            while self._queued >= self._max_queued:  # back-pressure: the fetcher waits
                self._changed.clear()
                await self._changed.wait()
            self._queue.append(_Batch(tp, batch, generation))
            self._queued += len(batch)
            consumer._read_offset[tp] = batch[-1].offset
            self._changed.set()
        return unread

    async def windows(self, max_events: int) -> AsyncIterator[DeliveredWindow]:
        """Everything queued, up to `max_events` at a time; waits only when nothing is."""
        consumer = self._app.consumer
        while True:
            while not self._queue:
                self._changed.clear()
                await self._changed.wait()
            taken: list[_Batch] = []
            count = 0
            while self._queue and count < max_events:
                batch = self._queue.popleft()
                self._queued -= len(batch.records)
                if batch.generation_id != self._app.consumer_generation_id:
                    continue  # fetched before a rebalance: read again from the committed offset
                room = max_events - count
                if len(batch.records) > room:
                    rest = _Batch(batch.tp, batch.records[room:], batch.generation_id)
                    self._queue.appendleft(rest)
                    self._queued += len(rest.records)
                    batch = _Batch(batch.tp, batch.records[:room], batch.generation_id)
                taken.append(batch)
                count += len(batch.records)
            self._changed.set()
            if taken:
                yield DeliveredWindow(consumer, taken)


# --- 5. a window left unacknowledged at shutdown ----------------------------------------------


def withhold_unfinished(app: faust.App) -> None:
    """Mark every message the consumer still waits for, so shutdown commits none of them."""
    for message in list(app.consumer._unacked_messages):
        message.acked = True


# --- 6. a stop request before Faust's shutdown --------------------------------------------------


class StopAwareWorker(faust.Worker):  # type: ignore[misc]
    """Faust's worker, setting `stop` on SIGTERM or SIGINT before it starts shutting down."""

    def __init__(self, *args: Any, stop: asyncio.Event, **kwargs: Any) -> None:
        self._stop_requested = stop
        super().__init__(*args, **kwargs)

    def _on_sigterm(self) -> None:
        self._stop_requested.set()
        super()._on_sigterm()

    def _on_sigint(self) -> None:
        self._stop_requested.set()
        super()._on_sigint()
