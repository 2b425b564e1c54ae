"""Paused campaigns and held deliveries.

A paused campaign's copies stay in the queue as ``held``: never claimed, never expired,
not lost. Three places hold them, so that no copy slips through: the pause itself (every
waiting copy), intake (new mail of a paused campaign is stored held) and the claim (a copy
deferred or queued in between is held instead of being sent). A resume releases them all,
due at once. Operators can also hold and release copies by hand (``gateway queue hold``);
both use the same state, so a resume also releases a campaign's manually held copies.

The empty campaign (mail without ``X-Gateway-Campaign``) is never paused: transactional
mail must not stop because marketing misbehaved.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import case, false, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.records import PENDING_STATES, DeliveryState
from gateway.storage import tables
from gateway.storage.database import upsert
from gateway.storage.tables import deliveries, messages

_PENDING = [s.value for s in PENDING_STATES]
IN_BATCH = 500  # campaigns per IN list
HELD_LIMIT = 100_000
"""Most held copies counted per campaign; a count that reaches it is a lower bound."""
_states = tables.campaign_states


@dataclass(frozen=True)
class CampaignState:
    """A campaign that was ever paused, and how many of its copies are held now (at most
    ``HELD_LIMIT``: a count that reaches it is a lower bound)."""

    campaign: str
    paused: bool
    reason: str | None
    detail: str | None
    changed_by: str | None
    changed_at: datetime
    counted_since: datetime | None
    held: int


def _check_name(campaign: str) -> None:
    if not campaign:
        raise ValueError("the empty campaign (mail without X-Gateway-Campaign) cannot be paused")


async def pause_campaign(conn: AsyncConnection, campaign: str, *, reason: str, detail: str, by: str,
                         now: datetime) -> int:
    """Pause ``campaign`` and hold its waiting copies; returns how many were held.

    Pausing a paused campaign changes nothing and returns 0: the first reason (the one that
    explains the stop) is kept. A copy being delivered right now is left to finish; if it is
    deferred, the claim holds it next time.
    """
    _check_name(campaign)
    statement = upsert(conn, _states)
    paused = await conn.execute(statement.values(
        campaign=campaign, paused=True, reason=reason, detail=detail, changed_by=by, changed_at=now,
    ).on_conflict_do_update(
        index_elements=["campaign"],
        set_={"paused": True, "reason": reason, "detail": detail, "changed_by": by, "changed_at": now},
        where=_states.c.paused == false(),
    ).returning(_states.c.campaign))
    if paused.first() is None:
        return 0
    return await hold_deliveries(conn, _of_campaign(campaign))


async def resume_campaign(conn: AsyncConnection, campaign: str, *, by: str, now: datetime) -> int | None:
    """Resume a paused campaign and release its held copies, due now; None if it was not
    paused. Reputation counts start again from ``now`` (``counted_since``), so the figures
    that tripped the pause do not trip it again at once."""
    resumed = await conn.execute(
        update(_states)
        .where(_states.c.campaign == campaign, _states.c.paused.is_(True))
        .values(paused=False, changed_by=by, changed_at=now, counted_since=now)
        .returning(_states.c.campaign))
    if resumed.first() is None:
        return None
    return await release_deliveries(conn, _of_campaign(campaign), now)


async def campaign_states(conn: AsyncConnection) -> list[CampaignState]:
    """Every campaign that was ever paused (paused ones first), with its held copies."""
    rows = list(await conn.execute(select(_states)
                                   .order_by(_states.c.paused.desc(), _states.c.campaign)))
    held = await _held_counts(conn, [row.campaign for row in rows])
    return [_state(row, held[row.campaign]) for row in rows]


async def campaign_state(conn: AsyncConnection, campaign: str) -> CampaignState | None:
    row = (await conn.execute(select(_states)
                              .where(_states.c.campaign == campaign))).first()
    if row is None:
        return None
    held = await _held_counts(conn, [campaign])
    return _state(row, held[campaign])


async def paused_among(conn: AsyncConnection, campaigns: Iterable[str]) -> set[str]:
    """Which of ``campaigns`` are paused: one indexed read, none for an empty set."""
    wanted = sorted({c for c in campaigns if c})
    found: set[str] = set()
    for start in range(0, len(wanted), IN_BATCH):
        rows = await conn.execute(
            select(_states.c.campaign)
            .where(_states.c.campaign.in_(wanted[start:start + IN_BATCH]),
                   _states.c.paused.is_(True)))
        found.update(row.campaign for row in rows)
    return found


async def hold_deliveries(conn: AsyncConnection, where: Any) -> int:
    """Hold the waiting copies matching ``where``; a leased copy (being attempted) is left to
    its node. The due time is kept: only the release sets a new one."""
    result = await conn.execute(
        update(deliveries)
        .where(where, deliveries.c.state.in_(_PENDING), deliveries.c.claimed_by.is_(None))
        .values(state=DeliveryState.HELD.value))
    return int(result.rowcount or 0)


async def release_deliveries(conn: AsyncConnection, where: Any, now: datetime) -> int:
    """Release held copies matching ``where``: back to ``queued`` if never tried, ``deferred``
    otherwise, so the states keep their meaning. A copy is due ``now``, or at its own due time
    if that is later: a deferred copy keeps the back-off its provider asked for, instead of
    all of a campaign's deferrals going back to that provider at once. The provider's maximum
    queue age still counts from reception: a copy held past it expires at its first failed
    attempt or postponement."""
    result = await conn.execute(
        update(deliveries)
        .where(where, deliveries.c.state == DeliveryState.HELD.value)
        .values(state=case((deliveries.c.attempts > 0, DeliveryState.DEFERRED.value),
                           else_=DeliveryState.QUEUED.value),
                next_attempt_at=case((deliveries.c.next_attempt_at > now, deliveries.c.next_attempt_at),
                                     else_=now)))
    return int(result.rowcount or 0)


def _of_campaign(campaign: str) -> Any:
    return deliveries.c.queue_id.in_(
        select(messages.c.queue_id).where(messages.c.campaign == campaign).scalar_subquery())


async def _held_counts(conn: AsyncConnection, campaigns: Iterable[str]) -> dict[str, int]:
    """Held copies per campaign, each count stopping at ``HELD_LIMIT``: through the campaign
    index and the deliveries of its messages, never a walk over every held row of the queue
    (a status is asked for when things go wrong, often with a big queue)."""
    found: dict[str, int] = {}
    for campaign in campaigns:
        held = (select(deliveries.c.id)
                .join(messages, messages.c.queue_id == deliveries.c.queue_id)
                .where(messages.c.campaign == campaign, deliveries.c.state == DeliveryState.HELD.value)
                .limit(HELD_LIMIT).subquery())
        found[campaign] = int((await conn.execute(select(func.count()).select_from(held))).scalar() or 0)
    return found


def _state(row: Any, held: int) -> CampaignState:
    return CampaignState(row.campaign, bool(row.paused), row.reason, row.detail, row.changed_by,
                         row.changed_at, row.counted_since, held)
