"""The Faust application: one per worker process, configured from WorkerSettings."""

from __future__ import annotations

from pathlib import Path

import faust

from stream.faust_ext import ClickscoreApp, SeekSafeTableManager, check_versions
from stream.kafka_security import faust_credentials
from stream.settings import WorkerSettings


def worker_folder(settings: WorkerSettings) -> Path:
    """Where this worker's RocksDB table files live.

    They belong to one consumer group's changelog (a new group, or recreated topics, must not
    open them) and to one worker process (RocksDB locks them): a folder per group and per
    worker port, which is distinct per worker on a host.
    """
    return (
        settings.run_dir / "worker-data" / f"{settings.consumer_group}-{settings.worker_web_port}"
    )


def create_app(settings: WorkerSettings) -> faust.App:
    check_versions()
    folder = worker_folder(settings)
    folder.parent.mkdir(parents=True, exist_ok=True)  # Faust creates only the last level
    return ClickscoreApp(
        settings.consumer_group,
        fetch_max_wait_ms=settings.consumer_fetch_max_wait_ms,
        broker=settings.broker_url,
        broker_credentials=faust_credentials(settings),
        store=settings.table_store,
        datadir=str(folder),
        topic_partitions=settings.topic_partitions,
        consumer_auto_offset_reset="earliest",
        processing_guarantee="at_least_once",
        # Short from a group's first run on: joins wait half the stored session timeout.
        broker_session_timeout=10,
        broker_commit_interval=settings.commit_interval_s,
        producer_max_batch_size=settings.producer_max_batch_size,
        # Faust's default is 20 minutes: a produce request the broker never answered would
        # hold its window that long without a word. Expired, it fails as a KafkaTimeoutError,
        # which the publisher retries and logs.
        producer_request_timeout=settings.producer_request_timeout_s,
        stream_buffer_maxsize=settings.stream_buffer_maxsize,
        web_enabled=False,
        web_port=settings.worker_web_port,
        web_bind=settings.metrics_host,
        table_standby_replicas=0,
        autodiscover=False,
        TableManager=SeekSafeTableManager,
    )
