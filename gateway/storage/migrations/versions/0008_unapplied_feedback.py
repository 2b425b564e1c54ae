"""A partial index for the feedback records whose bookkeeping is still to be applied.

The sweeper (every few seconds) and `gateway status` look for ``applied = false`` rows,
which are rare; without an index each look read every bounce and complaint ever stored.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_NAME = "ix_feedback_records_unapplied"


def upgrade() -> None:
    # The predicate is written as SQLAlchemy renders the queries' `applied.is_(False)`, so
    # both planners see that the index covers them.
    op.create_index(_NAME, "feedback_records", ["id"], postgresql_where=sa.text("applied IS false"),
                    sqlite_where=sa.text("applied IS 0"))


def downgrade() -> None:
    op.drop_index(_NAME, table_name="feedback_records")
