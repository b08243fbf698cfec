"""The Faust app the worker runs, as configured from Settings."""

from __future__ import annotations

import asyncio

from stream.worker.app import create_app
from tests.conftest import make_settings


def test_the_worker_consumer_waits_as_long_as_settings_say() -> None:
    async def build() -> int:
        settings = make_settings(consumer_fetch_max_wait_ms=37)
        app = create_app(settings)
        consumer = app.consumer._thread._create_worker_consumer(app.transport)
        wait: int = consumer._fetch_max_wait_ms
        return wait

    assert asyncio.run(build()) == 37


def test_each_group_and_worker_has_its_own_table_files() -> None:
    # RocksDB files hold one group's changelog offsets and are locked by one process.
    def folder(**changes: object) -> str:
        return str(create_app(make_settings(**changes)).conf.datadir)

    first = folder(consumer_group="a", worker_web_port=6066)
    assert first != folder(consumer_group="b", worker_web_port=6066)
    assert first != folder(consumer_group="a", worker_web_port=6067)
    assert first == folder(consumer_group="a", worker_web_port=6066)


def test_a_produce_the_broker_never_answers_expires_as_settings_say() -> None:
    # Faust's default (1200 s) would hold a window 20 minutes without a word.
    async def build() -> int:
        app = create_app(make_settings(producer_request_timeout_s=7.5))
        producer = app.producer._new_producer()
        timeout: int = producer._request_timeout_ms
        return timeout

    assert asyncio.run(build()) == 7500


def test_offsets_are_committed_as_often_as_settings_say() -> None:
    assert create_app(make_settings(commit_interval_s=42.0)).conf.broker_commit_interval == 42.0
