"""Bounce and complaint state, soft-bounce counters, the webhook outbox (issue 8).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from gateway.storage.tables import Id, UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "soft_bounces",
        sa.Column("address_hash", sa.String(64), nullable=False),
        sa.Column("bounces", sa.Integer, nullable=False),
        sa.Column("first_at", UTCDateTime(), nullable=False),
        sa.Column("last_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("address_hash", name="pk_soft_bounces"),
    )
    op.create_table(
        "feedback_records",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("address", sa.String(320)),
        sa.Column("address_hash", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("bounce_class", sa.String(32), nullable=False),
        sa.Column("severity", sa.String(8), nullable=False),
        sa.Column("rule", sa.String(128), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("action", sa.String(200), nullable=False),
        sa.Column("counted", sa.Boolean, nullable=False),
        sa.Column("evidence", sa.Text, nullable=False),
        sa.Column("delivery_id", Id),
        sa.Column("queue_id", sa.String(26)),
        sa.Column("list_key", sa.String(64), nullable=False),
        sa.Column("campaign", sa.String(64), nullable=False),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("inbound_id", Id),
        sa.Column("applied", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.PrimaryKeyConstraint("id", name="pk_feedback_records"),
    )
    op.create_table(
        "soft_bounce_deliveries",
        sa.Column("delivery_id", Id, nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("delivery_id", name="pk_soft_bounce_deliveries"),
    )
    with op.batch_alter_table("inbound") as batch:
        batch.add_column(sa.Column("attempts", sa.Integer, nullable=False, server_default="0"))
    op.create_index("ix_deliveries_lower_recipient", "deliveries", [sa.text("lower(recipient)")])
    op.create_index("ix_feedback_records_address_hash", "feedback_records", ["address_hash"])
    op.create_index("ix_feedback_records_delivery_id", "feedback_records", ["delivery_id"])
    op.create_table(
        "webhook_cursors",
        sa.Column("webhook", sa.String(64), nullable=False),
        sa.Column("last_event_id", Id, nullable=False),
        sa.PrimaryKeyConstraint("webhook", name="pk_webhook_cursors"),
    )
    op.create_table(
        "webhook_outbox",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("webhook", sa.String(64), nullable=False),
        sa.Column("event_id", Id, nullable=False),
        sa.Column("order_key", sa.String(64), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", UTCDateTime(), nullable=False),
        sa.Column("last_error", sa.Text),
        sa.Column("state", sa.String(16), nullable=False, server_default="waiting"),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_webhook_outbox"),
    )
    op.create_index("ix_webhook_outbox_webhook_order_key_id", "webhook_outbox",
                    ["webhook", "order_key", "id"])
    op.create_index("ix_webhook_outbox_webhook_state_next_attempt_at_id", "webhook_outbox",
                    ["webhook", "state", "next_attempt_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_deliveries_lower_recipient", "deliveries")
    with op.batch_alter_table("inbound") as batch:
        batch.drop_column("attempts")
    for table in ("webhook_outbox", "webhook_cursors", "soft_bounce_deliveries", "feedback_records",
                  "soft_bounces"):
        op.drop_table(table)
