"""Results and dead letters to Kafka, awaited until the broker has them.

Delivery is at least once: a failed batch is sent again whole, so a consumer may see a
record twice. Scores carry `event_count` and alerts a deterministic `alert_id` for that.
Only errors aiokafka marks retriable are retried (stream/faults.py); a record the broker or
the producer refuses (too large, not authorised) fails at once instead of stalling the worker.

A dead letter carries the original bytes, unless they do not fit the producer's largest
request (the broker accepted a message larger than ours): then it carries their first bytes
and says so in its headers, with the original size and SHA-256, so the original can still be
identified on the events topic.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Sequence

from stream.contract.events import Rejection
from stream.faults import is_retriable_kafka_error
from stream.retry import retry_forever
from stream.scoring.alerts import Alert, alert_to_json
from stream.scoring.scores import Score, score_to_json
from stream.settings import WorkerSettings
from stream.worker.window import Message

log = logging.getLogger(__name__)

Record = tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]] | None]

# Faust's producer_max_request_size default: what one record may take, all included.
DEFAULT_MAX_REQUEST_BYTES = 1_000_000
# Room for the record's and the batch's framing within a request (a few dozen bytes each).
_FRAMING_BYTES = 512
TRUNCATED_HEADER = "clickscore.truncated"
ORIGINAL_SIZE_HEADER = "clickscore.original-size"
ORIGINAL_SHA256_HEADER = "clickscore.original-sha256"


def dead_letter_record(
    topic: str,
    message: Message,
    rejection: Rejection,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
) -> Record:
    """The original key and bytes; why and where from in the headers. Bytes that do not fit
    one request are cut to what fits, with their original size and hash in the headers."""
    headers = [
        ("clickscore.reason", rejection.reason.encode()),
        ("clickscore.detail", rejection.detail.encode("utf-8", "replace")[:1024]),
        ("clickscore.source.topic", message.topic.encode()),
        ("clickscore.source.partition", str(message.partition).encode()),
        ("clickscore.source.offset", str(message.offset).encode()),
    ]
    if rejection.index is not None:  # one event of a batch message: which one
        headers.append(("clickscore.batch.index", str(rejection.index).encode()))
    key, value = message.key, message.value
    if _size(key, headers) + len(value or b"") > max_request_bytes:
        key = key[:1024] if key is not None else None  # a hostile key can be huge too
        value = value or b""
        headers += [
            (TRUNCATED_HEADER, b"true"),
            (ORIGINAL_SIZE_HEADER, str(len(value)).encode()),
            (ORIGINAL_SHA256_HEADER, hashlib.sha256(value).hexdigest().encode()),
        ]
        value = value[: max(0, max_request_bytes - _size(key, headers))]
    return (topic, key, value, headers)


def _size(key: bytes | None, headers: list[tuple[str, bytes]]) -> int:
    """A record's bytes besides its value, framing included."""
    return len(key or b"") + sum(len(n) + len(v) for n, v in headers) + _FRAMING_BYTES


class KafkaPublisher:
    def __init__(
        self,
        producer: object,
        settings: WorkerSettings,
        *,
        stop: asyncio.Event | None = None,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    ) -> None:
        # `producer` is the Faust app's producer (faust.types.ProducerT).
        self._producer = producer
        self._settings = settings
        self._stop = stop
        self._max_request_bytes = max_request_bytes

    async def dead_letters(self, rejected: Sequence[tuple[Message, Rejection]]) -> None:
        topic = self._settings.topic_dead_letter
        limit = self._max_request_bytes
        await self._send([dead_letter_record(topic, m, r, limit) for m, r in rejected])

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
            is_retriable=is_retriable_kafka_error,
            what="kafka produce",
            # A broker that is back must not wait out a long backoff before results flow.
            max_backoff_s=min(
                self._settings.retry_max_backoff_s, self._settings.reconnect_max_backoff_ms / 1000
            ),
            stop=self._stop,
        )
