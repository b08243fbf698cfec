"""The demo's live view: throughput, window sizes, latency of event-triggered scores, silent
re-scores, dead letters and the latest alerts.

It reads the worker's Prometheus endpoint over HTTP and the alerts topic with aiokafka, and
draws with rich (a `Live` table, progress bars) about four times a second. When stdout is not
a terminal (CI, a log file) it prints one plain line every few seconds instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import orjson
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from stream.kafka_security import aiokafka_options
from stream.ops.promstats import (
    WorkerMetrics,
    histogram_of,
    histogram_quantile,
    parse_worker_metrics,
)
from stream.ops.scrape import fetch_text, metrics_url
from stream.settings import Settings
from stream.worker.metrics import LATENCY_BUCKETS

REFRESH_PER_S = 4
PLAIN_EVERY_S = 5.0
RATE_SPAN_S = 3.0  # events/s and window sizes over this much recent time
LATEST_ALERTS = 8


@dataclass(frozen=True)
class Snapshot:
    """What one refresh shows; built from the live state by `snapshot`, drawn by `render`."""

    elapsed_s: float
    events_per_s: float | None
    window_events: float | None
    window_users: float | None
    latency_p50_s: float | None
    latency_p99_s: float | None
    latency_source: str
    silent_rescored: int  # users re-scored for their silence (the worker's counter)
    silent_due: float | None  # due but not re-scored yet (the worker's gauge)
    dead_letters: int
    alerts_by_kind: dict[str, int]
    latest_alerts: list[dict[str, Any]]
    worker_up: bool


@dataclass
class LiveState:
    started: float = field(default_factory=time.monotonic)
    scrapes: deque[tuple[float, WorkerMetrics]] = field(default_factory=lambda: deque(maxlen=64))
    # Event sent -> its event-triggered score in Kafka (a silent re-score is not latency).
    latencies_s: list[float] = field(default_factory=list)
    alerts: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=LATEST_ALERTS))
    alert_counts: dict[str, int] = field(default_factory=dict)
    alert_ids: set[str] = field(default_factory=set)  # delivery is at least once

    def add_scrape(self, at: float, metrics: WorkerMetrics) -> None:
        self.scrapes.append((at, metrics))

    def add_alert(self, alert: dict[str, Any]) -> None:
        alert_id = str(alert.get("alert_id", ""))
        if alert_id in self.alert_ids:
            return
        self.alert_ids.add(alert_id)
        self.alerts.append(alert)
        kind = str(alert.get("kind", "?"))
        self.alert_counts[kind] = self.alert_counts.get(kind, 0) + 1


def snapshot(state: LiveState, now: float) -> Snapshot:
    latest = state.scrapes[-1][1] if state.scrapes else None
    rate = window_events = window_users = None
    if latest is not None:
        at = state.scrapes[-1][0]
        earlier = [(t, m) for t, m in state.scrapes if at - t >= RATE_SPAN_S]
        then, before = earlier[-1] if earlier else state.scrapes[0]
        if at > then:
            rate = max(0.0, latest.events_consumed - before.events_consumed) / (at - then)
        recent_events = latest.window_events.minus(before.window_events)
        recent_users = latest.window_users.minus(before.window_users)
        # The recent windows, or the whole run's when none were scored lately.
        window_events = recent_events.mean or latest.window_events.mean
        window_users = recent_users.mean or latest.window_users.mean
    if state.latencies_s:
        latency = histogram_of(state.latencies_s, LATENCY_BUCKETS)
        source = "event sent -> event-triggered score in Kafka"
    else:
        latency = latest.event_to_score if latest is not None else histogram_of([], ())
        source = "event time -> event-triggered score (worker)"
    return Snapshot(
        elapsed_s=now - state.started,
        events_per_s=rate,
        window_events=window_events,
        window_users=window_users,
        latency_p50_s=histogram_quantile(latency, 0.5),
        latency_p99_s=histogram_quantile(latency, 0.99),
        latency_source=source,
        silent_rescored=int(latest.silent_rescored) if latest is not None else 0,
        silent_due=latest.silent_due if latest is not None else None,
        dead_letters=int(latest.dead_letters) if latest is not None else 0,
        alerts_by_kind=dict(state.alert_counts),
        latest_alerts=list(state.alerts),
        worker_up=latest is not None,
    )


def _number(value: float | None, fmt: str = ",.0f", unit: str = "") -> str:
    return "-" if value is None else f"{value:{fmt}}{unit}"


def _count(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:,.0f}"


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:,.0f} ms" if value < 1 else f"{value:,.2f} s"


def plain_line(view: Snapshot, progress: dict[str, tuple[int, int]]) -> str:
    """One line for logs: the same numbers as the terminal view."""
    parts = [f"[{view.elapsed_s:5.0f} s]"]
    parts += [f"{name} {done:,}/{total:,}" for name, (done, total) in progress.items()]
    parts += [
        f"{_number(view.events_per_s)} events/s",
        f"window {_number(view.window_events)} events/{_number(view.window_users)} users",
        f"event-triggered latency p50 {_seconds(view.latency_p50_s)} "
        f"p99 {_seconds(view.latency_p99_s)}",
        f"silent re-scores {view.silent_rescored:,} (still due {_count(view.silent_due)})",
        f"dead letters {view.dead_letters}",
        "alerts " + (", ".join(f"{k} {n}" for k, n in sorted(view.alerts_by_kind.items())) or "0"),
    ]
    return " | ".join(parts)


def render(view: Snapshot) -> RenderableType:
    stats = Table.grid(padding=(0, 2))
    stats.add_column(style="bold")
    stats.add_column(justify="right")
    stats.add_row("events/s", _number(view.events_per_s))
    stats.add_row(
        "scoring window",
        f"{_number(view.window_events)} events, {_number(view.window_users)} users",
    )
    stats.add_row(
        "event-triggered latency p50 / p99",
        f"{_seconds(view.latency_p50_s)} / {_seconds(view.latency_p99_s)}",
    )
    stats.add_row("", f"[dim]{view.latency_source}[/dim]")
    stats.add_row(
        "silent re-scores", f"{view.silent_rescored:,}, still due {_count(view.silent_due)}"
    )
    stats.add_row("dead letters", str(view.dead_letters))
    counts = ", ".join(f"{kind} {n}" for kind, n in sorted(view.alerts_by_kind.items()))
    stats.add_row("alerts", counts or "0")
    alerts = Table(expand=True, show_edge=False)
    for column in ("kind", "user", "score", "reason"):
        alerts.add_column(column, overflow="ellipsis", no_wrap=True)
    for alert in reversed(view.latest_alerts):
        alerts.add_row(
            str(alert.get("kind", "")),
            str(alert.get("user_id", "")),
            f"{float(alert.get('score', 0.0)):.2f}",
            str(alert.get("reason", "")),
        )
    status = "worker metrics" if view.worker_up else "[yellow]waiting for the worker[/yellow]"
    return Group(
        Panel(stats, title=f"clickscore demo · {view.elapsed_s:.0f} s · {status}"),
        Panel(alerts, title="latest alerts"),
    )


class LiveView:
    """`async with LiveView(settings) as view:` draws until the block ends.

    The caller reports progress with `view.progress(name, done, total)` and the send-to-score
    latencies of event-triggered scores with `view.observe_latency(seconds)`.
    """

    def __init__(self, settings: Settings, console: Console | None = None) -> None:
        self._settings = settings
        self._console = console or Console()
        self._state = LiveState()
        self._bars = Progress(
            TextColumn("{task.description:<10}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self._console,
        )
        self._tasks: dict[str, Any] = {}
        self._counts: dict[str, tuple[int, int]] = {}
        self._running: list[asyncio.Task[None]] = []
        self._live: Live | None = None

    @property
    def metrics_url(self) -> str:
        return metrics_url(self._settings)

    @property
    def interactive(self) -> bool:
        return self._console.is_terminal

    def progress(self, name: str, done: int, total: int) -> None:
        self._counts[name] = (done, total)
        if name not in self._tasks:
            self._tasks[name] = self._bars.add_task(name, total=total)
        self._bars.update(self._tasks[name], completed=done, total=total)

    def observe_latency(self, seconds: float) -> None:
        self._state.latencies_s.append(seconds)

    def snapshot(self) -> Snapshot:
        return snapshot(self._state, time.monotonic())

    async def wait_for_worker(self, timeout_s: float, alive: Any) -> None:
        """Until the worker owns partitions with their states restored, so that the replay's
        first events are read at once rather than wait out the group join (which would count
        the join, not the pipeline, in the event-triggered latency)."""
        deadline = time.monotonic() + timeout_s
        while (metrics := await self._scrape()) is None or metrics.ready_partitions == 0:
            if not alive():
                raise RuntimeError("the worker exited; see its log")
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the worker at {self.metrics_url} owned no partition within {timeout_s} s"
                )
            await asyncio.sleep(0.25)

    async def __aenter__(self) -> LiveView:
        self._running = [
            asyncio.create_task(self._poll_metrics()),
            asyncio.create_task(self._follow_alerts()),
            asyncio.create_task(self._draw()),
        ]
        if self.interactive:
            self._live = Live(
                get_renderable=self._renderable,
                console=self._console,
                refresh_per_second=REFRESH_PER_S,
            )
            self._live.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for task in self._running:
            task.cancel()
        for task in self._running:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._scrape()
        if self._live is not None:
            self._live.stop()
        else:
            self._console.print(plain_line(self.snapshot(), self._counts), soft_wrap=True)

    def _renderable(self) -> RenderableType:
        return Group(render(self.snapshot()), self._bars)

    async def _draw(self) -> None:
        """Plain mode only: rich's Live redraws itself in a terminal."""
        if self.interactive:
            return
        while True:
            await asyncio.sleep(PLAIN_EVERY_S)
            self._console.print(plain_line(self.snapshot(), self._counts), soft_wrap=True)

    async def _scrape(self) -> WorkerMetrics | None:
        try:
            text = await asyncio.to_thread(fetch_text, self.metrics_url)
        except OSError:
            return None
        metrics = parse_worker_metrics(text)
        self._state.add_scrape(time.monotonic(), metrics)
        return metrics

    async def _poll_metrics(self) -> None:
        while True:
            await self._scrape()
            await asyncio.sleep(1 / REFRESH_PER_S)

    async def _follow_alerts(self) -> None:
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(
            self._settings.topic_alerts,
            bootstrap_servers=self._settings.broker_servers,
            **aiokafka_options(self._settings),
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            while True:
                batch = await consumer.getmany(timeout_ms=250)
                for record in _records(batch):
                    with contextlib.suppress(orjson.JSONDecodeError):
                        alert = orjson.loads(record.value)
                        if isinstance(alert, dict):
                            self._state.add_alert(alert)
        finally:
            await consumer.stop()


def _records(batch: dict[Any, list[Any]]) -> Iterator[Any]:
    for records in batch.values():
        yield from records
