"""Faust's table recovery, with the fetcher held still while stream partitions are seeked.

When recovery ends, faust-streaming 0.15.3 (`Recovery.on_recovery_completed`) resumes the
stream partitions, seeks them to their committed offsets, and then resumes flow control,
which empties the stream queues. Its fetcher runs all along, so on a worker that starts
with events already waiting:

- records fetched before the seek are queued and then thrown away with the queues, and
- a record the fetcher hands on after the seek has reset the read offsets moves them past
  records the seek will fetch again, which are then dropped as already read.

Either way events go missing: seen here as a restarted worker that scored 99 of 100
waiting events and committed past the missing one, or stopped consuming a partition
(docs/reliability.md). Stopping the consumer's flow before Faust's method runs keeps the
fetcher from handing on any record until that method resumes the flow itself, after the
seek, so reading starts exactly at the committed offsets.
"""

from __future__ import annotations

from faust.tables.manager import TableManager
from faust.tables.recovery import Recovery


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
