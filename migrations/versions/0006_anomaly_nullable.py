"""user_scores.anomaly may be NULL: a version that does not serve anomaly scores none.

A format-2 version declares its served outputs (model_config.json "served"); one whose anomaly
threshold is null (version 7 on) computes no anomaly at all, and Triton answers NaN. NULL says
"not scored" where NaN would poison averages and histograms.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


# Batch mode: a plain ALTER COLUMN on PostgreSQL; SQLite, which cannot change a column's
# nullability in place, gets the table copied under the new definition.


def upgrade() -> None:
    with op.batch_alter_table("user_scores") as batch:
        batch.alter_column("anomaly", existing_type=sa.Float(), nullable=True)


def downgrade() -> None:
    # NaN is what the worker wrote before this revision for a score it did not have.
    op.execute("UPDATE user_scores SET anomaly = 'NaN' WHERE anomaly IS NULL")
    with op.batch_alter_table("user_scores") as batch:
        batch.alter_column("anomaly", existing_type=sa.Float(), nullable=False)
