"""The database schema (SQLAlchemy Core). Alembic migrations must match it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on SQLite and PostgreSQL alike.

    SQLite has no time zone type; storing naive UTC and re-attaching UTC on the way
    out keeps comparisons and arithmetic correct everywhere.
    """

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database; pass an aware UTC datetime")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC)


# BIGINT on PostgreSQL, INTEGER (the rowid alias) on SQLite so that autoincrement works.
Id = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

messages = Table(
    "messages",
    metadata,
    Column("queue_id", String(26), primary_key=True),
    Column("received_at", UTCDateTime(), nullable=False),
    Column("mail_from", String(320), nullable=False),
    Column("account", String(256)),
    Column("client_ip", String(45), nullable=False),
    Column("helo", String(255), nullable=False),
    Column("header_message_id", String(998)),
    Column("size", Integer, nullable=False),
    Column("recipient_count", Integer, nullable=False),
    # From the X-Gateway-* control headers (or the account's defaults) at intake.
    Column("stream", String(16), nullable=False, server_default="transactional"),
    Column("list_key", String(64), nullable=False, server_default=""),
    Column("campaign", String(64), nullable=False, server_default=""),
    # NULL once every delivery of the message is final (the body is no longer needed).
    Column("body", LargeBinary),
    Index(None, "header_message_id"),
    Index(None, "received_at"),
)

deliveries = Table(
    "deliveries",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("queue_id", String(26), ForeignKey("messages.queue_id"), nullable=False),
    Column("recipient", String(320), nullable=False),
    Column("domain", String(255), nullable=False),
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", UTCDateTime(), nullable=False),
    Column("claimed_by", String(128)),
    Column("lease_until", UTCDateTime()),
    Column("last_reply", Text),
    Column("updated_at", UTCDateTime(), nullable=False),
    Index(None, "state", "next_attempt_at"),
    Index(None, "queue_id"),
    Index(None, "recipient"),
)

events = Table(
    "events",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("at", UTCDateTime(), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("queue_id", String(26), nullable=False),
    Column("delivery_id", Id),
    Column("recipient", String(320)),
    Column("reply", Text),
    Column("remote", String(300)),
    Column("source_ip", String(45)),
    Index(None, "queue_id"),
    Index(None, "recipient"),
)

inbound = Table(
    "inbound",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("received_at", UTCDateTime(), nullable=False),
    Column("mail_from", String(320), nullable=False),
    Column("recipients", Text, nullable=False),
    Column("client_ip", String(45), nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("state", String(16), nullable=False),
    Index(None, "state"),
)
