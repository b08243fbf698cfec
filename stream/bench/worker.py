"""`clickscore bench worker`: one worker process, end to end, on the local stack.

It replays a synthetic backlog into fresh topics, starts a real `clickscore worker`
process, and reads the scores topic until every user's score reflects all of their events.
Throughput is events / (time of the last needed score - time of the first score), so the
worker's start-up (group join, table recovery) is reported apart, not hidden in the rate.

The worker's CPU time (user + system, from /proc, so Triton, the broker and the database
are not in it) is sampled through the run and read at the first and the last needed
score: CPU per event is what the worker process itself spent per event while scoring.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import os
import platform
import shutil
import signal
import subprocess
import sys
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
    workers: int
    produce_s: float
    startup_s: float  # worker start to first score
    scoring_s: float  # first score to the last score needed
    events_per_s: float
    peak_rss_bytes: int | None  # the largest worker's, read just before they are stopped
    worker_cpu_s: float  # the workers' CPU time from the first score to the last one needed
    worker_cpu_us_per_event: float
    worker_cpu_share: float  # worker_cpu_s / scoring_s: 1.0 is one whole core, all workers


# How often the worker's CPU time is read; the figure at a score's time is interpolated.
CPU_SAMPLE_S = 0.05


class CpuSamples:
    """(monotonic time, CPU seconds) of one process, read every `CPU_SAMPLE_S`."""

    def __init__(self, record: process.ProcessRecord) -> None:
        self._record = record
        self.times: list[float] = []
        self.cpu: list[float] = []

    def sample(self) -> None:
        cpu = process.cpu_seconds(self._record)
        if cpu is not None:
            self.times.append(time.monotonic())
            self.cpu.append(cpu)

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(CPU_SAMPLE_S)

    def at(self, when: float) -> float:
        """CPU seconds at `when`, linearly between the samples around it."""
        if not self.times:
            raise RuntimeError("the worker's CPU time was never read")
        i = bisect.bisect_left(self.times, when)
        if i <= 0:
            return self.cpu[0]
        if i >= len(self.times):
            return self.cpu[-1]
        t0, t1 = self.times[i - 1], self.times[i]
        c0, c1 = self.cpu[i - 1], self.cpu[i]
        return c0 + (c1 - c0) * (when - t0) / max(t1 - t0, 1e-9)


def bench_settings(settings: Settings) -> Settings:
    return settings.for_run(
        f"bench-{uuid.uuid4().hex[:8]}",
        metrics_port=free_port(),
        worker_web_port=free_port(),
    )


def record_flamegraph(pid: int, path: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling `pid` into an SVG at `path` until the process ends or is stopped.

    Only samples that hold the GIL: the CPU the worker spends in Python, not its threads
    waiting on sockets.
    """
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if py_spy is None:
        raise RuntimeError("py-spy is not installed: pip install -e '.[dev]'")
    path.parent.mkdir(parents=True, exist_ok=True)
    argv = [py_spy, "record", "--nonblocking", "--gil", "--rate", "100", "--nolineno"]
    argv += ["-o", str(path)]
    return subprocess.Popen([*argv, "--pid", str(pid)], stdout=subprocess.DEVNULL)


async def group_members(settings: Settings) -> int:
    """Members of the worker's consumer group once it is stable (0 while it rebalances)."""
    from aiokafka.admin import AIOKafkaAdminClient

    from stream.kafka_security import aiokafka_options

    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.broker_servers, **aiokafka_options(settings)
    )
    await admin.start()
    try:
        [response] = await admin.describe_consumer_groups([settings.consumer_group])
        [group] = response.groups
        _error, _name, state, _type, _protocol, members = group[:6]
        return len(members) if state == "Stable" else 0
    finally:
        await admin.close()


