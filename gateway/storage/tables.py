"""The database schema (SQLAlchemy Core). Alembic migrations must match it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    func,
    true,
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
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
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
    Index(None, "campaign"),  # pausing or resuming a campaign finds its copies (migration 0006)
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
    # 0 = transactional (claimed first), 1 = marketing; set from the message's stream.
    Column("priority", SmallInteger, nullable=False, default=0, server_default="0"),
    # The provider profile of the last attempt or postponement ("" before the first).
    Column("provider", String(64), nullable=False, server_default=""),
    Index(None, "state", "next_attempt_at"),
    Index(None, "state", "priority", "next_attempt_at"),
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
    Column("campaign", String(64)),  # campaign events (paused, resumed, warned): migration 0007
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
    # Processing attempts: a row that keeps failing is marked failed (docs/feedback.md).
    Column("attempts", Integer, nullable=False, default=0, server_default="0"),
    Index(None, "state"),
)

# -- consent and suppression (issue 4) --------------------------------------------------
# Addresses are matched by address_hash (SHA-256 of the lower-cased address, see
# gateway/ingest/addresses.py): a suppression can be kept or imported without the address.

contacts = Table(
    "contacts",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("address", String(320)),  # local part as sent, A-label domain; NULL once erased
    Column("address_hash", String(64), nullable=False, unique=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("locale", String(35)),
    Column("attributes", Text, nullable=False, default="{}"),  # JSON object
    Column("erased_at", UTCDateTime()),
)

lists = Table(
    "lists",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("kind", String(16), nullable=False),  # marketing | transactional
    Column("double_opt_in", Boolean, nullable=False),
    Column("names", Text, nullable=False),  # JSON: locale -> friendly name
    Column("descriptions", Text, nullable=False),  # JSON: locale -> description
    Column("cap_days", Text, nullable=False),  # JSON: frequency -> days between messages
    Column("created_at", UTCDateTime(), nullable=False),
)

# The current state per contact and list; every change also appends to consent_history.
consents = Table(
    "consents",
    metadata,
    Column("contact_id", Id, ForeignKey("contacts.id"), primary_key=True),
    Column("list_key", String(64), ForeignKey("lists.key"), primary_key=True),
    Column("status", String(16), nullable=False),  # pending | confirmed | withdrawn
    Column("frequency", String(16)),  # daily | weekly | biweekly | monthly | quarterly
    Column("updated_at", UTCDateTime(), nullable=False),
)

# Append-only and kept for good, also after erasure (contact_id then points at an erased
# contact, and address_hash is what still ties the proof to a person who asks).
consent_history = Table(
    "consent_history",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("contact_id", Id, nullable=False),
    Column("address_hash", String(64), nullable=False),
    Column("list_key", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("frequency", String(16)),
    Column("source", String(32), nullable=False),  # form | import | api | preference-page
    Column("at", UTCDateTime(), nullable=False),
    Column("ip", String(45)),
    Column("user_agent", Text),
    Column("proof", Text),  # confirmation token, or the exact form text and version
    Index(None, "contact_id"),
    Index(None, "address_hash"),
)

suppressions = Table(
    "suppressions",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("address", String(320)),  # NULL when only the hash is known (hashed imports)
    Column("address_hash", String(64), nullable=False),
    Column("scope", String(16), nullable=False),  # global | list | campaign
    Column("scope_key", String(64), nullable=False, default=""),
    Column("reason", String(32), nullable=False),
    Column("source", String(64), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime()),
    Column("note", Text),
    UniqueConstraint("address_hash", "scope", "scope_key", "reason"),
)

# When a contact last got marketing mail from a list: the frequency cap's memory.
marketing_sends = Table(
    "marketing_sends",
    metadata,
    Column("address_hash", String(64), primary_key=True),
    Column("list_key", String(64), primary_key=True),
    Column("last_at", UTCDateTime(), nullable=False),
)

# -- bounces, complaints and webhooks (issue 8) -------------------------------------------
# See docs/feedback.md. Addresses are matched by address_hash, as for suppressions.

# Soft bounces counted toward a temporary suppression, per address; a delivery deletes the row.
soft_bounces = Table(
    "soft_bounces",
    metadata,
    Column("address_hash", String(64), primary_key=True),
    Column("bounces", Integer, nullable=False),
    Column("first_at", UTCDateTime(), nullable=False),
    Column("last_at", UTCDateTime(), nullable=False),
)

# Every bounce and complaint the gateway read, with what it concluded and did: what
# `gateway trace ADDRESS` shows as the explanation (class, rule, evidence).
feedback_records = Table(
    "feedback_records",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("at", UTCDateTime(), nullable=False),
    Column("address", String(320)),
    Column("address_hash", String(64), nullable=False),
    Column("kind", String(16), nullable=False),  # bounce | complaint
    Column("source", String(16), nullable=False),  # sync | dsn | arf
    Column("bounce_class", String(32), nullable=False),
    Column("severity", String(8), nullable=False),  # hard | soft
    Column("rule", String(128), nullable=False),
    Column("status", String(16), nullable=False, default=""),
    Column("action", String(200), nullable=False),  # what the gateway did about it
    Column("counted", Boolean, nullable=False, default=False),  # toward the soft-bounce limit
    Column("evidence", Text, nullable=False),
    Column("delivery_id", Id),
    Column("queue_id", String(26)),
    Column("list_key", String(64), nullable=False, default=""),
    Column("campaign", String(64), nullable=False, default=""),
    Column("provider", String(64), nullable=False, default=""),
    Column("inbound_id", Id),
    # False: bounce bookkeeping that failed with its outcome, to be applied again by a sweeper.
    Column("applied", Boolean, nullable=False, default=True, server_default=true()),
    Index(None, "address_hash"),
    Index(None, "delivery_id"),
)

# The sweeper's and `gateway status`'s "not applied yet" reads: a handful of rows among all the
# bounces and complaints ever read (migration 0008). Same predicate as their queries' WHERE.
_UNAPPLIED = feedback_records.c.applied.is_(False)
Index("ix_feedback_records_unapplied", feedback_records.c.id,
      postgresql_where=_UNAPPLIED, sqlite_where=_UNAPPLIED)

# Deliveries whose soft bounce was counted: the primary key makes "count once" race-free.
soft_bounce_deliveries = Table(
    "soft_bounce_deliveries",
    metadata,
    Column("delivery_id", Id, primary_key=True),
    Column("at", UTCDateTime(), nullable=False),
)

# Queued mail to an address is found case-insensitively (a bounce for Gone@Example.net
# stops mail to gone@example.net): an expression index, on SQLite and PostgreSQL alike.
Index("ix_deliveries_lower_recipient", func.lower(deliveries.c.recipient))

# Webhooks follow the events table: a cursor per webhook, and an outbox of the events
# still to POST (deleted once the receiver took them), sent in order per order_key.
webhook_cursors = Table(
    "webhook_cursors",
    metadata,
    Column("webhook", String(64), primary_key=True),
    Column("last_event_id", Id, nullable=False),
)

webhook_outbox = Table(
    "webhook_outbox",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("webhook", String(64), nullable=False),
    Column("event_id", Id, nullable=False),
    Column("order_key", String(64), nullable=False),  # the recipient's hash (or the queue id)
    Column("payload", Text, nullable=False),  # the JSON body, fixed when the event was queued
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", UTCDateTime(), nullable=False),
    Column("last_error", Text),
    Column("state", String(16), nullable=False, default="waiting", server_default="waiting"),  # or parked
    Column("created_at", UTCDateTime(), nullable=False),
    Index(None, "webhook", "order_key", "id"),
    Index(None, "webhook", "state", "next_attempt_at", "id"),
)

# -- per-ISP shaping (issue 7) ----------------------------------------------------------------
# Warm-up memory that must survive a restart: today's sends per source IP and provider (so a
# restart does not reset the daily cap) and the days a schedule was held back by bad health.
warmup_sends = Table(
    "warmup_sends",
    metadata,
    Column("source_ip", String(45), primary_key=True),
    Column("provider", String(64), primary_key=True),
    Column("day", String(10), primary_key=True),  # ISO date, UTC
    Column("sent", Integer, nullable=False),
)

warmup_holds = Table(
    "warmup_holds",
    metadata,
    Column("source_ip", String(45), primary_key=True),
    Column("provider", String(64), primary_key=True),
    Column("held_days", Integer, nullable=False),
    Column("decided_on", String(10), nullable=False),  # ISO date of the last decision
)

# -- paused campaigns (issue 9) -----------------------------------------------------------------
# A paused campaign's copies are held in the queue (deliveries.state = 'held') until it is
# resumed; see gateway/storage/campaign_store.py and docs/operations.md.
campaign_states = Table(
    "campaign_states",
    metadata,
    Column("campaign", String(64), primary_key=True),
    Column("paused", Boolean, nullable=False),
    Column("reason", String(32)),  # hard-bounce | complaint | manual (of the last pause)
    Column("detail", Text),  # the figures that tripped it, human readable
    Column("changed_by", String(32)),  # breaker | cli | api
    Column("changed_at", UTCDateTime(), nullable=False),
    # Reputation counts from before this instant are ignored (set on resume).
    Column("counted_since", UTCDateTime()),
)

# -- reputation circuit breakers (issue 9) ------------------------------------------------------
# Copies with a final answer, hard bounces and complaints per campaign, stream and provider in
# one-minute buckets, upserted once per outcome batch (not a row per message) and pruned after
# the window; see gateway/storage/reputation_store.py and docs/reputation.md.
reputation_counts = Table(
    "reputation_counts",
    metadata,
    Column("campaign", String(64), primary_key=True),
    Column("stream", String(16), primary_key=True),
    Column("provider", String(64), primary_key=True),
    Column("bucket", UTCDateTime(), primary_key=True),  # the minute the events fell in
    # The node whose outcome batches wrote the row ("" for DSNs and complaints): each node
    # upserts its own rows inside its group commit, so nodes never wait on (or deadlock over)
    # one another's counters; readers sum over nodes.
    Column("writer", String(128), primary_key=True, server_default=""),
    Column("sent", Integer, nullable=False, default=0),
    Column("hard", Integer, nullable=False, default=0),
    Column("complaints", Integer, nullable=False, default=0),
    Index(None, "bucket"),
)
