"""Faust's Kafka transport, with the one consumer setting it hard-codes made ours.

faust-streaming creates its aiokafka consumer with `fetch_max_wait_ms=1500`: how long the
broker may hold a fetch that finds no new records. Apache Kafka answers such a fetch as soon
as a record arrives, so the figure costs nothing there; a broker that holds the fetch for
the whole wait (the local tansu does: `clickscore bench latency` measured a median 0.4 s
from event to score at 500 events/s) adds it to the latency of every event that arrives
while the consumer is idle. `Settings.consumer_fetch_max_wait_ms` sets it instead.

The chain is Faust's own extension points: the app makes the transport, the transport names
its consumer class, and the consumer makes the thread that creates the aiokafka consumer.
"""

from __future__ import annotations

from typing import Any

import aiokafka
import faust
from faust.transport.drivers import aiokafka as faust_aiokafka


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):  # type: ignore[misc]
    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka hands this to its fetcher when the consumer starts, which is later.
        consumer._fetch_max_wait_ms = self.app.fetch_max_wait_ms
        return consumer


class _Consumer(faust_aiokafka.Consumer):  # type: ignore[misc]
    def _new_consumer_thread(self) -> _ConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _Transport(faust_aiokafka.Transport):  # type: ignore[misc]
    Consumer = _Consumer


class ClickscoreApp(faust.App):  # type: ignore[misc]
    """A Faust app whose worker consumer waits at most `fetch_max_wait_ms` for records."""

    def __init__(self, *args: Any, fetch_max_wait_ms: int, **kwargs: Any) -> None:
        self.fetch_max_wait_ms = fetch_max_wait_ms
        super().__init__(*args, **kwargs)

    def _new_transport(self) -> _Transport:
        return _Transport(self.conf.broker_consumer, self)
