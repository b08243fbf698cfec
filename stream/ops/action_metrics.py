"""Prometheus metrics of `clickscore actions`, served on metrics_host:actions_metrics_port.

Its own port, apart from the worker's: both run side by side on one host (the demo, a small
deployment), and Prometheus scrapes each as its own job.
"""

from __future__ import annotations

from prometheus_client import Counter, start_http_server

from stream.settings import ActionsSettings

ACTIONS_RECORDED = Counter(
    "clickscore_actions_recorded",
    "Churn alerts recorded as retention actions (insert-if-absent: a redelivered alert "
    "counts again but is stored once).",
)
ACTIONS_DELIVERED = Counter(
    "clickscore_actions_delivered", "Retention actions the webhook accepted."
)
ACTIONS_FAILED = Counter(
    "clickscore_actions_failed",
    "Retention actions marked failed: refused (4xx) or out of attempts.",
)
WEBHOOK_FAILURES = Counter(
    "clickscore_webhook_failures", "Webhook POSTs that failed (each attempt, retried or not)."
)


def serve(settings: ActionsSettings) -> None:
    """Expose /metrics unless actions_metrics_port is 0. Binds to loopback by default."""
    if settings.actions_metrics_port:
        start_http_server(settings.actions_metrics_port, addr=settings.metrics_host)
