"""`clickscore bench latency`: event-to-score and event-to-alert latency at offered rates.

For each rate, on fresh topics of the running local stack: start one real worker, wait
until it has scored a warm-up event (group join and start-up stay out of the figures),
then send synthetic events at that rate and follow the scores topic until every user's
score covers all of their events.

- event -> score: from the bench handing an event to the producer to the bench reading the
  event-triggered score whose `last_event_id` is that event from the scores topic, as a
  downstream consumer would (a window scores each user once, on their newest event, so the
  other events of the window have no score of their own). A silent re-score carries the
  same event id, sent long before, and is not latency: it is skipped.
- event -> alert written: from the sending of an alert's newest triggering event to the
  alert row's `created_at` in the database (the sink transaction's start, so a little early).

The worker's own metrics add the mean window size and the mean time a window spends in each
stage of `ScoringPipeline.process` (the whole run, warm-up window included).

A rate is saturated when the worker finished more than two seconds after the last event was
sent: its latency is then queueing and grows with the length of the run.

Saturation itself (`measure_saturation`) is the achieved rate of a backlog sent unpaced: the
most events/s the worker and Triton sustain on this machine, which the offered rates are
then chosen against (`latency_report.default_rates`).

Where a window's time goes on Triton's side comes from Triton's own counters, read before
and after each rate: the dynamic batcher's queue, the backend's compute (for the python
backend, its stub's IPC included) and the whole request; the worker's client-side request
time (`clickscore_triton_latency_seconds`) less Triton's is gRPC and the client's Python.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from sqlalchemy import select

from stream.bench.ceilings import percentile_ms
from stream.bench.latency_report import (
    TRITON_CLIENT,
    TritonTimes,
    histogram_mean_ms,
    stage_means_ms,
    stage_quantiles_ms,
    triton_times,
)
from stream.bench.worker import bench_settings
from stream.contract.events import Event
from stream.db.models import Alert
from stream.ops.progress import wait_for_scores
from stream.ops.promstats import parse_worker_metrics
from stream.ops.replay import replay
from stream.ops.scrape import fetch_text, metrics_url
from stream.scoring.scores import is_event_triggered
from stream.settings import Settings, host_port
from stream.sinks.postgres import create_engine
from stream.stack import process
from stream.stack.process import spawn_command

WARMUP_USER = "bench-warmup"
SATURATED_AFTER_S = 2.0
ALERT_SETTLE_S = 1.0  # results go to Kafka and the database concurrently


@dataclass(frozen=True)
class LatencyPoint:
    offered_per_s: float
    events: int
    achieved_per_s: float  # events / (first send -> last score needed)
    score_ms: tuple[float, float, float]  # p50, p95, p99
    # From the send to the score's scored_at_ms (the worker's clock, as the window's Triton
    # answer is read): without the result writes and the reader's fetch.
    scored_ms: tuple[float, float, float]
    alerts: int
    alert_ms: tuple[float, float, float]
    drain_s: float  # last send -> last score needed
    window_events: float  # mean events per window, from the worker's metrics
    stage_ms: dict[str, float]  # mean ms per window in each pipeline stage (warm-up left out)
    stage_p99_ms: dict[str, float]  # p99 ms per window in each stage (from the buckets)
    triton_client_ms: float  # mean ms of one Triton request as the worker's client saw it
    triton: dict[str, float]  # Triton's own figures per request (TritonTimes.per_request_ms)

    @property
    def saturated(self) -> bool:
        return self.drain_s > SATURATED_AFTER_S


def percentiles_ms(latencies_s: list[float]) -> tuple[float, float, float]:
    if not latencies_s:
        return (float("nan"), float("nan"), float("nan"))
    p50, p95, p99 = (percentile_ms(latencies_s, q) for q in (50, 95, 99))
    return p50, p95, p99


def score_latency_s(
    score: Mapping[str, object], sent_ms: Mapping[str, int], now_s: float
) -> float | None:
    """Seconds from sending the score's event to reading the score now; None for a score of
    an event this run did not send, or for a silent re-score (trigger "silence"). A record
    without a trigger (schema_version 2) is event-triggered."""
    if not is_event_triggered(score):
        return None
    sent = sent_ms.get(str(score.get("last_event_id")))
    return None if sent is None else max(0.0, now_s - sent / 1000)


def newest_sent_s(event_ids: Sequence[str], sent_ms: dict[str, int]) -> float | None:
    sent = [sent_ms[e] for e in event_ids if e in sent_ms]
    return max(sent) / 1000 if sent else None


async def measure_rate(
    settings: Settings, events: Sequence[Event], rate: float, timeout_s: float
) -> LatencyPoint:
    settings = bench_settings(settings)
    expected = Counter(e.user_id for e in events)
    worker = spawn_command(settings, "worker", name="bench-worker")

    def alive() -> bool:
        return process.is_alive(worker)

    sent_ms: dict[str, int] = {}
    score_s: list[float] = []
    scored_s: list[float] = []

    def on_batch(batch: Sequence[Event]) -> None:
        now_ms = time.time_ns() // 1_000_000
        for event in batch:
            sent_ms[event.event_id] = now_ms

    def on_score(score: dict[str, object]) -> None:
        latency = score_latency_s(score, sent_ms, time.time())
        if latency is not None:
            score_s.append(latency)
            scored_at = score.get("scored_at_ms")
            if isinstance(scored_at, int):
                scored = score_latency_s(score, sent_ms, scored_at / 1000)
                scored_s.append(scored if scored is not None else latency)

    try:
        warmup = Event("bench-warmup-1", WARMUP_USER, time.time_ns() // 1_000_000, "view")
        await replay(settings, [warmup], rate=0, shift_to_now=False)
        await wait_for_scores(settings, {WARMUP_USER: 1}, alive=alive, timeout_s=timeout_s)
        triton_before = await asyncio.to_thread(_triton_times, settings)
        worker_before = await asyncio.to_thread(fetch_text, metrics_url(settings))

        started = datetime.now(UTC)
        sending = asyncio.create_task(
            replay(settings, events, rate=rate, shift_to_now=True, on_batch=on_batch)
        )
        try:
            await wait_for_scores(
                settings, expected, alive=alive, timeout_s=timeout_s, on_score=on_score
            )
            await sending
        finally:
            sending.cancel()
        done_s = time.time()
        await asyncio.sleep(ALERT_SETTLE_S)
        alert_s = await _alert_latencies(settings, started, sent_ms)
        text = await asyncio.to_thread(fetch_text, metrics_url(settings))
        triton = (await asyncio.to_thread(_triton_times, settings)).minus(triton_before)
    finally:
        process.stop(settings.run_dir, worker.name)

    first_s, last_s = min(sent_ms.values()) / 1000, max(sent_ms.values()) / 1000
    return LatencyPoint(
        offered_per_s=rate,
        events=len(events),
        achieved_per_s=len(events) / max(done_s - first_s, 1e-9),
        score_ms=percentiles_ms(score_s),
        scored_ms=percentiles_ms(scored_s),
        alerts=len(alert_s),
        alert_ms=percentiles_ms(alert_s),
        drain_s=max(0.0, done_s - last_s),
        window_events=parse_worker_metrics(text).window_events.mean or 0.0,
        stage_ms=stage_means_ms(text, worker_before),
        stage_p99_ms=stage_quantiles_ms(text, worker_before, 0.99),
        triton_client_ms=histogram_mean_ms(text, worker_before, TRITON_CLIENT),
        triton=triton.per_request_ms(),
    )


async def measure_saturation(
    settings: Settings, events: Sequence[Event], timeout_s: float
) -> float:
    """Events/s achieved on a backlog sent as fast as the producer can: the saturation rate."""
    point = await measure_rate(settings, events, 0, timeout_s)
    return point.achieved_per_s


def _triton_times(settings: Settings) -> TritonTimes:
    host, _ = host_port(settings.triton_http_url)
    url = f"http://{host}:{settings.triton_metrics_port}/metrics"
    return triton_times(fetch_text(url), settings.triton_model)


async def _alert_latencies(
    settings: Settings, since: datetime, sent_ms: dict[str, int]
) -> list[float]:
    engine = create_engine(settings)
    try:
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(Alert.event_ids, Alert.created_at).where(Alert.created_at >= since)
                )
            ).all()
    finally:
        await engine.dispose()
    latencies: list[float] = []
    for event_ids, created_at in rows:
        sent = newest_sent_s(event_ids, sent_ms)
        if sent is not None:
            latencies.append(max(0.0, created_at.timestamp() - sent))
    return latencies


def rate_events(events: Sequence[Event], rate: float, seconds: float, prefix: str) -> list[Event]:
    """The newest `rate * seconds` events of a synthetic history, in time order, with user
    and event ids prefixed: alert ids are deterministic, so a repeated run on the same users
    would find its alerts already in the database and measure nothing."""
    ordered = sorted(events, key=lambda e: e.ts_ms)[-max(1, int(rate * seconds)) :]
    return [
        replace(e, user_id=f"{prefix}{e.user_id}", event_id=f"{prefix}{e.event_id}")
        for e in ordered
    ]
