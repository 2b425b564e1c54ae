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

from gateway.feedback.breakers import HARD_BOUNCE, Key, Kind, Tally, bucket_of
from gateway.feedback.verdicts import Severity
from gateway.records import DeliveryState, Outcome
from gateway.storage.database import upsert
from gateway.storage.tables import (
    UTCDateTime,
    campaign_states,
    deliveries,
    events,
    feedback_records,
    messages,
    reputation_counts,
)

_COUNTS = reputation_counts
_ANSWERED = frozenset({DeliveryState.DELIVERED, DeliveryState.BOUNCED})
_KEY = ["campaign", "stream", "provider", "bucket", "writer"]
_SUMS = (func.sum(_COUNTS.c.sent), func.sum(_COUNTS.c.hard), func.sum(_COUNTS.c.complaints))


def counted(outcome: Outcome) -> tuple[bool, bool]:
    """(answered, hard) for one attempt (pure): the base is copies the remote gave a final
    answer (delivered or bounced); a hard verdict counts even on a deferral, because the
    address is suppressed at once and that copy never gets another answer."""
    hard = outcome.verdict is not None and outcome.verdict.is_hard
    return outcome.state in _ANSWERED or hard, hard


async def count_outcomes(conn: AsyncConnection, outcomes: Sequence[Outcome], *, node: str = "") -> None:
    """Add an outcome batch: one INSERT ... SELECT per minute the batch spans (nearly always
    one), campaign and stream read from ``messages`` and the provider from the delivery row
    the batch has just updated. The rows are ``node``'s own (column ``writer``): nodes sending
    the same campaign never wait on each other's counters inside their group commits."""
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
                       literal(bucket, UTCDateTime()), literal(node), func.count(), hard_count, literal(0))
                .select_from(deliveries.join(messages, messages.c.queue_id == deliveries.c.queue_id))
                .where(deliveries.c.id.in_(ids))
                .group_by(messages.c.campaign, messages.c.stream, deliveries.c.provider)
                .order_by(messages.c.campaign, messages.c.stream, deliveries.c.provider))
        await conn.execute(_add(conn, upsert(conn, _COUNTS).from_select(
            [*_KEY, "sent", "hard", "complaints"], rows)))


async def count_feedback(conn: AsyncConnection, delivery_id: int | None, kind: Kind) -> None:
    """Add an asynchronous hard bounce (DSN) or a trusted complaint about copy ``delivery_id``,
    in the bucket where that copy was counted in the base (the minute it was answered): the
    rate is then that of the window's copies, a resume's restart leaves out reports about
    copies sent before it (they would re-trip the campaign against a fresh base), and a
    report about a copy older than the window is pruned unread.

    Once per copy and kind: a second DSN, a repeated report or a DSN about a copy whose
    synchronous hard bounce was counted adds nothing. Call it before the report goes into
    ``feedback_records``, which is where earlier ones are found."""
    if delivery_id is None:
        return
    copy = (await conn.execute(
        select(messages.c.campaign, messages.c.stream, deliveries.c.provider, deliveries.c.updated_at)
        .select_from(deliveries.join(messages, messages.c.queue_id == deliveries.c.queue_id))
        .where(deliveries.c.id == delivery_id))).first()
    if copy is None or await _told_before(conn, delivery_id, kind):
        return
    hard = int(kind == HARD_BOUNCE)
    await conn.execute(_add(conn, upsert(conn, _COUNTS).values(
        campaign=copy.campaign, stream=copy.stream, provider=copy.provider, bucket=bucket_of(copy.updated_at),
        writer="", sent=0, hard=hard, complaints=1 - hard)))


async def _told_before(conn: AsyncConnection, delivery_id: int, kind: Kind) -> bool:
    records = feedback_records
    same = (records.c.severity == Severity.HARD.value) if kind == HARD_BOUNCE else literal(True)
    query = select(records.c.id).where(records.c.delivery_id == delivery_id,
                                       records.c.kind == ("bounce" if kind == HARD_BOUNCE else "complaint"),
                                       same).limit(1)
    return (await conn.execute(query)).first() is not None


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
