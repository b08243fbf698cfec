"""Prometheus metrics of the worker, served on WorkerSettings.metrics_host:metrics_port."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from stream.settings import WorkerSettings

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60, 300)

EVENTS_CONSUMED = Counter("clickscore_events_consumed", "Messages read from the events topic.")
EVENTS_DUPLICATE = Counter(
    "clickscore_events_duplicate", "Events whose event_id the user's sequence already holds."
)
DEAD_LETTERS = Counter(
    "clickscore_dead_letters", "Events sent to the dead-letter topic.", ["reason"]
)
WINDOW_EVENTS = Histogram(
    "clickscore_window_events",
    "Events per scoring window.",
    buckets=(1, 8, 32, 128, 512, 2048, 8192),
)
WINDOW_USERS = Histogram(
    "clickscore_window_users",
    "Users scored per window (the Triton batch, before splitting at batch_size).",
    buckets=(1, 8, 32, 64, 128, 256, 512, 1024, 4096),
)
TRITON_LATENCY = Histogram(
    "clickscore_triton_latency_seconds", "One Triton request.", buckets=LATENCY_BUCKETS
)
WINDOW_STAGE = Histogram(
    "clickscore_window_stage_seconds",
    "Time one window spends in each stage: fold (parse, validate, load and apply), "
    "dead_letters, score (Triton), results (Kafka and the database together), table.",
    ["stage"],
    buckets=LATENCY_BUCKETS,
)
EVENT_TO_SCORE = Histogram(
    "clickscore_event_to_score_seconds",
    "From the newest event's timestamp to its score being emitted.",
    buckets=LATENCY_BUCKETS,
)
SCORES_EMITTED = Counter("clickscore_scores_emitted", "Per-user scores written.")
SILENT_RESCORED = Counter(
    "clickscore_silent_rescored", "Users re-scored after a silence, without a new event."
)
ALERTS = Counter("clickscore_alerts", "Alerts raised.", ["kind"])
RETRIES = Counter("clickscore_retries", "Failed calls that were retried, by target.", ["target"])
CONSUMER_LAG = Gauge(
    "clickscore_consumer_lag",
    "Highwater minus position per assigned partition (as the broker reports highwater).",
    ["topic", "partition"],
)


def serve(settings: WorkerSettings) -> None:
    """Expose /metrics unless metrics_port is 0. Binds to loopback by default."""
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr=settings.metrics_host)
