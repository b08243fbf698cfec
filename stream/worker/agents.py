"""The worker's one agent: read windows of events and hand each to the scoring pipeline."""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

import faust

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
    @app.agent(topics.events, name="clickscore-score-events")  # type: ignore[untyped-decorator]
    async def score_events(stream: faust.StreamT[Any]) -> None:
        await on_start()  # connect to Triton and the database inside the running loop
        windows = stream.take_events(settings.window_max_events, within=settings.flush_delay_s)
        async for events in windows:
            table.remember(events)
            messages = [
                Message(
                    key=e.message.key,
                    value=e.message.value,
                    topic=e.message.topic,
                    partition=e.message.partition,
                    offset=e.message.offset,
                )
                for e in events
            ]
            try:
                await pipeline.process(messages)
            except Exception:
                # take_events acknowledges a window when its body ends, even by an
                # exception, and acknowledged offsets get committed. Retriable faults are
                # retried inside process(); anything else stops the process at once so
                # this window is read again on restart instead of being skipped.
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
