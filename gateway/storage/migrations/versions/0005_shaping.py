"""Shaping (issue 7): warm-up state that outlives a restart; delivery priority and provider.

``deliveries.priority`` (0 transactional, 1 marketing) lets claims take transactional mail
first, through an index on (state, priority, next_attempt_at); ``deliveries.provider`` names
the provider profile of the last attempt or postponement.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("priority", sa.SmallInteger, nullable=False, server_default="0"))
        batch.add_column(sa.Column("provider", sa.String(64), nullable=False, server_default=""))
    op.execute("UPDATE deliveries SET priority = 1 WHERE queue_id IN "
               "(SELECT queue_id FROM messages WHERE stream = 'marketing')")
    op.create_index("ix_deliveries_state_priority_next_attempt_at", "deliveries",
                    ["state", "priority", "next_attempt_at"])
    op.create_table(
        "warmup_sends",
        sa.Column("source_ip", sa.String(45), nullable=False),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("day", sa.String(10), nullable=False),
        sa.Column("sent", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("source_ip", "provider", "day", name="pk_warmup_sends"),
    )
    op.create_table(
        "warmup_holds",
        sa.Column("source_ip", sa.String(45), nullable=False),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("held_days", sa.Integer, nullable=False),
        sa.Column("decided_on", sa.String(10), nullable=False),
        sa.PrimaryKeyConstraint("source_ip", "provider", name="pk_warmup_holds"),
    )


def downgrade() -> None:
    op.drop_index("ix_deliveries_state_priority_next_attempt_at", "deliveries")
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("provider")
        batch.drop_column("priority")
    op.drop_table("warmup_holds")
    op.drop_table("warmup_sends")
