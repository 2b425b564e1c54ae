"""Reads for `gateway status` and the admin API's GET /status: the queue grouped for a summary.

Read only. Warm-up counters, webhook backlog and unapplied feedback have their readers in
shaping_store and feedback_store; this module adds what no other part needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.records import QUEUE_STATES
from gateway.storage.tables import deliveries

SCAN_LIMIT = 100_000
"""Most deliveries a status reads per state. A status is asked for while things go wrong,
often of a queue that has grown: it must cost a bounded index range, not a walk over a
million rows. Beyond this the counts are lower bounds (gateway_queue_deliveries has the total)."""


@dataclass(frozen=True)
class QueueGroup:
    """Deliveries still in the queue with one state and provider ("" before any routing)."""

    state: str
    provider: str
    count: int
    oldest_due: datetime


@dataclass(frozen=True)
class QueueScan:
    groups: list[QueueGroup]
    capped: frozenset[str]  # states with SCAN_LIMIT deliveries or more: their counts are lower bounds


async def queue_groups(conn: AsyncConnection, limit: int = SCAN_LIMIT) -> QueueScan:
    """Count and earliest due time per (state, provider) among the ``limit`` soonest due
    deliveries of each state still in the queue: an ordered range of the (state,
    next_attempt_at) index that stops at ``limit``, so the cost does not grow with the queue."""
    groups: list[QueueGroup] = []
    capped: set[str] = set()
    for state in sorted(s.value for s in QUEUE_STATES):
        soonest = (select(deliveries.c.provider, deliveries.c.next_attempt_at)
                   .where(deliveries.c.state == state)
                   .order_by(deliveries.c.next_attempt_at).limit(limit).subquery())
        rows = await conn.execute(
            select(soonest.c.provider, func.count(), func.min(soonest.c.next_attempt_at))
            .group_by(soonest.c.provider))
        found = [QueueGroup(state, row[0] or "", int(row[1]), row[2]) for row in rows]
        if sum(group.count for group in found) >= limit:
            capped.add(state)
        groups.extend(sorted(found, key=lambda group: group.provider))
    return QueueScan(groups, frozenset(capped))
