"""`clickscore worker`: wire the Faust app, table, Triton client and sinks, then run."""

from __future__ import annotations

import faust
from faust.types import TP

from stream import logs
from stream.settings import WorkerSettings
from stream.sinks.kafka import KafkaPublisher
from stream.sinks.postgres import ResultStore
from stream.worker import metrics
from stream.worker.agents import register_agents
from stream.worker.app import create_app
from stream.worker.pipeline import ScoringPipeline
from stream.worker.tables import user_state_table
from stream.worker.topics import declare_topics
from stream.worker.triton_client import TritonScorer


def build_worker(settings: WorkerSettings) -> faust.App:
    app = create_app(settings)
    topics = declare_topics(app, settings)
    table = user_state_table(app, settings)
    scorer = TritonScorer(settings)
    store = ResultStore(settings)
    pipeline = ScoringPipeline(
        settings, table, scorer, store, KafkaPublisher(app.producer, settings)
    )
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
    app = build_worker(settings)
    metrics.serve(settings)
    worker = faust.Worker(
        app,
        loglevel=settings.log_level,
        quiet=True,
        redirect_stdouts=False,
        # Faust sets logging up again when it starts: hand it ours, JSON lines throughout.
        logging_config=logs.dict_config(settings.log_level),
    )
    worker.execute_from_commandline()
