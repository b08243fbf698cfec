"""Every use of Faust internals, in one place, for the faust-streaming version it was read on.

The worker relies on Faust for its consumer, its table and the table's changelog recovery.
Five things Faust does not let us configure are done here, each through the narrowest hook
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

4. Leaving a window unacknowledged. `Stream.take_events` acknowledges every event of a
   window when the body that handled it ends, by an exception or a cancellation too, and
   acknowledged offsets get committed. `withhold_acks` marks the window's messages as
   already acknowledged, which makes that acknowledgement a no-op for the consumer: their
   offsets are never committed, and the next start reads them again. At shutdown, Faust's
   consumer also waits for every message handed to a stream to be acknowledged (its
   `wait_empty`), including those still buffered behind the unfinished window:
   `withhold_unfinished` marks those the same way, so the shutdown ends, committing only
   what was really done.

5. A stop request before Faust's shutdown. Faust's worker stops on SIGTERM/SIGINT by waiting
   for the streams to empty; a window that waits out a fault would hold that forever.
   `StopAwareWorker` sets an asyncio event first, which the worker's retries observe.

`check_versions()` runs before the app is built and refuses to start on any other version,
so an upgrade of Faust fails loudly at start instead of losing events quietly.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from importlib.metadata import version
from typing import Any

import aiokafka
import faust
from faust.streams import _current_event
from faust.tables.manager import TableManager
from faust.tables.recovery import Recovery
from faust.transport.drivers import aiokafka as faust_aiokafka

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


class _Transport(faust_aiokafka.Transport):  # type: ignore[misc]
    Consumer = _Consumer


class ClickscoreApp(faust.App):  # type: ignore[misc]
    """A Faust app whose worker consumer waits at most `fetch_max_wait_ms` for records."""

    def __init__(self, *args: Any, fetch_max_wait_ms: int, **kwargs: Any) -> None:
        self.fetch_max_wait_ms = fetch_max_wait_ms
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


# --- 4. a window left unacknowledged ----------------------------------------------------------


def withhold_acks(events: Iterable[faust.EventT]) -> None:
    """Keep these events' offsets from being committed by take_events' acknowledgement."""
    for event in events:
        # Message.ack returns early for a message already marked: the consumer never
        # records the offset, so commits stop below it.
        event.message.acked = True


def withhold_unfinished(app: faust.App) -> None:
    """Mark every message the consumer still waits for, so shutdown commits none of them."""
    for message in list(app.consumer._unacked_messages):
        message.acked = True


# --- 5. a stop request before Faust's shutdown --------------------------------------------------


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
