"""`clickscore bench worker`: one worker process, end to end, on the local stack.

It replays a synthetic backlog into fresh topics, starts a real `clickscore worker`
process, and reads the scores topic until every user's score reflects all of their events.
Throughput is events / (time of the last needed score - time of the first score), so the
worker's start-up (group join, table recovery) is reported apart, not hidden in the rate.
"""

from __future__ import annotations

import os
import platform
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from stream.ops.progress import wait_for_scores
from stream.settings import Settings
from stream.stack import process
from stream.stack.process import free_port, spawn_command


@dataclass(frozen=True)
class WorkerBench:
    users: int
    events: int
    produce_s: float
    startup_s: float  # worker start to first score
    scoring_s: float  # first score to the last score needed
    events_per_s: float
    peak_rss_bytes: int | None  # the worker's, read just before it is stopped


def bench_settings(settings: Settings) -> Settings:
    return settings.for_run(
        f"bench-{uuid.uuid4().hex[:8]}",
        metrics_port=free_port(),
        worker_web_port=free_port(),
    )


async def bench_worker(
    settings: Settings, users: int, days: int, seed: int, timeout_s: float
) -> WorkerBench:
    from stream.datasets.synthetic import SyntheticConfig, generate
    from stream.ops.replay import replay

    settings = bench_settings(settings)
    events, _ = generate(SyntheticConfig(users=users, days=days, seed=seed))
    expected = Counter(e.user_id for e in events)
    started = time.monotonic()
    await replay(settings, events, rate=0, shift_to_now=True)
    produce_s = time.monotonic() - started

    worker = spawn_command(settings, "worker", name="bench-worker")
    launched = time.monotonic()
    try:
        first, last = await wait_for_scores(
            settings, expected, alive=lambda: process.is_alive(worker), timeout_s=timeout_s
        )
        peak_rss = process.peak_rss_bytes(worker)
    finally:
        process.stop(settings.run_dir, worker.name)
    scoring_s = max(last - first, 1e-9)
    return WorkerBench(
        users=len(expected),
        events=len(events),
        produce_s=produce_s,
        startup_s=first - launched,
        scoring_s=scoring_s,
        events_per_s=len(events) / scoring_s,
        peak_rss_bytes=peak_rss,
    )


def describe_machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"
