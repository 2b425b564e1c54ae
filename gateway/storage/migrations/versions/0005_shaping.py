"""Shaping state that must outlive a restart: warm-up sends per IP and provider (issue 7).

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
    op.drop_table("warmup_holds")
    op.drop_table("warmup_sends")
