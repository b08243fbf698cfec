"""What the worker reports: Prometheus metrics and its health, on metrics_host:metrics_port.

Health: a worker that cannot make progress for a reason retrying will not fix by itself (a
model that fails every request, a dead-letter topic that refuses records) keeps its offsets
uncommitted and keeps retrying, so nothing is lost; this is how it says so. /health answers
200 `{"status": "ok"}` or 503 with the reasons; `clickscore_healthy` is 1 or 0; the change
is logged at CRITICAL with the reason. /metrics is served from the same port.
"""

from __future__ import annotations

import errno
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

from stream.settings import WorkerSettings
from stream.worker.preflight import StartupError

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60, 300)

EVENTS_CONSUMED = Counter("clickscore_events_consumed", "Messages read from the events topic.")
EVENTS_REPLAYED = Counter(
    "clickscore_events_replayed",
    "Messages skipped because the user's state already applied their offset (re-read after a "
    "restart).",
)
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
# A silent re-score is due when its partition's event time passes a level of silence, which
# only the partition's next events reveal: seconds behind on a busy partition, hours on a
# quiet one or while the worker catches up.
SILENT_DELAY_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 86_400)

EVENT_TO_SCORE = Histogram(
    "clickscore_event_to_score_seconds",
    "From the newest event's timestamp to its score being emitted; event-triggered scores "
    "only (a silent re-score is clickscore_silent_rescore_delay_seconds).",
    buckets=LATENCY_BUCKETS,
)
SCORES_EMITTED = Counter("clickscore_scores_emitted", "Per-user scores written.")
SILENT_RESCORED = Counter(
    "clickscore_silent_rescored", "Users re-scored after a silence, without a new event."
)
SILENT_INDEX_REBUILD = Histogram(
    "clickscore_silent_index_rebuild_seconds",
    "Rebuilding the silent-user index of newly assigned partitions from the table's states.",
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60),
)
SILENT_RESCORE_DELAY = Histogram(
    "clickscore_silent_rescore_delay_seconds",
    "From when a silent user became due (last event time + the level of silence, in event "
    "time) to their re-score being emitted (wall clock); 0 when event time runs ahead.",
    buckets=SILENT_DELAY_BUCKETS,
)
SILENT_DUE = Gauge(
    "clickscore_silent_rescores_due",
    "Users whose partition's event time has passed their next level of silence and who are "
    "not re-scored yet (at most silent_rescore_max_users are re-scored per window).",
)
ALERTS = Counter("clickscore_alerts", "Alerts raised.", ["kind"])
RETRIES = Counter("clickscore_retries", "Failed calls that were retried, by target.", ["target"])
HEALTHY = Gauge("clickscore_healthy", "1 while the worker can make progress, else 0 (/health).")
UNHEALTHY = Gauge(
    "clickscore_unhealthy",
    "1 while this component keeps the worker from progressing.",
    ["component"],
)
WINDOWS_ISOLATED = Counter(
    "clickscore_windows_isolated",
    "Windows that failed as a whole and were processed again one message at a time.",
)
ASSIGNED_PARTITIONS = Gauge(
    "clickscore_assigned_partitions",
    "Partitions of the events topic this worker owns with their states restored (0 while it "
    "joins its group or rebalances): above 0, events sent now are read at once.",
)
CONSUMER_LAG = Gauge(
    "clickscore_consumer_lag",
    "Highwater minus position per assigned partition (as the broker reports highwater).",
    ["topic", "partition"],
)

log = logging.getLogger(__name__)


class Health:
    def __init__(self) -> None:
        self._problems: dict[str, str] = {}
        self._lock = threading.Lock()
        HEALTHY.set(1)

    def fail(self, component: str, reason: str) -> None:
        with self._lock:
            first = component not in self._problems
            self._problems[component] = reason
        HEALTHY.set(0)
        UNHEALTHY.labels(component).set(1)
        if first:
            log.critical(
                "worker unhealthy: %s: %s; retrying, offsets stay uncommitted",
                component,
                reason,
                extra={"component": component, "reason": reason},
            )

    def recover(self, component: str) -> None:
        with self._lock:
            if self._problems.pop(component, None) is None:
                return
            healthy = not self._problems
        UNHEALTHY.labels(component).set(0)
        if healthy:
            HEALTHY.set(1)
        log.warning("worker healthy again: %s recovered", component, extra={"component": component})

    def report(self) -> dict[str, object]:
        with self._lock:
            problems = dict(self._problems)
        return {"status": "unhealthy" if problems else "ok", "problems": problems}


def serve(settings: WorkerSettings, health: Health) -> ThreadingHTTPServer | None:
    """/metrics and /health on metrics_host:metrics_port (none when metrics_port is 0)."""
    if not settings.metrics_port:
        return None

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.startswith("/health"):
                report = health.report()
                body = orjson.dumps(report)
                self._answer(200 if report["status"] == "ok" else 503, "application/json", body)
            elif self.path.startswith("/metrics") or self.path == "/":
                self._answer(200, CONTENT_TYPE_LATEST, generate_latest())
            else:
                self._answer(404, "text/plain", b"not found\n")

        def _answer(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            """Scrapes are not worth a log line each."""

    try:
        server = ThreadingHTTPServer((settings.metrics_host, settings.metrics_port), Handler)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(
                f"the metrics port {settings.metrics_host}:{settings.metrics_port} is in use: "
                "set CLICKSCORE_METRICS_PORT to a free port (0 disables metrics and /health)"
            ) from None
        raise StartupError(
            f"cannot serve metrics on {settings.metrics_host}:{settings.metrics_port} "
            f"({exc.strerror}): check CLICKSCORE_METRICS_HOST and CLICKSCORE_METRICS_PORT"
        ) from None
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
