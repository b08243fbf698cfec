"""The worker's Kafka consumer takes its fetch wait from Settings, not Faust's 1,500 ms."""

from __future__ import annotations

import asyncio

from stream.app import create_app
from tests.conftest import make_settings


def test_the_worker_consumer_waits_as_long_as_settings_say() -> None:
    async def build() -> int:
        settings = make_settings(consumer_fetch_max_wait_ms=37)
        app = create_app(settings)
        consumer = app.consumer._thread._create_worker_consumer(app.transport)
        wait: int = consumer._fetch_max_wait_ms
        return wait

    assert asyncio.run(build()) == 37
