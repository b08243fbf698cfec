"""The silent-user index at 10k to 1M users: its memory, the cost of a touch (every scored
user, every window) and of a pass that finds the due users (after every window), and the
cost of rebuilding it from the table when a worker is assigned partitions (`bench_rebuild`).

Pure and in-process: no broker or Triton. Times are this process's CPU time, so that a
machine shared with other work does not inflate them. Each user gets one last-event time spread over
30 days; the partition's clock then moves to the end and passes are run until none is due.
"""

from __future__ import annotations

import asyncio
import gc
import random
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass

from stream.bench.scaling import full_state, open_store, rss_bytes
from stream.contract.tokenizer import Vocabulary
from stream.scoring.idle import IdleIndex, IdlePolicy
from stream.scoring.rebuild import YIELD_EVERY, rebuild

DAY_MS = 86_400_000


@dataclass(frozen=True)
class SilentBench:
    users: int
    index_bytes: int
    touch_us: float  # per user
    pass_ms: float  # one bounded pass, the mean
    slowest_pass_ms: float
    passes: int  # until every due user was taken
    rescored: int


def bench_silent(users: int, policy: IdlePolicy, seed: int = 0) -> SilentBench:
    rng = random.Random(seed)
    last = [rng.randrange(30 * DAY_MS) for _ in range(users)]
    names = [f"user-{n}" for n in range(users)]
    gc.collect()
    tracemalloc.start()  # memory once, time again without it (it slows every allocation)
    measured = IdleIndex(policy)
    for name, ts in zip(names, last, strict=True):
        measured.touch(0, name, ts)
    index_bytes = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del measured
    index = IdleIndex(policy)
    started = time.process_time()
    for name, ts in zip(names, last, strict=True):
        index.touch(0, name, ts)
    touch_us = (time.process_time() - started) / users * 1e6
    index.touch(0, "clock", 31 * DAY_MS)
    slowest, total, passes, rescored = 0.0, 0.0, 0, 0
    while True:
        started = time.process_time()
        due = index.due(0)
        took = time.process_time() - started
        if not due:
            break
        slowest, total = max(slowest, took), total + took
        passes += 1
        rescored += len(due)
    mean_ms = total / max(passes, 1) * 1000
    return SilentBench(users, index_bytes, touch_us, mean_ms, slowest * 1000, passes, rescored)


@dataclass(frozen=True)
class RebuildBench:
    store: str
    users: int
    partitions: int
    indexed: int
    wall_s: float
    cpu_s: float
    longest_block_ms: float  # the longest stretch between two yields to the event loop
    rss_growth_bytes: int  # the index the rebuild made (and, for RocksDB, its block cache)


def bench_rebuild(
    store_kind: str, users: int, policy: IdlePolicy, length: int = 64, partitions: int = 4
) -> RebuildBench:
    """Rebuild the index of every partition from a table of `users` full states, as a worker
    does when it is assigned them after a restart: read each stored state's header, restore
    the user at their next level. One state in four was already re-scored at the first level.

    The table is a real store of the kind Faust opens (scaling.open_store), filled with
    `length`-event states whose last event times spread over 30 days."""
    vocab = Vocabulary()
    start_ms = 30 * DAY_MS
    templates = [full_state(u, length, vocab, start_ms) for u in range(min(users, 1000))]
    rng = random.Random(0)
    with open_store(store_kind) as store:
        for user in range(users):
            state = templates[user % len(templates)]
            state.last_ts_ms = start_ms + rng.randrange(30 * DAY_MS)
            state.source_partition = user % partitions
            state.silence_scored_ms = policy.idle_s * 1000 if user % 4 == 0 else 0
            store[b"user-%d" % user] = state.to_bytes()
        gc.collect()
        index = IdleIndex(policy)
        gaps: list[float] = []
        last = time.perf_counter()

        async def timed() -> int:
            def between_yields() -> Iterator[tuple[bytes, bytes]]:
                nonlocal last
                for n, item in enumerate(store.items(), 1):
                    if n % YIELD_EVERY == 0:  # rebuild yields right after this one
                        now = time.perf_counter()
                        gaps.append(now - last)
                        last = now
                    yield item

            return await rebuild(
                index, set(range(partitions)), between_yields(), yield_every=YIELD_EVERY
            )

        before = rss_bytes()
        started, cpu = time.perf_counter(), time.process_time()
        last = started
        indexed = asyncio.run(timed())
        wall_s, cpu_s = time.perf_counter() - started, time.process_time() - cpu
        gaps.append(time.perf_counter() - last)
        gc.collect()
        grown = rss_bytes() - before
    return RebuildBench(
        store_kind, users, partitions, indexed, wall_s, cpu_s, max(gaps) * 1000, grown
    )
