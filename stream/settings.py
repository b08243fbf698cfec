"""The configuration of each clickscore deployable, built once at its entry point.

Built once by `stream.cli` and passed down; no other module reads the environment. Every
field can be set as ``CLICKSCORE_<FIELD>`` in the environment or in a ``.env`` file; any of
them can also come from a file in the folder named by ``CLICKSCORE_SECRETS_DIR`` (see
``CoreSettings.load``).

Settings are grouped by what reads them, and each deployable's class is made of the groups
it needs, so its `--help` lists, and its validation errors name, only the settings it reads:

    WorkerSettings    `clickscore worker`: Kafka, database, Triton, events, worker
    ActionsSettings   `clickscore actions`: Kafka, database, actions
    TrainerSettings   `clickscore train` / `model` / `evaluate`: Kafka, database, Triton,
                      events, trainer
    StackSettings     `clickscore stack` / `db`: Kafka, database, Triton
    OutcomesSettings  `clickscore outcomes`: database, Triton's model repository, horizons
    Settings          all of them: the demo, the benchmarks and the tests run every part
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The repository root: model_repo/, migrations/ and alembic.ini sit here.
PROJECT_ROOT = Path(__file__).resolve().parent.parent


class CoreSettings(BaseSettings):
    """What every command reads: logging, retries, the local state folder."""

    model_config = SettingsConfigDict(
        env_prefix="CLICKSCORE_",
        env_file=".env",
        extra="ignore",
        frozen=True,
    )

    log_level: str = Field("INFO", description="Log level of the worker and services.")

    retry_max_backoff_s: float = Field(
        10.0,
        gt=0,
        description="Longest wait between retries of a failed broker, Triton or database call.",
    )
    run_dir: Path = Field(
        PROJECT_ROOT / ".clickscore",
        description="Local state: the stack's pids and logs, the worker's table files.",
    )

    @classmethod
    def load(cls: type[S]) -> S:
        """The entry points' settings: the environment, `.env`, and secret files.

        Where CLICKSCORE_SECRETS_DIR names a folder, a file in it named like a variable
        (`CLICKSCORE_BROKER_SASL_PASSWORD`, as Docker and Kubernetes mount secrets) sets that
        field; the environment wins over a file.
        """
        secrets_dir = os.environ.get("CLICKSCORE_SECRETS_DIR")
        if secrets_dir and not Path(secrets_dir).is_dir():
            raise ValueError(f"CLICKSCORE_SECRETS_DIR={secrets_dir} is not a folder")
        return cls(_secrets_dir=secrets_dir or None)  # type: ignore[call-arg]

    @classmethod
    def environment_help(cls) -> str:
        """The variables this class reads, for a command's `--help`."""
        lines = ["settings (environment variables, .env, or files in CLICKSCORE_SECRETS_DIR):"]
        for name, field in cls.model_fields.items():
            default = "required" if field.is_required() else f"default {field.default}"
            lines.append(f"  CLICKSCORE_{name.upper()} ({default})\n      {field.description}")
        return "\n".join(lines)

    def as_environment(self) -> dict[str, str]:
        """These settings as CLICKSCORE_* variables, to configure a child process."""
        return {
            # str() of a SecretStr is its mask: a child process needs the value itself.
            f"CLICKSCORE_{name.upper()}": (
                value.get_secret_value() if isinstance(value, SecretStr) else str(value)
            )
            for name, value in self.model_dump().items()
            if value is not None
        }


S = TypeVar("S", bound=CoreSettings)


