"""Intake's door into the durable queue: commit, then tell the scheduler.

The 250 is sent only after ``store`` returns, and ``store`` returns only after the
group-commit transaction holding the message and its deliveries is on disk.
"""

from __future__ import annotations

import asyncio
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
    """Coalesces messages that arrive while a commit is running into the next one.

    The database writer already shares one fsync between concurrent writes; merging
    the messages into one INSERT per table also shares the per-statement cost.
    """

    def __init__(self, db: Database, bodies: BodyCache,
                 on_stored: Callable[[], None] = lambda: None,
                 on_inbound: Callable[[], None] = lambda: None) -> None:
        self.db = db
        self.bodies = bodies
        self._on_stored = on_stored
        self._on_inbound = on_inbound  # bounce processing starts at once, not at its next poll
        self._waiting: list[tuple[NewMessage, asyncio.Future[None]]] = []
        self._committer: asyncio.Task[None] | None = None

    async def store(self, message: NewMessage) -> None:
        """Durably commit; raises StorageError when nothing was stored."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((message, future))
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit_waiting(), name="spool-commit")
        await future
        self.bodies.put(message.queue_id, message.body)
        self._on_stored()

    async def _commit_waiting(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, []
            errors = await self.db.write_items(queue_store.insert_messages,
                                               [message for message, _ in batch])
            for (_, future), error in zip(batch, errors, strict=True):
                if future.done():
                    continue
                if error is None:
                    future.set_result(None)
                else:
                    future.set_exception(error)

    async def store_inbound(self, message: InboundMessage) -> None:
        await self.db.write(lambda conn: queue_store.insert_inbound(conn, message))
        self._on_inbound()
