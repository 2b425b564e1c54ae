"""Queue: messages, per-recipient deliveries, events, inbound bounce-domain mail.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from gateway.storage.tables import Id, UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "messages",
        sa.Column("queue_id", sa.String(26), nullable=False),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.Column("mail_from", sa.String(320), nullable=False),
        sa.Column("account", sa.String(256)),
        sa.Column("client_ip", sa.String(45), nullable=False),
        sa.Column("helo", sa.String(255), nullable=False),
        sa.Column("header_message_id", sa.String(998)),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("recipient_count", sa.Integer, nullable=False),
        sa.Column("body", sa.LargeBinary),
        sa.PrimaryKeyConstraint("queue_id", name="pk_messages"),
    )
    op.create_index("ix_messages_header_message_id", "messages", ["header_message_id"])
    op.create_index("ix_messages_received_at", "messages", ["received_at"])
    op.create_table(
        "deliveries",
        sa.Column("id", Id, nullable=False, autoincrement=True),
        sa.Column("queue_id", sa.String(26), nullable=False),
        sa.Column("recipient", sa.String(320), nullable=False),
        sa.Column("domain", sa.String(255), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", UTCDateTime(), nullable=False),
        sa.Column("claimed_by", sa.String(128)),
        sa.Column("lease_until", UTCDateTime()),
        sa.Column("last_reply", sa.Text),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_deliveries"),
        sa.ForeignKeyConstraint(["queue_id"], ["messages.queue_id"],
                                name="fk_deliveries_queue_id_messages"),
    )
    op.create_index("ix_deliveries_state_next_attempt_at", "deliveries",
                    ["state", "next_attempt_at"])
    op.create_index("ix_deliveries_queue_id", "deliveries", ["queue_id"])
    op.create_index("ix_deliveries_recipient", "deliveries", ["recipient"])
    op.create_table(
        "events",
        sa.Column("id", Id, nullable=False, autoincrement=True),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("queue_id", sa.String(26), nullable=False),
        sa.Column("delivery_id", Id),
        sa.Column("recipient", sa.String(320)),
        sa.Column("reply", sa.Text),
        sa.Column("remote", sa.String(300)),
        sa.Column("source_ip", sa.String(45)),
        sa.PrimaryKeyConstraint("id", name="pk_events"),
    )
    op.create_index("ix_events_queue_id", "events", ["queue_id"])
    op.create_index("ix_events_recipient", "events", ["recipient"])
    op.create_table(
        "inbound",
        sa.Column("id", Id, nullable=False, autoincrement=True),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.Column("mail_from", sa.String(320), nullable=False),
        sa.Column("recipients", sa.Text, nullable=False),
        sa.Column("client_ip", sa.String(45), nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_inbound"),
    )
    op.create_index("ix_inbound_state", "inbound", ["state"])


def downgrade() -> None:
    for table in ("inbound", "events", "deliveries", "messages"):
        op.drop_table(table)
