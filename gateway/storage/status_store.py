"""Reads for `gateway status` and the admin API's GET /status: the queue grouped for a summary.

Read only. Warm-up counters, webhook backlog and unapplied feedback have their readers in
shaping_store and feedback_store; this module adds what no other part needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.records import DeliveryState
from gateway.storage.tables import deliveries

IN_QUEUE = tuple(state.value for state in DeliveryState if not state.is_final)
"""Every state still in the queue (queued, deferred, and held once it exists): read from the
enum so that a new waiting state is counted without a change here."""


@dataclass(frozen=True)
class QueueGroup:
    """Deliveries still in the queue with one state and provider ("" before any routing)."""

    state: str
    provider: str
    count: int
    oldest_due: datetime


async def queue_groups(conn: AsyncConnection) -> list[QueueGroup]:
    """Count and earliest due time per (state, provider): one grouped scan of the waiting rows,
    which the (state, ...) index bounds; final rows are never read."""
    rows = await conn.execute(
        select(deliveries.c.state, deliveries.c.provider, func.count(),
               func.min(deliveries.c.next_attempt_at))
        .where(deliveries.c.state.in_(IN_QUEUE))
        .group_by(deliveries.c.state, deliveries.c.provider))
    return sorted((QueueGroup(row[0], row[1] or "", int(row[2]), row[3]) for row in rows),
                  key=lambda group: (group.state, group.provider))
