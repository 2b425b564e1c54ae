"""Shaping's storage: postponing claimed deliveries without an attempt; warm-up counters that
survive a restart (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.delivery.warmup_keeper import WarmupKeeper
from gateway.records import NewMessage, new_queue_id
from gateway.shaping.store import MemoryThrottleStore
from gateway.storage import queue_store, shaping_store
from gateway.storage.database import Database
from gateway.storage.tables import deliveries

T0 = datetime(2026, 11, 10, 12, 0, tzinfo=UTC)
DAY = date(2026, 11, 10)


async def test_postpone_keeps_attempts_and_state(db_url: str) -> None:
    db = Database(db_url)
    await db.start()
    message = NewMessage(queue_id=new_queue_id(T0), received_at=T0, mail_from="s@example.com",
                         recipients=("a@gmail.test",), body=b"Subject: x\r\n\r\nhi\r\n",
                         client_ip="127.0.0.1", helo="client")
    await db.write(lambda c: queue_store.insert_messages(c, [message]))
    claimed = await db.write(lambda c: queue_store.claim_due(
        c, node="n1", now=T0 + timedelta(seconds=1), lease_until=T0 + timedelta(minutes=15), limit=10))
    later = T0 + timedelta(hours=3)
    changed = await db.write(lambda c: shaping_store.postpone(c, "n1", [(claimed[0].delivery_id, later, "gmail")]))
    assert changed == 1
    assert await db.write(lambda c: queue_store.claim_due(
        c, node="n1", now=later - timedelta(seconds=1), lease_until=later, limit=10)) == []
    again = await db.write(lambda c: queue_store.claim_due(
        c, node="n2", now=later, lease_until=later + timedelta(minutes=15), limit=10))
    assert [(d.delivery_id, d.attempts) for d in again] == [(claimed[0].delivery_id, 0)]
    assert await db.read(queue_store.count_pending) == {"queued": 1}
    assert await db.read(lambda c: _provider_of(c, claimed[0].delivery_id)) == "gmail"
    await db.close()


async def _provider_of(conn: AsyncConnection, delivery_id: int) -> str:
    return str((await conn.execute(select(deliveries.c.provider).where(deliveries.c.id == delivery_id)))
               .scalar_one())


async def test_warmup_counters_survive_a_restart(db_url: str) -> None:
    db = Database(db_url)
    await db.start()
    clock = lambda: T0.timestamp()  # noqa: E731
    before = MemoryThrottleStore()
    for _ in range(3):
        assert await before.reserve_warmup("127.0.0.13", "gmail", DAY, 5)
    await before.hold("127.0.0.13", "gmail", DAY, 2)
    await WarmupKeeper(db, before, clock=clock).save()
    await WarmupKeeper(db, before, clock=clock).save()  # saving twice replaces, never adds

    after = MemoryThrottleStore()
    await WarmupKeeper(db, after, clock=clock).load()
    assert await after.warmup_count("127.0.0.13", "gmail", DAY) == 3
    assert await after.held_days("127.0.0.13", "gmail") == 2
    assert not await after.hold("127.0.0.13", "gmail", DAY, 9)  # today's decision is remembered
    assert await after.reserve_warmup("127.0.0.13", "gmail", DAY, 4)
    assert not await after.reserve_warmup("127.0.0.13", "gmail", DAY, 4)
    await db.close()
