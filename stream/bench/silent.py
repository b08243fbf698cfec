"""The silent-user index at 10k to 1M users: its memory, the cost of a touch (every scored
user, every window) and of a pass that finds the due users (after every window).

Pure and in-process: no broker or Triton. Times are this process's CPU time, so that a
machine shared with other work does not inflate them. Each user gets one last-event time spread over
30 days; the partition's clock then moves to the end and passes are run until none is due.
"""

from __future__ import annotations

import gc
import random
import time
import tracemalloc
from dataclasses import dataclass

from stream.worker.idle import IdleIndex, IdlePolicy

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
