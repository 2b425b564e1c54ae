"""Messages: stream, list and campaign, read from the control headers at intake.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Rows queued before this revision were accepted without control headers: transactional.
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("stream", sa.String(16), nullable=False,
                                   server_default="transactional"))
        batch.add_column(sa.Column("list_key", sa.String(64), nullable=False, server_default=""))
        batch.add_column(sa.Column("campaign", sa.String(64), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("campaign")
        batch.drop_column("list_key")
        batch.drop_column("stream")
