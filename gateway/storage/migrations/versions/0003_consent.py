"""Consent and suppression: contacts, lists, consents and their history, suppressions,
and the last marketing send per address and list (frequency caps).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from gateway.storage.tables import Id, UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "contacts",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("address", sa.String(320)),
        sa.Column("address_hash", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("locale", sa.String(35)),
        sa.Column("attributes", sa.Text, nullable=False),
        sa.Column("erased_at", UTCDateTime()),
        sa.PrimaryKeyConstraint("id", name="pk_contacts"),
        sa.UniqueConstraint("address_hash", name="uq_contacts_address_hash"),
    )
    op.create_table(
        "lists",
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("double_opt_in", sa.Boolean, nullable=False),
        sa.Column("names", sa.Text, nullable=False),
        sa.Column("descriptions", sa.Text, nullable=False),
        sa.Column("cap_days", sa.Text, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_lists"),
    )
    op.create_table(
        "consents",
        sa.Column("contact_id", Id, sa.ForeignKey("contacts.id", name="fk_consents_contact_id_contacts"),
                  nullable=False),
        sa.Column("list_key", sa.String(64), sa.ForeignKey("lists.key", name="fk_consents_list_key_lists"),
                  nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("frequency", sa.String(16)),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("contact_id", "list_key", name="pk_consents"),
    )
    op.create_table(
        "consent_history",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("contact_id", Id, nullable=False),
        sa.Column("address_hash", sa.String(64), nullable=False),
        sa.Column("list_key", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("frequency", sa.String(16)),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("ip", sa.String(45)),
        sa.Column("user_agent", sa.Text),
        sa.Column("proof", sa.Text),
        sa.PrimaryKeyConstraint("id", name="pk_consent_history"),
    )
    op.create_index("ix_consent_history_contact_id", "consent_history", ["contact_id"])
    op.create_index("ix_consent_history_address_hash", "consent_history", ["address_hash"])
    op.create_table(
        "suppressions",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("address", sa.String(320)),
        sa.Column("address_hash", sa.String(64), nullable=False),
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("scope_key", sa.String(64), nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime()),
        sa.Column("note", sa.Text),
        sa.PrimaryKeyConstraint("id", name="pk_suppressions"),
        sa.UniqueConstraint("address_hash", "scope", "scope_key", "reason",
                            name="uq_suppressions_address_hash_scope_scope_key_reason"),
    )
    op.create_table(
        "marketing_sends",
        sa.Column("address_hash", sa.String(64), nullable=False),
        sa.Column("list_key", sa.String(64), nullable=False),
        sa.Column("last_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("address_hash", "list_key", name="pk_marketing_sends"),
    )


def downgrade() -> None:
    for table in ("marketing_sends", "suppressions", "consent_history", "consents", "lists", "contacts"):
        op.drop_table(table)
