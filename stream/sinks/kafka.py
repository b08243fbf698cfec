"""Results and dead letters to Kafka, awaited until the broker has them.

Delivery is at least once: a failed batch is sent again whole, so a consumer may see a
record twice. Scores carry `event_count` and alerts a deterministic `alert_id` for that.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Sequence

from stream.contract.events import Rejection
from stream.retry import retry_forever
from stream.settings import WorkerSettings
from stream.worker.alerts import Alert, alert_to_json
from stream.worker.scores import Score, score_to_json
from stream.worker.window import Message

log = logging.getLogger(__name__)

Record = tuple[str, bytes | None, bytes, list[tuple[str, bytes]] | None]


def dead_letter_record(topic: str, message: Message, rejection: Rejection) -> Record:
    """The original key and bytes, untouched; why and where from in the headers."""
    headers = [
        ("clickscore.reason", rejection.reason.encode()),
        ("clickscore.detail", rejection.detail.encode("utf-8", "replace")),
        ("clickscore.source.topic", message.topic.encode()),
        ("clickscore.source.partition", str(message.partition).encode()),
        ("clickscore.source.offset", str(message.offset).encode()),
    ]
    if rejection.index is not None:  # one event of a batch message: which one
        headers.append(("clickscore.batch.index", str(rejection.index).encode()))
    return (topic, message.key, message.value, headers)


class KafkaPublisher:
    def __init__(self, producer: object, settings: WorkerSettings) -> None:
        # `producer` is the Faust app's producer (faust.types.ProducerT).
        self._producer = producer
        self._settings = settings

    async def dead_letters(self, rejected: Sequence[tuple[Message, Rejection]]) -> None:
        topic = self._settings.topic_dead_letter
        await self._send([dead_letter_record(topic, m, r) for m, r in rejected])

    async def results(self, scores: Sequence[Score], alerts: Sequence[Alert]) -> None:
        records: list[Record] = [
            (self._settings.topic_scores, s.user_id.encode(), score_to_json(s), None)
            for s in scores
        ]
        records += [
            (self._settings.topic_alerts, a.user_id.encode(), alert_to_json(a), None)
            for a in alerts
        ]
        await self._send(records)

    async def _send(self, records: list[Record]) -> None:
        if not records:
            return

        async def send_all() -> None:
            pending: list[Awaitable[object]] = []
            for topic, key, value, headers in records:
                send = self._producer.send  # type: ignore[attr-defined]
                pending.append(await send(topic, key, value, None, None, headers))
            for delivery in pending:
                await delivery

        await retry_forever(
            send_all,
            is_retriable=lambda exc: not isinstance(exc, (TypeError, ValueError)),
            what="kafka produce",
            max_backoff_s=self._settings.retry_max_backoff_s,
        )
