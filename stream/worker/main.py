"""`clickscore worker`: wire the Faust app, table, Triton client and sinks, then run."""

from __future__ import annotations

import asyncio

import faust
from faust.types import TP

from stream import logs
from stream.faust_ext import StopAwareWorker
from stream.settings import WorkerSettings
from stream.sinks.kafka import KafkaPublisher
from stream.sinks.outcomes import OutcomeWriter
from stream.sinks.postgres import ResultStore
from stream.worker import metrics, preflight
from stream.worker.agents import register_agents
from stream.worker.app import create_app, worker_folder
from stream.worker.pipeline import ScoringPipeline
from stream.worker.tables import TABLE_NAME, user_state_table
from stream.worker.topics import declare_topics
from stream.worker.triton_client import TritonScorer


def build_worker(
    settings: WorkerSettings, stop: asyncio.Event, health: metrics.Health
) -> faust.App:
    app = create_app(settings)
    topics = declare_topics(app, settings)
    table = user_state_table(app, settings)
    scorer = TritonScorer(settings, health=health, stop=stop)
    store = ResultStore(settings, stop=stop)
    publisher = KafkaPublisher(
        app.producer, settings, stop=stop, max_request_bytes=app.conf.producer_max_request_size
    )
    outcomes = OutcomeWriter(store, settings, stop=stop)
    pipeline = ScoringPipeline(
        settings, table, scorer, store, publisher, health=health, stop=stop, outcomes=outcomes
    )
    table.on_assignment(pipeline.silent_index)
    started = False

    async def on_start() -> None:
        nonlocal started
        if not started:
            await scorer.start()
            await store.start()
            started = True

    @app.timer(5.0)  # type: ignore[untyped-decorator]
    async def report_consumer_lag() -> None:
        for (topic, partition), position in pipeline.positions.items():
            highwater = app.consumer.highwater(TP(topic, partition))
            if highwater is not None:
                lag = max(0, highwater - position)
                metrics.CONSUMER_LAG.labels(topic, str(partition)).set(lag)

    register_agents(app, topics, table, pipeline, settings, on_start)
    return app


def run_worker(settings: WorkerSettings) -> None:
    logs.configure(settings.log_level)
    preflight.check_services(settings)
    if settings.table_store.startswith("rocksdb"):
        changelog = f"{settings.consumer_group}-{TABLE_NAME}-changelog"
        preflight.discard_stale_tables(settings, worker_folder(settings), TABLE_NAME, changelog)
    stop = asyncio.Event()  # set on SIGTERM/SIGINT; retries observe it
    health = metrics.Health()
    app = build_worker(settings, stop, health)
    metrics.serve(settings, health)
    worker = StopAwareWorker(
        app,
        stop=stop,
        loglevel=settings.log_level,
        quiet=True,
        redirect_stdouts=False,
        # Faust sets logging up again when it starts: hand it ours, JSON lines throughout.
        logging_config=logs.dict_config(settings.log_level),
    )
    worker.execute_from_commandline()
