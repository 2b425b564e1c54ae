"""Shaping's storage: postponing claimed deliveries without an attempt; warm-up counters."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, datetime

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.storage.tables import deliveries, warmup_holds, warmup_sends


async def postpone(conn: AsyncConnection, node: str,
                   items: Sequence[tuple[int, datetime, str]]) -> int:
    """Give claimed deliveries (id, due time, provider) a later due time and release them,
    without counting an attempt or writing an event (nothing was sent: a warm-up cap, a
    suspension, a paused provider or site, a full backlog). Rows whose lease moved to another
    node are left alone."""
    if not items:
        return 0
    result = await conn.execute(
        update(deliveries)
        .where(deliveries.c.id == bindparam("b_id"), deliveries.c.claimed_by == node)
        .values(next_attempt_at=bindparam("b_next"), provider=bindparam("b_provider"),
                claimed_by=None, lease_until=None),
        [{"b_id": delivery_id, "b_next": at, "b_provider": provider} for delivery_id, at, provider in items],
    )
    return int(result.rowcount or 0)


WarmupKey = tuple[str, str]  # (source IP, provider)


async def load_warmup(conn: AsyncConnection, day: date) -> tuple[dict[WarmupKey, int],
                                                                 dict[WarmupKey, tuple[int, date]]]:
    """Today's warm-up sends and every held-back schedule (held days, day of the decision)."""
    sends = {(r.source_ip, r.provider): r.sent for r in await conn.execute(
        select(warmup_sends).where(warmup_sends.c.day == day.isoformat()))}
    holds = {(r.source_ip, r.provider): (r.held_days, date.fromisoformat(r.decided_on))
             for r in await conn.execute(select(warmup_holds))}
    return sends, holds


async def save_warmup(conn: AsyncConnection, day: date, sends: Mapping[WarmupKey, int],
                      holds: Mapping[WarmupKey, tuple[int, date]]) -> None:
    """Replace today's counters and the holds with this node's view; older days are dropped."""
    await conn.execute(delete(warmup_sends).where(warmup_sends.c.day != day.isoformat()))
    for table, rows in ((warmup_sends, [{"source_ip": ip, "provider": p, "day": day.isoformat(), "sent": n}
                                        for (ip, p), n in sends.items()]),
                        (warmup_holds, [{"source_ip": ip, "provider": p, "held_days": held,
                                         "decided_on": on.isoformat()}
                                        for (ip, p), (held, on) in holds.items()])):
        if not rows:
            continue
        for row in rows:
            await conn.execute(delete(table).where(table.c.source_ip == row["source_ip"],
                                                   table.c.provider == row["provider"]))
        await conn.execute(insert(table), rows)
