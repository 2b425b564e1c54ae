"""Counts of copies finished without an attempt move only when their transaction commits."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.records import NewMessage, new_queue_id
from gateway.storage import queue_store, tally
from gateway.storage.database import Database
from gateway.storage.errors import StorageError

T0 = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)


def _suppressed(reason: str) -> float:
    return REGISTRY.get_sample_value("gateway_recipients_suppressed_total", {"reason": reason}) or 0.0


def _expired() -> float:
    return REGISTRY.get_sample_value("gateway_deliveries_total", {"result": "expired"}) or 0.0


async def test_counts_follow_commits_rollbacks_and_savepoints(db_url: str) -> None:
    db = Database(db_url)
    await db.start()
    before = _suppressed("complaint")

    async def rolled_back(conn: AsyncConnection) -> None:
        tally.count_suppressed(conn, "suppressed: complaint", 5)
        raise RuntimeError("boom")

    with pytest.raises(StorageError):
        await db.write(rolled_back)
    assert _suppressed("complaint") == before

    async def with_savepoints(conn: AsyncConnection) -> None:
        tally.count_suppressed(conn, "suppressed: complaint", 1)
        with pytest.raises(RuntimeError):
            async with conn.begin_nested():
                tally.count_suppressed(conn, "suppressed: complaint", 10)
                async with conn.begin_nested():
                    tally.count_suppressed(conn, "suppressed: complaint", 100)
                raise RuntimeError("savepoint rolled back")
        async with conn.begin_nested():
            tally.count_suppressed(conn, "suppressed: complaint", 2)

    await db.write(with_savepoints)
    await db.close()
    assert _suppressed("complaint") == before + 3


async def test_purge_and_dropped_copies_are_counted_with_bounded_reasons(db_url: str) -> None:
    db = Database(db_url)
    await db.start()
    message = NewMessage(queue_id=new_queue_id(T0), received_at=T0, mail_from="s@example.com",
                         recipients=("gone@one.example", "x@two.example", "y@two.example"), body=b"hi\r\n",
                         client_ip="127.0.0.1", helo="c")
    await db.write(lambda c: queue_store.insert_messages(c, [message]))
    hard, odd, expired = _suppressed("hard-bounce"), _suppressed("other"), _expired()
    await db.write(lambda c: queue_store.drop_pending_to(c, "Gone@one.example", "suppressed: hard-bounce", T0))
    await db.write(lambda c: queue_store.drop_pending_to(c, "x@two.example", "suppressed: made-up words", T0))
    assert await db.write(lambda c: queue_store.purge(c, T0)) == 1
    await db.close()
    assert (_suppressed("hard-bounce"), _suppressed("other"), _expired()) == (hard + 1, odd + 1, expired + 1)