async def wait_for_group(
    settings: Settings, workers: list[process.ProcessRecord], timeout_s: float
) -> None:
    """Until every worker has joined the group and it stays stable for a second."""
    deadline = time.monotonic() + timeout_s
    stable_since: float | None = None
    while True:
        if not all(process.is_alive(w) for w in workers):
            raise RuntimeError("a worker exited while joining; see its log")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(workers)} workers did not form a stable group")
        if await group_members(settings) == len(workers):
            stable_since = stable_since or time.monotonic()
            if time.monotonic() - stable_since >= 1.0:
                return
        else:
            stable_since = None
        await asyncio.sleep(0.2)


async def bench_worker(
    settings: Settings,
    users: int,
    days: int,
    seed: int,
    timeout_s: float,
    *,
    flamegraph: Path | None = None,
    workers: int | None = None,
) -> WorkerBench:
    """One worker started on a waiting backlog; or, with `workers`, that many workers in
    one consumer group, started first and joined, then given the backlog all at once."""
    from stream.datasets.synthetic import SyntheticConfig, generate
    from stream.ops.replay import ensure_topic, replay

    settings = bench_settings(settings)
    events, _ = generate(SyntheticConfig(users=users, days=days, seed=seed))
    expected = Counter(e.user_id for e in events)
    records: list[process.ProcessRecord] = []

    def start_workers(count: int) -> None:
        for i in range(count):
            # Each worker its own Faust and metrics ports, as separate hosts would have.
            own = settings.model_copy(
                update={"worker_web_port": free_port(), "metrics_port": free_port()}
            )
            records.append(spawn_command(own, "worker", name=f"bench-worker-{i}"))

    def alive() -> bool:
        return all(process.is_alive(w) for w in records)

    try:
        if workers is None:
            started = time.monotonic()
            await replay(settings, events, rate=0, shift_to_now=True)
            produce_s = time.monotonic() - started
            start_workers(1)
            launched = time.monotonic()
        else:
            await ensure_topic(settings, settings.topic_events)
            start_workers(workers)
            launched = time.monotonic()
            await wait_for_group(settings, records, timeout_s)
            started = time.monotonic()
            await replay(settings, events, rate=0, shift_to_now=True)
            produce_s = time.monotonic() - started
        samples = [CpuSamples(w) for w in records]
        profiler: subprocess.Popen[bytes] | None = None

        def on_score(_score: dict[str, object]) -> None:
            nonlocal profiler
            # From the first score: the flame graph shows scoring, not imports and joins.
            if flamegraph is not None and profiler is None:
                profiler = record_flamegraph(records[0].pid, flamegraph)

        samplers = [asyncio.ensure_future(s.run()) for s in samples]
        try:
            first, last = await wait_for_scores(
                settings, expected, alive=alive, timeout_s=timeout_s, on_score=on_score
            )
            for sample in samples:
                sample.sample()
            peaks = [process.peak_rss_bytes(w) for w in records]
        finally:
            for sampler in samplers:
                sampler.cancel()
            if profiler is not None:
                # SIGINT makes py-spy write what it sampled so far.
                profiler.send_signal(signal.SIGINT)
                await asyncio.to_thread(profiler.wait, 30)
            for sampler in samplers:
                with contextlib.suppress(asyncio.CancelledError):
                    await sampler
    finally:
        for record in records:
            process.stop(settings.run_dir, record.name)
    scoring_s = max(last - first, 1e-9)
    cpu_s = sum(s.at(last) - s.at(first) for s in samples)
    known_peaks = [p for p in peaks if p is not None]
    return WorkerBench(
        users=len(expected),
        events=len(events),
        workers=len(records),
        produce_s=produce_s,
        startup_s=first - launched,
        scoring_s=scoring_s,
        events_per_s=len(events) / scoring_s,
        peak_rss_bytes=max(known_peaks) if known_peaks else None,
        worker_cpu_s=cpu_s,
        worker_cpu_us_per_event=cpu_s / len(events) * 1e6,
        worker_cpu_share=cpu_s / scoring_s,
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
