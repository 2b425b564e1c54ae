"""Reputation counts for the circuit breakers: every SQL statement they need.

Counts live in the database, not in one process, so that every node judges the same
figures. They are written in the transaction of the fact they count (an outcome batch, a
DSN, a complaint), as one upsert per batch into one-minute buckets per campaign, stream
and provider: a busy send adds a handful of rows a minute, not one per message. Buckets
older than the window are pruned by the breaker task (gateway/feedback/reputation.py).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, case, delete, func, insert, literal, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.feedback.breakers import Key, Tally, bucket_of
from gateway.records import DeliveryState, Outcome
from gateway.storage.database import upsert
from gateway.storage.tables import (
    UTCDateTime,
    campaign_states,
    deliveries,
    events,
    messages,
    reputation_counts,
)

_COUNTS = reputation_counts
_ANSWERED = frozenset({DeliveryState.DELIVERED, DeliveryState.BOUNCED})
_KEY = ["campaign", "stream", "provider", "bucket"]
_SUMS = (func.sum(_COUNTS.c.sent), func.sum(_COUNTS.c.hard), func.sum(_COUNTS.c.complaints))


def counted(outcome: Outcome) -> tuple[bool, bool]:
    """(answered, hard) for one attempt (pure): the base is copies the remote gave a final
    answer (delivered or bounced); a hard verdict counts even on a deferral, because the
    address is suppressed at once and that copy never gets another answer."""
    hard = outcome.verdict is not None and outcome.verdict.is_hard
    return outcome.state in _ANSWERED or hard, hard


async def count_outcomes(conn: AsyncConnection, outcomes: Sequence[Outcome]) -> None:
    """Add an outcome batch: one INSERT ... SELECT per minute the batch spans (nearly always
    one), campaign and stream read from ``messages`` and the provider from the delivery row
    the batch has just updated. Rows go in key order so that two nodes upserting the same
    keys queue on them instead of deadlocking."""
    by_bucket: dict[datetime, tuple[list[int], list[int]]] = {}
    for outcome in outcomes:
        answered, hard = counted(outcome)
        if answered:
            ids, hard_ids = by_bucket.setdefault(bucket_of(outcome.at), ([], []))
            ids.append(outcome.delivery_id)
            if hard:
                hard_ids.append(outcome.delivery_id)
    for bucket, (ids, hard_ids) in sorted(by_bucket.items()):
        hard_count = func.sum(case((deliveries.c.id.in_(hard_ids), 1), else_=0)) if hard_ids else literal(0)
        rows = (select(messages.c.campaign, messages.c.stream, deliveries.c.provider,
                       literal(bucket, UTCDateTime()), func.count(), hard_count, literal(0))
                .select_from(deliveries.join(messages, messages.c.queue_id == deliveries.c.queue_id))
                .where(deliveries.c.id.in_(ids))
                .group_by(messages.c.campaign, messages.c.stream, deliveries.c.provider)
                .order_by(messages.c.campaign, messages.c.stream, deliveries.c.provider))
        await conn.execute(_add(conn, upsert(conn, _COUNTS).from_select(
            [*_KEY, "sent", "hard", "complaints"], rows)))


async def count_feedback(conn: AsyncConnection, queue_id: str | None, provider: str, at: datetime, *,
                         hard: int = 0, complaints: int = 0) -> None:
    """Add an asynchronous hard bounce (DSN) or a trusted complaint about a copy of message
    ``queue_id``; its copy was counted in the base when it was answered."""
    if not queue_id:
        return
    rows = (select(messages.c.campaign, messages.c.stream, literal(provider),
                   literal(bucket_of(at), UTCDateTime()), literal(0), literal(hard), literal(complaints))
            .where(messages.c.queue_id == queue_id))
    await conn.execute(_add(conn, upsert(conn, _COUNTS).from_select(
        [*_KEY, "sent", "hard", "complaints"], rows)))


def _add(conn: AsyncConnection, statement: Any) -> Any:
    new = statement.excluded
    return statement.on_conflict_do_update(index_elements=_KEY, set_={
        "sent": _COUNTS.c.sent + new.sent, "hard": _COUNTS.c.hard + new.hard,
        "complaints": _COUNTS.c.complaints + new.complaints})


async def tallies(conn: AsyncConnection, *, start: datetime, streams: Collection[str],
                  campaigns: Collection[str] | None = None,
                  later_starts: Mapping[str, datetime] | None = None) -> dict[Key, Tally]:
    """Sums per (stream, campaign, provider) of named campaigns from bucket ``start`` on
    (``later_starts``: campaigns whose counting restarted later, after a resume); every
    campaign with counts when ``campaigns`` is None. Mail without a campaign is left out."""
    if campaigns is not None and not campaigns:
        return {}
    where = [_COUNTS.c.bucket >= start, _COUNTS.c.stream.in_(sorted(streams)), _COUNTS.c.campaign != ""]
    if campaigns is not None:
        where.append(_COUNTS.c.campaign.in_(sorted(campaigns)))
    for campaign, later in sorted((later_starts or {}).items()):
        where.append(or_(_COUNTS.c.campaign != campaign, _COUNTS.c.bucket >= later))
    query = (select(_COUNTS.c.stream, _COUNTS.c.campaign, _COUNTS.c.provider, *_SUMS).where(and_(*where))
             .group_by(_COUNTS.c.stream, _COUNTS.c.campaign, _COUNTS.c.provider))
    return {Key(r[0], r[1], r[2]): Tally(int(r[3] or 0), int(r[4] or 0), int(r[5] or 0))
            for r in await conn.execute(query)}


async def rates(conn: AsyncConnection, *, start: datetime) -> dict[Key, Tally]:
    """Sums per (stream, provider) across campaigns (campaign "" in the keys), for the
    rolling-rate gauge: what receivers see of the whole stream."""
    query = (select(_COUNTS.c.stream, _COUNTS.c.provider, *_SUMS).where(_COUNTS.c.bucket >= start)
             .group_by(_COUNTS.c.stream, _COUNTS.c.provider))
    return {Key(r[0], "", r[1]): Tally(int(r[2] or 0), int(r[3] or 0), int(r[4] or 0))
            for r in await conn.execute(query)}


async def prune(conn: AsyncConnection, before: datetime) -> int:
    """Forget buckets older than ``before`` (the oldest bucket a window still reads)."""
    result = await conn.execute(delete(_COUNTS).where(_COUNTS.c.bucket < before))
    return int(result.rowcount or 0)


async def add_campaign_events(conn: AsyncConnection, rows: Iterable[tuple[datetime, str, str, str]]) -> None:
    """Campaign-level events (at, kind, campaign, detail): paused, resumed, warned. They have
    no message or recipient; webhooks send them with the campaign's name and the figures."""
    values = [{"at": at, "kind": kind, "queue_id": "", "campaign": campaign, "reply": detail}
              for at, kind, campaign, detail in rows]
    if values:
        await conn.execute(insert(events), values)


@dataclass(frozen=True)
class Mark:
    """What the breakers need of a campaign's state: paused now, and since when it counts."""

    paused: bool
    counted_since: datetime | None


async def campaign_marks(conn: AsyncConnection, campaigns: Collection[str] | None = None) -> dict[str, Mark]:
    """Pause state and counting start of the named campaigns (every one known when None);
    campaigns never paused have no row and are absent. Reads no deliveries."""
    query = select(campaign_states.c.campaign, campaign_states.c.paused, campaign_states.c.counted_since)
    if campaigns is not None:
        if not campaigns:
            return {}
        query = query.where(campaign_states.c.campaign.in_(sorted(campaigns)))
    return {r.campaign: Mark(bool(r.paused), r.counted_since) for r in await conn.execute(query)}


async def paused_count(conn: AsyncConnection) -> int:
    return int((await conn.execute(select(func.count()).select_from(campaign_states)
                                   .where(campaign_states.c.paused.is_(True)))).scalar_one())
