"""Next items per user: the served version's most likely next items and P(next is a purchase).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

JSONDocument = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.add_column(
        "user_scores",
        sa.Column("next_items", JSONDocument, server_default="[]", nullable=False),
    )
    op.add_column("user_scores", sa.Column("next_purchase", sa.Float(), nullable=True))


def downgrade() -> None:
    op.drop_column("user_scores", "next_purchase")
    op.drop_column("user_scores", "next_items")
