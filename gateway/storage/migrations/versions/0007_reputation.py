"""Reputation circuit breakers (issue 9): counts per campaign, stream, provider and minute.

``reputation_counts`` holds copies with a final answer, hard bounces and complaints in
one-minute buckets (upserted per outcome batch, pruned after the window), one row per
writing node (``writer``) so that nodes never wait on each other's counters;
``events.campaign`` names the campaign of campaign-level events (paused, resumed, warned),
which have no recipient.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from gateway.storage.tables import UTCDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reputation_counts",
        sa.Column("campaign", sa.String(64), nullable=False),
        sa.Column("stream", sa.String(16), nullable=False),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("bucket", UTCDateTime(), nullable=False),
        sa.Column("writer", sa.String(128), nullable=False, server_default=""),
        sa.Column("sent", sa.Integer, nullable=False),
        sa.Column("hard", sa.Integer, nullable=False),
        sa.Column("complaints", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("campaign", "stream", "provider", "bucket", "writer",
                                name="pk_reputation_counts"),
    )
    op.create_index("ix_reputation_counts_bucket", "reputation_counts", ["bucket"])
    with op.batch_alter_table("events") as batch:
        batch.add_column(sa.Column("campaign", sa.String(64)))


def downgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.drop_column("campaign")
    op.drop_index("ix_reputation_counts_bucket", "reputation_counts")
    op.drop_table("reputation_counts")
