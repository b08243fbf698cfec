"""The Kafka topics the worker reads and writes. Values are raw bytes (orjson at the edges)."""

from __future__ import annotations

from dataclasses import dataclass

import faust

from stream.settings import WorkerSettings


@dataclass(frozen=True)
class Topics:
    events: faust.TopicT
    scores: faust.TopicT
    alerts: faust.TopicT
    dead_letter: faust.TopicT


def declare_topics(app: faust.App, settings: WorkerSettings) -> Topics:
    def raw(name: str) -> faust.TopicT:
        return app.topic(
            name,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            partitions=settings.topic_partitions,
        )

    return Topics(
        events=raw(settings.topic_events),
        scores=raw(settings.topic_scores),
        alerts=raw(settings.topic_alerts),
        dead_letter=raw(settings.topic_dead_letter),
    )
