"""The worker's one agent: read windows of events and hand each to the scoring pipeline.

Faust subscribes the consumer to the events topic for this agent, but its records reach the
agent as whole fetched batches (`BatchDelivery`, stream/faust_ext.py), not one `Event` at a
time through the agent's stream: Faust's per-record delivery cost more CPU than everything
the worker does with an event. A window is what was fetched and is waiting, up to
`window_max_events`; its offsets are acknowledged only when the pipeline has finished it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

import faust

from stream.faust_ext import BatchDelivery
from stream.settings import WorkerSettings
from stream.worker.pipeline import ScoringPipeline
from stream.worker.tables import UserStateTable
from stream.worker.topics import Topics
from stream.worker.window import Message

log = logging.getLogger(__name__)

# Exit status when a window fails for a reason retrying cannot fix (a bug, not a fault).
EXIT_WINDOW_FAILED = 70


def register_agents(
    app: faust.App,
    topics: Topics,
    table: UserStateTable,
    pipeline: ScoringPipeline,
    settings: WorkerSettings,
    on_start: Callable[[], Awaitable[None]],
) -> None:
    delivery = BatchDelivery(app, [settings.topic_events], settings.stream_buffer_maxsize)

    @app.agent(topics.events, name="clickscore-score-events")  # type: ignore[untyped-decorator]
    async def score_events(stream: faust.StreamT[Any]) -> None:
        await on_start()  # connect to Triton and the database inside the running loop
        async for window in delivery.windows(settings.window_max_events):
            table.remember(window.events(app))
            messages = [
                Message(
                    key=r.key, value=r.value, topic=r.topic, partition=r.partition, offset=r.offset
                )
                for r in window.records
            ]
            try:
                await pipeline.process(messages)
            except Exception:
                # Retriable faults are retried inside process(); anything else stops the
                # process at once, unacknowledged, so this window is read again on restart.
                first = messages[0]
                log.critical(
                    "window failed; exiting without acknowledging it",
                    exc_info=True,
                    extra={
                        "topic": first.topic,
                        "partition": first.partition,
                        "offset": first.offset,
                        "events": len(messages),
                    },
                )
                logging.shutdown()
                os._exit(EXIT_WINDOW_FAILED)
            window.ack()
