"""Prometheus gauges of `clickscore outcomes`, served on metrics_host:outcomes_metrics_port.

The job computes the realised figures, so it serves them: the worker never reads the
database back, and the figures change once per run, not per event. Each run replaces every
labelled gauge with what the tables say now, over the days whose outcomes are all decided
(docs/monitoring.md).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, start_http_server

from stream.settings import OutcomesSettings

CHURN_PRECISION = Gauge(
    "clickscore_churn_precision_realised",
    "Churn alerts whose user stayed away a horizon, of those whose outcome is known, over the "
    "window's decided days (group: untreated, or treated: a retention action was taken).",
    ["version", "group"],
)
CHURN_KNOWN = Gauge(
    "clickscore_churn_outcomes_known",
    "Churn alerts with a known outcome over the window's decided days.",
    ["version", "group"],
)
CHURN_RECALL = Gauge(
    "clickscore_churn_recall_realised",
    "Users who stopped (no event for a horizon since their last) and had a churn alert at or "
    "after their last event, of all who stopped, over the window's days (both groups).",
    ["version"],
)
VALIDATION_PRECISION = Gauge(
    "clickscore_churn_precision_validation",
    "The churn alert precision the version's threshold was picked at on validation data "
    "(its reference.json).",
    ["version"],
)
VALIDATION_INTERVAL = Gauge(
    "clickscore_churn_precision_validation_interval",
    "Half-width of the 95 % interval of that validation precision (normal approximation).",
    ["version"],
)
PURCHASE_RATE = Gauge(
    "clickscore_purchase_calibration_rate",
    "Realised purchase rate within the horizon of purchase-intent predictions, per score "
    "decile (0: below 0.1 ... 9: 0.9 and above), untreated users, window's decided days.",
    ["version", "decile"],
)
PURCHASE_SCORE = Gauge(
    "clickscore_purchase_calibration_score",
    "Mean purchase-intent score of those predictions, per decile.",
    ["version", "decile"],
)
PURCHASE_PREDICTIONS = Gauge(
    "clickscore_purchase_calibration_predictions",
    "Decided purchase-intent predictions per decile.",
    ["version", "decile"],
)
LAST_RECORDED = Gauge(
    "clickscore_outcomes_last_recorded_timestamp_seconds",
    "Wall-clock time the newest churn outcome was recorded (by a worker or this job); 0: none.",
)
EVENT_TIME = Gauge(
    "clickscore_outcomes_event_time_seconds",
    "The job's clock: the newest event time scored (user_scores), which decides what has passed "
    "its horizon.",
)
RUNS = Counter("clickscore_outcomes_runs", "Completed runs of the outcomes job.")
LAST_RUN = Gauge(
    "clickscore_outcomes_last_run_timestamp_seconds", "Wall-clock end of the last completed run."
)

LABELLED = (
    CHURN_PRECISION,
    CHURN_KNOWN,
    CHURN_RECALL,
    VALIDATION_PRECISION,
    VALIDATION_INTERVAL,
    PURCHASE_RATE,
    PURCHASE_SCORE,
    PURCHASE_PREDICTIONS,
)


def serve(settings: OutcomesSettings) -> None:
    """Expose /metrics unless outcomes_metrics_port is 0. Binds to loopback by default."""
    if settings.outcomes_metrics_port:
        start_http_server(settings.outcomes_metrics_port, addr=settings.metrics_host)
