"""The silent-user index kept in step with the partitions this worker owns.

The index (stream/scoring/idle.py) lives in memory, so whenever the worker is assigned
partitions (at start, after a restart, after a rebalance moved them here) it is rebuilt
from the table: every stored state's header says when the user's last event was and the
longest silence they were already re-scored at (`silence_point`, state format 4), and the
user is put at the next level. Partitions the worker lost are forgotten: their new owner
rebuilds them the same way.

The rebuild runs in the background, yielding to the event loop every `yield_every` states,
so windows are scored while it reads a large table (`clickscore bench silent` measures it).
A window may touch a user of a partition still being rebuilt: `IdleIndex.restore` keeps
the newer of the two. A rebalance cancels a rebuild in progress before the store lets go of
any partition, and the partitions it had not finished are rebuilt from the start once the
new assignment is restored.

States written before format 4 carry no silence re-scored: after an upgrade, a user whose
levels passed under the older worker is re-scored once more, at the longest level passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable

from stream.contract.state import silence_point
from stream.scoring.idle import IdleIndex

log = logging.getLogger(__name__)

YIELD_EVERY = 2_000  # states between yields: about 15 ms of one core at 7 µs a state


async def rebuild(
    index: IdleIndex,
    partitions: set[int],
    stored: Iterable[tuple[bytes, bytes]],
    yield_every: int = YIELD_EVERY,
) -> int:
    """Index the users of `partitions` from their stored (key, state bytes); how many.

    A state of a version that kept no partition (format 1) is indexed under every one of
    them: the pipeline loads a due user from its own partition and skips one it cannot
    find there. Bytes that are no state are skipped: the user's next event fails on them
    and is dead-lettered then.
    """
    index.claim(partitions)
    indexed = 0
    for n, (key, value) in enumerate(stored, 1):
        if n % yield_every == 0:
            await asyncio.sleep(0)
        try:
            point = silence_point(value)
        except ValueError:
            continue
        if not point.event_count:
            continue
        user_id = key.decode("utf-8", "surrogatepass")
        owners = partitions if point.partition < 0 else {point.partition} & partitions
        for partition in owners:
            index.restore(partition, user_id, point.last_ts_ms, point.silence_scored_ms)
            indexed += 1
    return indexed


class IndexRebuilder:
    """Listens to the table's assignments (stream/worker/tables.py) for one index."""

    def __init__(
        self,
        index: IdleIndex,
        stored: Callable[[], Iterable[tuple[bytes, bytes]]],
        observe: Callable[[float], None] = lambda seconds: None,
        yield_every: int = YIELD_EVERY,
    ) -> None:
        self.index = index
        self._stored = stored
        self._observe = observe
        self._yield_every = yield_every
        self._task: asyncio.Task[None] | None = None
        self._unfinished: set[int] = set()

    async def rebalancing(self) -> None:
        """Stop reading the table; forget the partitions the rebuild had not finished."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.index.forget(self._unfinished)
        self._unfinished = set()

    async def assigned(self, partitions: set[int]) -> None:
        """The worker owns `partitions` now, their states restored."""
        await self.rebalancing()  # a recovery without a rebalance first (the first start)
        self.index.forget(self.index.partitions() - partitions)
        gained = partitions - self.index.partitions()
        if gained:
            self.index.claim(gained)  # windows may touch their users from now on
            self._unfinished = gained
            self._task = asyncio.create_task(self._rebuild(gained), name="silent-index-rebuild")

    async def wait(self) -> None:
        """Until the rebuild in progress, if any, is done."""
        if self._task is not None:
            await asyncio.shield(self._task)

    async def _rebuild(self, partitions: set[int]) -> None:
        started = time.perf_counter()
        try:
            users = await rebuild(self.index, partitions, self._stored(), self._yield_every)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Loud, and not half-done: the partitions are forgotten, so the next assignment
            # rebuilds them; until then their silent users wait.
            log.exception(
                "silent-user index rebuild failed", extra={"partitions": sorted(partitions)}
            )
            self.index.forget(partitions)
            self._unfinished = set()
            return
        self._unfinished = set()
        took = time.perf_counter() - started
        self._observe(took)
        log.info(
            "silent-user index rebuilt from the table",
            extra={"partitions": sorted(partitions), "users": users, "seconds": round(took, 3)},
        )
