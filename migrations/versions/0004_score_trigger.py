"""Why each score exists: trigger ('event' or 'silence') and the silence it was scored at.

Server defaults make every existing row, and any writer that predates these columns, an
event-triggered score with no silence, which is what every score was before silent
re-scores existed.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-14
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "user_scores",
        sa.Column("trigger", sa.String(16), server_default="event", nullable=False),
    )
    # Milliseconds: the default longest silence, 30 days, does not fit 32 bits.
    op.add_column(
        "user_scores",
        sa.Column("silence_ms", sa.BigInteger(), server_default="0", nullable=False),
    )


def downgrade() -> None:
    op.drop_column("user_scores", "silence_ms")
    op.drop_column("user_scores", "trigger")