class KafkaSettings(CoreSettings):
    """The broker, the topics, and how clients authenticate to it."""

    broker_url: str = Field(
        "kafka://127.0.0.1:9092", description="Kafka bootstrap servers, as a Faust broker URL."
    )
    topic_events: str = Field("clickscore.events", description="Incoming clickstream events.")
    topic_scores: str = Field("clickscore.scores", description="Per-user scores out.")
    topic_alerts: str = Field("clickscore.alerts", description="Churn and anomaly alerts out.")
    topic_dead_letter: str = Field(
        "clickscore.dead-letter", description="Rejected events, with reason and original bytes."
    )
    topic_partitions: int = Field(4, ge=1, description="Partitions for topics we create.")
    consumer_group: str = Field("clickscore-worker", description="Worker consumer group id.")

    # Secrets are SecretStr: repr, str and logs show "**********"; only the client that
    # needs one calls get_secret_value(). Set them in the environment or a secrets file.
    broker_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="How Kafka clients connect: TLS (SSL) and/or SASL."
    )
    broker_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "SCRAM-SHA-512", description="SASL mechanism when the protocol is SASL_*."
    )
    broker_sasl_username: str | None = Field(None, description="SASL user name.")
    broker_sasl_password: SecretStr | None = Field(None, description="SASL password (secret).")
    broker_ssl_cafile: Path | None = Field(
        None, description="CA bundle that signs the brokers' certificates; None: system CAs."
    )
    broker_ssl_certfile: Path | None = Field(None, description="Client certificate for mutual TLS.")
    broker_ssl_keyfile: Path | None = Field(None, description="Client certificate's key.")

    @model_validator(mode="after")
    def _check_sasl(self) -> KafkaSettings:
        if self.broker_security_protocol.startswith("SASL") and not (
            self.broker_sasl_username and self.broker_sasl_password
        ):
            raise ValueError(
                "broker_security_protocol SASL_* needs broker_sasl_username and "
                "broker_sasl_password"
            )
        return self

    @property
    def broker_servers(self) -> str:
        """Bootstrap servers in aiokafka's `host:port[,host:port]` form."""
        return ",".join(urlsplit(part).netloc or part for part in self.broker_url.split(";"))


class DatabaseSettings(CoreSettings):
    """Where scores, alerts, retention actions and model versions are stored."""

    database_url: str = Field(
        "postgresql+asyncpg://postgres@127.0.0.1:5432/clickscore",
        description="SQLAlchemy async URL (postgresql+asyncpg or sqlite+aiosqlite).",
    )


class TritonSettings(CoreSettings):
    """The Triton server that scores, and the repository it serves."""

    triton_grpc_url: str = Field("127.0.0.1:8001", description="Triton gRPC endpoint.")
    triton_http_url: str = Field("127.0.0.1:8000", description="Triton HTTP endpoint.")
    triton_metrics_port: int = Field(8002, description="Triton Prometheus metrics port.")
    triton_model: str = Field("clickscore", description="Model name in the Triton repository.")
    triton_max_concurrency: int = Field(8, ge=1, description="In-flight Triton requests.")
    triton_timeout_s: float = Field(5.0, gt=0, description="Per-request Triton deadline.")
    # Read by the clickscore backend inside Triton (stream/serving/backend.py), per loaded
    # version: ORT's default takes every core, which Triton shares with the worker and broker.
    serving_intra_op_threads: int = Field(
        1, ge=1, description="ONNX Runtime threads within one operator, per served version."
    )
    serving_inter_op_threads: int = Field(
        1, ge=1, description="ONNX Runtime threads across operators, per served version."
    )

    model_repo: Path = Field(
        PROJECT_ROOT / "model_repo", description="Triton model repository served locally."
    )


class EventSettings(CoreSettings):
    """The event contract's limits and the sequence length: the worker and the trainer must
    agree on them, so both read the same fields."""

    sequence_length: int = Field(64, ge=2, description="Events kept per user and sent to Triton.")
    max_payload_bytes: int = Field(16_384, ge=256, description="Largest accepted event.")
    max_batch_events: int = Field(
        500, ge=1, description="Most events in one batch message (a JSON array of events)."
    )
    max_event_age_s: int = Field(
        30 * 86_400, ge=1, description="Oldest accepted event timestamp, before now."
    )
    max_event_future_s: int = Field(
        300, ge=0, description="Furthest accepted event timestamp, after now."
    )


class HorizonSettings(CoreSettings):
    """How long after a score its outcome is decided: the trainer's labels, and the realised
    outcomes the worker and `clickscore outcomes` join to alerts and scores."""

    churn_horizon_s: int = Field(
        3 * 86_400,
        ge=1,
        description="Churn label: the user's last event is within this long after a cut-off "
        "(and at least as long a silence follows; see trainer/labels/sequences.py); an alerted "
        "user who sends no event this long after the alert stayed away.",
    )
    # Two days, not one: buyers build up over days (repeat views, carts) before they buy, and
    # a one-day horizon labelled most of that build-up as "no purchase".
    purchase_horizon_s: int = Field(
        2 * 86_400,
        ge=1,
        description="Purchase label: a purchase within this long after a cut-off (or a "
        "served purchase-intent score).",
    )


