"""Held deliveries and paused campaigns (issue 9).

``campaign_states`` records which campaigns are paused and why; their copies wait in the
queue with ``deliveries.state = 'held'`` (a new value of an existing column, no DDL). The
index on ``messages.campaign`` lets a pause or a resume find a campaign's copies without
reading every message.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from gateway.storage.tables import UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "campaign_states",
        sa.Column("campaign", sa.String(64), nullable=False),
        sa.Column("paused", sa.Boolean, nullable=False),
        sa.Column("reason", sa.String(32)),
        sa.Column("detail", sa.Text),
        sa.Column("changed_by", sa.String(32)),
        sa.Column("changed_at", UTCDateTime(), nullable=False),
        sa.Column("counted_since", UTCDateTime()),
        sa.PrimaryKeyConstraint("campaign", name="pk_campaign_states"),
    )
    op.create_index("ix_messages_campaign", "messages", ["campaign"])


def downgrade() -> None:
    op.drop_index("ix_messages_campaign", "messages")
    # Held copies go back to waiting: the schema without this table cannot hold them.
    op.execute("UPDATE deliveries SET state = 'queued' WHERE state = 'held'")
    op.drop_table("campaign_states")
