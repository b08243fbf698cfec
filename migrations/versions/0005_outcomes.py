"""Served quality: churn alert outcomes, purchase-intent predictions and their outcomes, and
the daily realised figures per model version (docs/monitoring.md).

churn_outcomes is keyed like the alert it closes, (user_id, alert_at) = alerts' (user_id,
event_at) of kind churn, so the worker and `clickscore outcomes` can both write it
idempotently; purchase_predictions is keyed by user and UTC day. The two daily tables are
recomputed by `clickscore outcomes` on every run.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "churn_outcomes",
        sa.Column("user_id", sa.String(256), nullable=False),
        sa.Column("alert_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("known_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("returned_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column(
            "recorded_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("user_id", "alert_at", name="pk_churn_outcomes"),
    )
    op.create_index("ix_churn_outcomes_recorded_at", "churn_outcomes", ["recorded_at"])
    op.create_table(
        "purchase_predictions",
        sa.Column("user_id", sa.String(256), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("scored_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("purchase_intent", sa.Float(), nullable=False),
        sa.Column("purchased_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("user_id", "day", name="pk_purchase_predictions"),
    )
    op.create_index("ix_purchase_predictions_scored_at", "purchase_predictions", ["scored_at"])
    op.create_table(
        "churn_quality_daily",
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("treated", sa.Boolean(), nullable=False),
        sa.Column("alerts", sa.Integer(), nullable=False),
        sa.Column("known", sa.Integer(), nullable=False),
        sa.Column("stayed_away", sa.Integer(), nullable=False),
        sa.Column("returned", sa.Integer(), nullable=False),
        sa.Column("precision", sa.Float(), nullable=True),
        sa.Column("churners", sa.Integer(), nullable=False),
        sa.Column("caught", sa.Integer(), nullable=False),
        sa.Column("recall", sa.Float(), nullable=True),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("model_version", "day", "treated", name="pk_churn_quality_daily"),
    )
    op.create_table(
        "purchase_calibration_daily",
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("treated", sa.Boolean(), nullable=False),
        sa.Column("decile", sa.Integer(), nullable=False),
        sa.Column("predictions", sa.Integer(), nullable=False),
        sa.Column("purchases", sa.Integer(), nullable=False),
        sa.Column("mean_score", sa.Float(), nullable=False),
        sa.Column("purchase_rate", sa.Float(), nullable=False),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint(
            "model_version", "day", "treated", "decile", name="pk_purchase_calibration_daily"
        ),
    )


def downgrade() -> None:
    op.drop_table("purchase_calibration_daily")
    op.drop_table("churn_quality_daily")
    op.drop_index("ix_purchase_predictions_scored_at", table_name="purchase_predictions")
    op.drop_table("purchase_predictions")
    op.drop_index("ix_churn_outcomes_recorded_at", table_name="churn_outcomes")
    op.drop_table("churn_outcomes")