class MetricsSettings(CoreSettings):
    """Where a service's Prometheus endpoint binds (each service has its own port field)."""

    metrics_host: str = Field("127.0.0.1", description="Address the metrics endpoints bind.")


class WorkerSettings(
    KafkaSettings, DatabaseSettings, TritonSettings, EventSettings, MetricsSettings, HorizonSettings
):
    """`clickscore worker`."""

    batch_size: int = Field(
        256, ge=1, description="Most sequences in one Triton request (a window may send several)."
    )
    flush_delay_ms: int = Field(
        20, ge=1, description="`bench faust` only: its Faust-stream window wait."
    )

    # --- Alert thresholds ----------------------------------------------------------------
    # The served version's own threshold wins: the trainer picks it on validation data for
    # TrainerSettings.churn_alert_precision and Triton returns it with every score
    # (CHURN_THRESHOLD). This one applies only to versions that carry none.
    churn_alert_threshold: float = Field(
        0.8, ge=0, le=1, description="Churn risk that alerts when the served version sets none."
    )
    churn_min_events: int = Field(
        3, ge=1, description="Events a user needs before a churn alert is possible."
    )
    churn_min_history_s: int = Field(
        86_400,
        ge=0,
        description="History (first event to the scoring time, silence included) needed for "
        "a churn alert.",
    )
    # --- Silent users (stream/scoring/idle.py) ---------------------------------------------
    silent_rescore_after_s: int = Field(
        86_400,
        ge=0,
        description="Silence after which a user is re-scored (then at 2x, 4x, ...); 0: never.",
    )
    silent_rescore_max_s: int = Field(
        30 * 86_400, ge=0, description="Longest silence a user is still re-scored at."
    )
    silent_rescore_max_users: int = Field(
        1_000, ge=1, description="Most silent users re-scored per partition per window."
    )
    churn_rearm_threshold: float = Field(
        0.6, ge=0, le=1, description="Churn risk a user must fall below before alerting again."
    )
    churn_cooldown_s: int = Field(86_400, ge=0, description="Least time between churn alerts.")
    # The trainer calibrates the anomaly score so that only the top 0.1 % of normal traffic
    # reaches 0.95 (trainer/fit/encoder.py ALERT_TAIL): a score of 0.95 means "more surprising than
    # 999 in 1000 normal states", not "than 95 in 100", which would alert on 5 % of users.
    anomaly_alert_threshold: float = Field(
        0.95, ge=0, le=1, description="Anomaly score that alerts (top 0.1 % of normal traffic)."
    )
    anomaly_cooldown_s: int = Field(3_600, ge=0, description="Least time between anomaly alerts.")
    burst_events_per_s: float = Field(
        20.0, gt=0, description="Sustained events/s from one user that counts as a bot burst."
    )
    # Calibrated on the synthetic generator (docs/evaluation.md, "Bursts"): people reached at
    # most 20 of 32 such gaps, bots and scrapers all 32.
    burst_sustained_events: int = Field(
        28,
        ge=0,
        le=32,
        description="Of a user's last 32 events, how many under 5 s apart is a burst; 0: off.",
    )
    # Calibrated on the synthetic generator (docs/evaluation.md, "Takeovers"): a session on a
    # platform the account's earlier kept events never used, going straight for categories
    # they never touched.
    takeover_unfamiliar_carts: int = Field(
        3,
        ge=0,
        description="Carts/purchases in unfamiliar categories, on a new platform, that make "
        "a takeover; 0: off.",
    )
    takeover_min_history_events: int = Field(
        8, ge=1, description="Earlier events a user needs before the takeover rule applies."
    )
    takeover_min_share: float = Field(
        0.35,
        ge=0,
        le=1,
        description="Least share of the new session's events those unfamiliar carts must be.",
    )

    window_max_events: int = Field(
        2048, ge=1, description="Most events read into one scoring window."
    )
    table_store: str = Field(
        "rocksdb://",
        description="Faust table store: rocksdb:// (persistent, production) or memory://.",
    )
    producer_max_batch_size: int = Field(
        16_384,
        ge=1,
        description="Kafka producer batch bytes (1 makes tansu restore tables exactly).",
    )
    commit_interval_s: float = Field(
        2.8,
        gt=0,
        description="How often the worker commits the offsets of finished windows (Faust's).",
    )
    producer_request_timeout_s: float = Field(
        30.0,
        gt=0,
        description="Longest a produced batch waits for the broker before it is sent again.",
    )
    consumer_fetch_max_wait_ms: int = Field(
        20, ge=0, description="Longest the broker may hold a fetch that finds no records."
    )
    stream_buffer_maxsize: int = Field(
        4096, ge=1, description="Fetched events waiting for the worker before fetching pauses."
    )
    worker_web_port: int = Field(6066, description="Faust's port; distinct per worker on a host.")
    metrics_port: int = Field(
        9108, ge=0, description="Prometheus /metrics and /health port; 0 disables both."
    )
    startup_wait_s: float = Field(
        30.0,
        ge=0,
        description="How long the worker waits at start for the broker, Triton and the database "
        "to accept connections before it exits with an error naming the setting.",
    )
    reconnect_max_backoff_ms: int = Field(
        1000,
        ge=10,
        description="Longest wait before trying Triton or the broker again after a failed call "
        "(also gRPC's reconnect backoff): bounds how long scoring lags once they are back.",
    )
    pseudonymise_key: SecretStr | None = Field(
        None,
        description="HMAC-SHA256 key for user ids in outgoing scores and alerts; None: raw ids.",
    )
    # --- Served quality (stream/worker/quality.py) ------------------------------------------
    drift_window_s: int = Field(
        3600,
        ge=60,
        description="Wall-clock window of served scores and features whose PSI against the "
        "version's reference the worker exports.",
    )
    drift_min_count: int = Field(
        1000,
        ge=1,
        description="Values a series needs in the drift window before its PSI is exported.",
    )

    @model_validator(mode="after")
    def _check_worker(self) -> WorkerSettings:
        if self.churn_rearm_threshold >= self.churn_alert_threshold:
            raise ValueError("churn_rearm_threshold must be below churn_alert_threshold")
        if self.pseudonymise_key is not None and not self.pseudonymise_key.get_secret_value():
            raise ValueError("pseudonymise_key is empty: unset it, or give a real key")
        return self

    @property
    def flush_delay_s(self) -> float:
        return self.flush_delay_ms / 1000.0


