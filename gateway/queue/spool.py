"""Intake's door into the durable queue: commit, then tell the scheduler.

The 250 is sent only after ``store`` returns, and ``store`` returns only after the
group-commit transaction holding the message and its deliveries is on disk.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from gateway.records import InboundMessage, NewMessage
from gateway.storage import queue_store
from gateway.storage.database import Database


class BodyCache:
    """Recently stored bodies, so the scheduler rarely re-reads what intake just wrote."""

    def __init__(self, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._bodies: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0

    def put(self, queue_id: str, body: bytes) -> None:
        if len(body) > self.max_bytes // 4:
            return
        self._bodies[queue_id] = body
        self._bytes += len(body)
        while self._bytes > self.max_bytes:
            _, old = self._bodies.popitem(last=False)
            self._bytes -= len(old)

    def get(self, queue_id: str) -> bytes | None:
        return self._bodies.get(queue_id)

    def drop(self, queue_id: str) -> None:
        body = self._bodies.pop(queue_id, None)
        if body is not None:
            self._bytes -= len(body)


class Spool:
    def __init__(self, db: Database, bodies: BodyCache,
                 on_stored: Callable[[], None] = lambda: None) -> None:
        self.db = db
        self.bodies = bodies
        self._on_stored = on_stored

    def set_listener(self, on_stored: Callable[[], None]) -> None:
        self._on_stored = on_stored

    async def store(self, message: NewMessage) -> None:
        """Durably commit; raises StorageError when nothing was stored."""
        await self.db.write(lambda conn: queue_store.insert_message(conn, message))
        self.bodies.put(message.queue_id, message.body)
        self._on_stored()

    async def store_inbound(self, message: InboundMessage) -> None:
        await self.db.write(lambda conn: queue_store.insert_inbound(conn, message))
