"""The pipeline's first step: the event history a version is trained on, or a refusal.

Sources: `synthetic` (stream/datasets/synthetic.py, with its known anomalies), `topic` (the
events topic read to its current end, the newest settings.train_history_events valid events)
or a `replay` format and a file. A history that cannot make a version is refused with a
`HistoryRefused` naming why, before anything is fitted: nothing is written, nothing served.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stream.contract.events import Event, ValidationLimits, parse_message
from stream.kafka_security import aiokafka_options
from stream.settings import TrainerSettings

log = logging.getLogger(__name__)
# The trainer reads history of any age: the worker's freshness limits are for live events.
_ANY_TIME = ValidationLimits(max_age_s=1 << 40, max_future_s=1 << 40)


class HistoryRefused(Exception):
    """The history cannot make a version; `reason` says why (shown to the operator)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Source:
    data: str = "synthetic"  # "synthetic", "topic", or a stream.datasets.loaders format
    path: Path | None = None
    users: int = 2000  # synthetic only
    days: int = 14
    seed: int = 0


@dataclass
class History:
    events: list[Event]  # time-sorted
    end_ms: int  # the data's end: labels need a horizon of data after a cut-off
    # Known anomalies (synthetic only): user -> (kind, start ms); real data has none.
    anomalies: dict[str, tuple[str, int]] = field(default_factory=dict)
    # The generator's churners (synthetic only): the demo counts alerts against them.
    churners: set[str] | None = None
    description: dict[str, Any] = field(default_factory=dict)

    @property
    def labelled_anomalies(self) -> bool:
        return self.description.get("source") == "synthetic"


@dataclass
class TopicRead:
    events: list[Event]
    messages: int = 0
    rejected: int = 0


def read_topic(settings: TrainerSettings, limit: int) -> TopicRead:
    """The newest `limit` valid events of the events topic, read to its current end, and how
    many messages were read and rejected."""
    from aiokafka import AIOKafkaConsumer

    async def consume() -> TopicRead:
        consumer = AIOKafkaConsumer(
            settings.topic_events,
            bootstrap_servers=settings.broker_servers,
            **aiokafka_options(settings),
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            group_id=None,
        )
        await consumer.start()
        kept: deque[Event] = deque(maxlen=limit)
        read = TopicRead([])
        try:
            while batch := await consumer.getmany(timeout_ms=2000, max_records=10_000):
                for records in batch.values():
                    for record in records:
                        read.messages += 1
                        for parsed in parse_message(record.value or b"", 0, _ANY_TIME):
                            if isinstance(parsed, Event):
                                kept.append(parsed)
                            else:
                                read.rejected += 1
        finally:
            await consumer.stop()
        read.events = list(kept)
        return read

    return asyncio.run(consume())


def load_history(settings: TrainerSettings, source: Source) -> History:
    """The source's events, checked (`check`); raises HistoryRefused."""
    if source.data == "synthetic":
        from stream.datasets.synthetic import SyntheticConfig, generate

        config = SyntheticConfig(users=source.users, days=source.days, seed=source.seed)
        events, truth = generate(config)
        anomalies = {
            u: (t.anomaly, t.anomaly_start_ms)
            for u, t in truth.items()
            if t.anomaly and t.anomaly_start_ms
        }
        desc = {"source": "synthetic", "users": source.users, "days": source.days}
        churners = {u for u, t in truth.items() if t.persona == "churner"}
        history = History(events, config.end_ms, anomalies, churners, {**desc, "seed": source.seed})
    elif source.data == "topic":
        read = read_topic(settings, settings.train_history_events)
        desc = {
            "source": f"topic {settings.topic_events}",
            "messages": read.messages,
            "rejected": read.rejected,
        }
        if read.messages and not read.events:
            raise HistoryRefused(
                f"topic {settings.topic_events}: every one of {read.messages} messages was "
                f"invalid ({read.rejected} events rejected): no history to train on"
            )
        events = sorted(read.events, key=lambda e: e.ts_ms)
        history = History(events, events[-1].ts_ms if events else 0, description=desc)
    else:
        from stream.datasets.loaders import LoadStats, load, sort_by_time

        if source.path is None:
            raise HistoryRefused(f"--data {source.data} needs a PATH")
        stats = LoadStats()
        loaded = list(load(source.data, source.path, stats=stats))
        events = sort_by_time(loaded[-settings.train_history_events :])
        desc = {"source": f"{source.data} {source.path.name}", "rows": stats.rows}
        if stats.rows and not events:
            reasons = ", ".join(f"{r} {n}" for r, n in stats.skipped.most_common())
            raise HistoryRefused(
                f"{desc['source']}: every one of {stats.rows} rows was invalid ({reasons}): "
                "no history to train on"
            )
        history = History(events, events[-1].ts_ms if events else 0, description=desc)
    check(settings, history.events, history.description.get("source", source.data))
    if history.events:
        history.description["window_ms"] = [history.events[0].ts_ms, history.end_ms]
    history.description["events"] = len(history.events)
    return history


def check(settings: TrainerSettings, events: Iterable[Event], source: str) -> None:
    """Refuse an empty history, one shorter than two churn horizons of event time (a churn
    label needs a horizon after its cut-off, and evaluation another), or one of too few users."""
    events = list(events)
    if not events:
        raise HistoryRefused(f"{source}: the history is empty")
    span_ms = max(e.ts_ms for e in events) - min(e.ts_ms for e in events)
    need_ms = 2 * settings.churn_horizon_s * 1000
    if span_ms < need_ms:
        raise HistoryRefused(
            f"{source}: the history spans {span_ms / 86_400_000:.1f} days of event time, "
            f"less than two churn horizons ({need_ms / 86_400_000:.1f} days)"
        )
    users = len({e.user_id for e in events})
    if users < settings.train_min_users:
        raise HistoryRefused(
            f"{source}: {users} users, fewer than CLICKSCORE_TRAIN_MIN_USERS "
            f"({settings.train_min_users})"
        )