class ActionsSettings(KafkaSettings, DatabaseSettings, MetricsSettings):
    """`clickscore actions`, the retention-actions consumer."""

    actions_group: str = Field(
        "clickscore-actions", description="Consumer group of the retention-actions service."
    )
    webhook_url: str | None = Field(
        None, description="Where retention actions are POSTed; None records them only."
    )
    webhook_timeout_s: float = Field(5.0, gt=0, description="Deadline of one webhook POST.")
    webhook_max_attempts: int = Field(
        5, ge=1, description="POSTs per action before it is marked failed."
    )
    actions_metrics_port: int = Field(
        9109, ge=0, description="Prometheus /metrics port of `clickscore actions`; 0 disables."
    )


class TrainerSettings(
    KafkaSettings, DatabaseSettings, TritonSettings, EventSettings, HorizonSettings
):
    """`clickscore train`, `clickscore model` and `clickscore evaluate`."""

    promotion_margin: float = Field(
        0.005,
        ge=0,
        description="The gate refuses a candidate when a served task's paired difference to the "
        "serving version lies, with its whole 95 % interval, below minus this.",
    )
    model_store: Path = Field(
        PROJECT_ROOT / ".clickscore" / "models",
        description="Candidates and rolled-back versions, outside the served repository.",
    )
    train_history_events: int = Field(
        500_000, ge=1, description="Most recent events `clickscore train` reads from a source."
    )
    churn_alert_precision: float = Field(
        0.6,
        gt=0,
        le=1,
        description="Precision the trainer picks each version's churn alert threshold for.",
    )
    # A retention team's budget. 0.3 rather than 0.2: at the demo's 25 % churn base rate, a
    # recall of 0.5 at twice the base rate's precision needs alerts on 25 % of users, and
    # without a cap a 70 % base rate (CDNOW) lets nearly everyone clear the precision rules.
    churn_alert_max_rate: float = Field(
        0.3,
        gt=0,
        le=1,
        description="Most of the validation users (or rows) a churn alert threshold may flag.",
    )
    # A version folder is committed to git: 50,000 sessions of ~5 items are about 1 MB.
    session_knn_max_sessions: int = Field(
        50_000,
        ge=1,
        le=1 << 22,
        description="Most recent training sessions a version's session-kNN index keeps.",
    )
    anomaly_alert_precision: float = Field(
        0.9,
        gt=0,
        le=1,
        description="Precision `clickscore train` picks a version's anomaly alert threshold "
        "for, per user (only where the history labels anomalies: synthetic).",
    )
    train_min_users: int = Field(
        50, ge=2, description="Fewest users a history needs before `clickscore train` fits it."
    )
    train_encoder: bool = Field(
        False,
        description="Also train the transformer encoder (slow); it then serves churn or "
        "purchase where it beats the feature head on validation users.",
    )
    train_threads: int = Field(
        1,
        ge=1,
        description="CPU threads of the trainer's torch and BLAS pools; on a shared machine "
        "more threads spin against each other.",
    )
    # Off by default: measured on 2000 synthetic users x 14 days the peak RSS was 14.2 GB.
    train_keep_freed_memory: bool = Field(
        False,
        description="The trainer's allocator keeps freed memory for reuse instead of "
        "unmapping it (glibc mallopt): the next-event network's per-step tensors are otherwise "
        "mapped and faulted in again every step (300 users: system time 30 s -> 4 s, peak RSS "
        "2.2 -> 4.9 GB).",
    )
    gate_bootstrap_rounds: int = Field(
        500, ge=50, description="Bootstrap rounds (users resampled) behind the gate's intervals."
    )


