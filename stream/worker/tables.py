"""The per-user state table: user_id bytes -> UserState bytes, backed by its changelog."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import faust
from faust.stores.memory import Store as MemoryStore

from stream.faust_ext import in_partition_of
from stream.settings import WorkerSettings
from stream.worker import metrics

TABLE_NAME = "user_state"


class AssignmentListener(Protocol):
    async def rebalancing(self) -> None: ...
    async def assigned(self, partitions: set[int]) -> None: ...


class UserStateTable(faust.Table):  # type: ignore[misc]
    """A table read and written a window at a time, each user in their own partition.

    Faust takes the partition of a table access from the "current event" of the stream:
    the changelog partition of a write, and for the RocksDB store also which partition's
    database a read or write goes to. The worker touches a whole window of users after its
    events were read, when the current event is just the window's last one, so every
    access here first makes an event of the user's own partition current. Users are keyed
    by user_id like the events topic, so that partition is the one their events came from.

    The table tells its listeners when a rebalance starts and, after every recovery (the
    worker's start, each rebalance), which partitions this worker now owns, with their
    states restored: the silent-user index is rebuilt from them (stream/scoring/idle.py).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._listeners: list[AssignmentListener] = []

    def on_assignment(self, listener: AssignmentListener) -> None:
        """Tell `listener` when a rebalance starts, and which partitions this worker owns
        once their states are restored."""
        self._listeners.append(listener)

    async def on_rebalance(
        self,
        assigned: set[Any],
        revoked: set[Any],
        newly_assigned: set[Any],
        generation_id: int = 0,
    ) -> None:
        # Before the store lets go of revoked partitions: nothing may be reading them then.
        metrics.ASSIGNED_PARTITIONS.set(0)
        for listener in self._listeners:
            await listener.rebalancing()
        await super().on_rebalance(assigned, revoked, newly_assigned, generation_id)

    async def on_recovery_completed(self, active_tps: set[Any], standby_tps: set[Any]) -> None:
        # Faust's store drops revoked partitions' states first (memory store) and Faust
        # resumes the streams only after this returns.
        await super().on_recovery_completed(active_tps, standby_tps)
        partitions = {tp.partition for tp in active_tps}
        metrics.ASSIGNED_PARTITIONS.set(len(partitions))
        for listener in self._listeners:
            await listener.assigned(partitions)

    def stored(self) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, state bytes) of the partitions this worker owns, for a reader that
        may run while windows write the table: RocksDB iterators read a snapshot; the
        memory store's dict is read from a copy of its keys (a dict cannot be iterated
        while it grows), each value as it is when its turn comes."""
        store = self.data
        if isinstance(store, MemoryStore):
            rows: dict[bytes, bytes] = store.data
            return ((key, value) for key in list(rows) if (value := rows.get(key)) is not None)
        items: Iterator[tuple[bytes, bytes]] = iter(store.items())
        return items

    def remember(self, events: Iterable[faust.EventT]) -> None:
        """Keep one event per partition of this window to stand for that partition."""
        self._by_partition: dict[int, faust.EventT] = {
            event.message.partition: event for event in events
        }

    @contextmanager
    def _in_partition(self, partition: int) -> Iterator[None]:
        with in_partition_of(self._by_partition[partition]):
            yield

    def load(self, key: bytes, partition: int) -> bytes | None:
        with self._in_partition(partition):
            value: bytes | None = self.get(key)
            return value

    def put(self, key: bytes, value: bytes, partition: int) -> None:
        with self._in_partition(partition):
            self[key] = value


def user_state_table(app: faust.App, settings: WorkerSettings) -> UserStateTable:
    table = UserStateTable(
        app,
        name=TABLE_NAME,
        beacon=app.tables.beacon,
        default=None,
        # bytes types make Faust pick its raw serializer for the table and its changelog.
        key_type=bytes,
        value_type=bytes,
        partitions=settings.topic_partitions,
    )
    app.tables.add(table)
    return table
