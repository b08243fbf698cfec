"""The tables the worker writes. Schema changes go through Alembic revisions in migrations/."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Float,
    Integer,
    MetaData,
    String,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

JSONDocument = JSON().with_variant(JSONB(), "postgresql")

# Stable constraint names, so migrations can name what they drop.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class UserScore(Base):
    """The latest scores per user: one row, upserted on each scoring."""

    __tablename__ = "user_scores"

    user_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    churn_risk: Mapped[float] = mapped_column(Float)
    purchase_intent: Mapped[float] = mapped_column(Float)
    # NULL: the version that scored this does not serve anomaly (migration 0006).
    anomaly: Mapped[float | None] = mapped_column(Float, nullable=True)
    model_version: Mapped[str] = mapped_column(String(64))
    # How many events of this user the score reflects: an upsert only moves this forward,
    # so a replayed older result never overwrites a newer one.
    event_count: Mapped[int] = mapped_column(Integer)
    last_event_id: Mapped[str] = mapped_column(String(256))
    last_event_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    scored_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # [{"item_id", "probability"}] most likely first, and P(next event is a purchase): from
    # versions with a next-event model; [] and NULL otherwise.
    next_items: Mapped[list[dict[str, Any]]] = mapped_column(
        JSONDocument, default=list, server_default="[]"
    )
    next_purchase: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Why this score exists: "event" (new events) or "silence" (a silent re-score, at
    # silence_ms after last_event_at; 0 for an event). Rows from before migration 0004, and
    # writers that predate it, are events.
    trigger: Mapped[str] = mapped_column(String(16), default="event", server_default="event")
    silence_ms: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class Alert(Base):
    """Churn, anomaly, burst and takeover alerts, keyed by a deterministic alert id
    (insert-if-absent)."""

    __tablename__ = "alerts"

    alert_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(256), index=True)
    kind: Mapped[str] = mapped_column(String(16), index=True)
    score: Mapped[float] = mapped_column(Float)
    threshold: Mapped[float] = mapped_column(Float)
    model_version: Mapped[str] = mapped_column(String(64))
    event_ids: Mapped[list[str]] = mapped_column(JSONDocument)
    event_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    reason: Mapped[str] = mapped_column(String(512))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class ModelVersion(Base):
    """Every model the trainer built, with its evaluation and whether it was promoted."""

    __tablename__ = "model_versions"

    model_name: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    vocab_version: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))  # candidate | serving | rejected | retired
    metrics: Mapped[dict[str, Any]] = mapped_column(JSONDocument)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    promoted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class RetentionAction(Base):
    """One retention action per churn alert (`clickscore actions`), keyed by the alert id, so a
    replayed alert never makes a second action and a delivered one is never POSTed again."""

    __tablename__ = "retention_actions"

    alert_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(256), index=True)
    action: Mapped[str] = mapped_column(String(32))  # e.g. retention_offer
    status: Mapped[str] = mapped_column(String(16))  # recorded | delivered | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_error: Mapped[str | None] = mapped_column(String(512), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class ChurnOutcome(Base):
    """A churn alert's outcome, keyed like the alert it belongs to: (user_id, alert_at) is
    the alerts row's (user_id, event_at) of kind churn. `returned`: the user's first event
    after the alert came within the churn horizon (written by the worker when it sees that
    event); `stayed_away`: none came (written by `clickscore outcomes` once event time passed
    alert + horizon, or by the worker when the first event came later than that)."""

    __tablename__ = "churn_outcomes"

    user_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    alert_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    outcome: Mapped[str] = mapped_column(String(16))  # returned | stayed_away
    known_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))  # in event time
    returned_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    source: Mapped[str] = mapped_column(String(16))  # worker | job
    recorded_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), index=True
    )


class PurchasePrediction(Base):
    """A served purchase-intent score and its outcome: each user's first score of each UTC
    day (of event time) on which they had events, and the first purchase within the purchase
    horizon after it (NULL: none yet)."""

    __tablename__ = "purchase_predictions"

    user_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    scored_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    model_version: Mapped[str] = mapped_column(String(64))
    purchase_intent: Mapped[float] = mapped_column(Float)
    purchased_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class ChurnQualityDaily(Base):
    """Realised churn alert quality per model version, day and group (`clickscore
    outcomes`). Precision counts the alerts raised that day (their outcomes known so far);
    recall the users whose last event was that day and who stayed away a horizon since.
    Treated: alerts that got a retention action, whose success makes a churner look like a
    false alarm, kept apart."""

    __tablename__ = "churn_quality_daily"

    model_version: Mapped[str] = mapped_column(String(64), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    treated: Mapped[bool] = mapped_column(Boolean, primary_key=True)
    alerts: Mapped[int] = mapped_column(Integer)
    known: Mapped[int] = mapped_column(Integer)
    stayed_away: Mapped[int] = mapped_column(Integer)
    returned: Mapped[int] = mapped_column(Integer)
    precision: Mapped[float | None] = mapped_column(Float, nullable=True)
    churners: Mapped[int] = mapped_column(Integer)
    caught: Mapped[int] = mapped_column(Integer)
    recall: Mapped[float | None] = mapped_column(Float, nullable=True)
    computed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class PurchaseCalibrationDaily(Base):
    """Realised purchase rate per model version, day and score decile (0: scores below 0.1,
    ..., 9: 0.9 and above), over predictions whose outcome is known, treated users apart."""

    __tablename__ = "purchase_calibration_daily"

    model_version: Mapped[str] = mapped_column(String(64), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    treated: Mapped[bool] = mapped_column(Boolean, primary_key=True)
    decile: Mapped[int] = mapped_column(Integer, primary_key=True)
    predictions: Mapped[int] = mapped_column(Integer)
    purchases: Mapped[int] = mapped_column(Integer)
    mean_score: Mapped[float] = mapped_column(Float)
    purchase_rate: Mapped[float] = mapped_column(Float)
    computed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