class OutcomesSettings(DatabaseSettings, TritonSettings, MetricsSettings, HorizonSettings):
    """`clickscore outcomes`: closes the outcomes of alerts and scores, computes the daily
    realised figures and serves them to Prometheus (stream/ops/outcomes.py)."""

    outcomes_metrics_port: int = Field(
        9110, ge=0, description="Prometheus /metrics port of `clickscore outcomes`; 0 disables."
    )
    outcomes_window_days: int = Field(
        7, ge=1, description="Days of alerts (and scores) the realised-quality gauges cover."
    )
    outcomes_min_known: int = Field(
        20,
        ge=1,
        description="Known outcomes a version needs in that window before its realised "
        "precision is exported.",
    )


class ReplaySettings(KafkaSettings, EventSettings):
    """`clickscore replay`, `generate` and `dlq`: send events to the events topic."""


class StackSettings(KafkaSettings, DatabaseSettings, TritonSettings):
    """`clickscore stack` and `clickscore db`: the local services and the schema."""


class Settings(
    WorkerSettings,
    ActionsSettings,
    TrainerSettings,
    StackSettings,
    ReplaySettings,
    OutcomesSettings,
):
    """Every setting: for the demo, the benchmarks and the tests, which run every part."""

    def for_run(self, run: str, **changes: object) -> Settings:
        """A copy whose topics and consumer groups are this run's own (demo, bench)."""
        return self.model_copy(
            update={
                "topic_events": f"{run}.events",
                "topic_scores": f"{run}.scores",
                "topic_alerts": f"{run}.alerts",
                "topic_dead_letter": f"{run}.dead-letter",
                "consumer_group": run,
                "actions_group": f"{run}-actions",
                **changes,
            }
        )


def host_port(address: str) -> tuple[str, int]:
    """Split `host:port`, `scheme://host:port` or `scheme://user@host:port/db`."""
    netloc = urlsplit(address if "//" in address else f"//{address}").netloc
    host_part = netloc.rsplit("@", 1)[-1]
    host, _, port = host_part.rpartition(":")
    return host.strip("[]"), int(port)
