"""The worker's one agent: read windows of events and hand each to the scoring pipeline.

Faust subscribes the consumer to the events topic for this agent, but its records reach the
agent as whole fetched batches (`BatchDelivery`, stream/faust_ext.py), not one `Event` at a
time through the agent's stream: Faust's per-record delivery cost more CPU than everything
the worker does with an event. A window is what was fetched and is waiting, up to
`window_max_events`.

A window is acknowledged (its offsets become committable) only when the pipeline finished it.
No message can stop the agent: a window that fails for a reason retrying cannot fix is
processed again one message at a time, and the message that fails alone is dead-lettered
(`ScoringPipeline.process_isolated`). A stop request or a cancellation while a window is
unfinished (the worker shutting down in the middle of a retry) leaves that window
unacknowledged, so the next start reads it again; the states' applied offsets keep what
was already done from counting twice.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import faust

from stream.faust_ext import BatchDelivery, withhold_unfinished
from stream.retry import Stopping
from stream.settings import WorkerSettings
from stream.worker.pipeline import ScoringPipeline
from stream.worker.tables import UserStateTable
from stream.worker.topics import Topics
from stream.worker.window import Message

log = logging.getLogger(__name__)


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
        try:
            await on_start()  # connect to Triton and the database inside the running loop
        except Stopping:
            return  # stopped while waiting for Triton: no window was taken
        async for window in delivery.windows(settings.window_max_events):
            table.remember(window.events(app))
            messages = [
                Message(
                    key=r.key, value=r.value, topic=r.topic, partition=r.partition, offset=r.offset
                )
                for r in window.records
            ]
            try:
                await _process(pipeline, messages)
            except Stopping:
                withhold_unfinished(app)
                _log_unfinished(messages)
                return  # the worker is shutting down: take no further window
            except BaseException:  # cancelled by the shutdown, or a bug in the fallback
                withhold_unfinished(app)
                _log_unfinished(messages)
                raise
            window.ack()


def _log_unfinished(messages: list[Message]) -> None:
    log.warning(
        "stopping with a window unfinished; it is read again at the next start",
        extra=messages[0].where() | {"events": len(messages)},
    )


async def _process(pipeline: ScoringPipeline, messages: list[Message]) -> None:
    try:
        await pipeline.process(messages)
    except Stopping:
        raise
    except Exception:
        log.error(
            "window failed; processing its messages one at a time",
            exc_info=True,
            extra=messages[0].where() | {"events": len(messages)},
        )
        await pipeline.process_isolated(messages)
