"""Engine set-up and group commit.

Durability costs one fsync per transaction (SQLite WAL with synchronous=FULL, or a
PostgreSQL commit). Writes from many SMTP sessions and delivery workers are queued
to one writer task that runs whatever is pending in a single transaction, so the
fsync is shared: under load a commit covers dozens of messages, at idle it covers
one with no added delay.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from sqlalchemy import Table, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from gateway import metrics
from gateway.storage import tally
from gateway.storage.errors import StorageError

log = logging.getLogger(__name__)

T = TypeVar("T")
ItemT = TypeVar("ItemT")
WriteOp = Callable[[AsyncConnection], Awaitable[T]]

MAX_BATCH = 256


def async_url(url: str) -> str:
    """Map the operator's URL (sqlite:///..., postgresql://...) to an asyncio driver."""
    parsed = make_url(url)
    driver = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}.get(
        parsed.drivername, parsed.drivername
    )
    return parsed.set(drivername=driver).render_as_string(hide_password=False)


def sqlite_path(url: str) -> Path | None:
    parsed = make_url(url)
    if not parsed.drivername.startswith("sqlite") or not parsed.database:
        return None
    return None if parsed.database == ":memory:" else Path(parsed.database)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    for pragma in ("journal_mode=WAL", "synchronous=FULL", "busy_timeout=10000",
                   "foreign_keys=ON"):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def upsert(conn: AsyncConnection, table: Table) -> Any:
    """INSERT ... ON CONFLICT for the connection's dialect (both speak the same clause)."""
    return postgresql.insert(table) if conn.dialect.name == "postgresql" else sqlite.insert(table)


def create_engine(url: str) -> AsyncEngine:
    path = sqlite_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    # Intake reads (consent checks) run once per RCPT from many sessions at a time: a pool too
    # small for them would open and close a connection (a thread, for aiosqlite) per read.
    engine = create_async_engine(async_url(url), pool_pre_ping=path is None, pool_size=20, max_overflow=20)
    if engine.dialect.name == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    tally.install(engine)
    return engine


@dataclass
class _Pending(Generic[T]):
    op: WriteOp[T]
    future: asyncio.Future[T]


class Database:
    """The engine plus the group-commit writer; start() before write(), close() at exit."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = create_engine(url)
        self._pending: asyncio.Queue[_Pending[Any]] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    async def start(self) -> None:
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_loop(), name="db-writer")

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
            self._writer = None
        await self.engine.dispose()

    async def write(self, op: WriteOp[T]) -> T:
        """Run ``op`` inside a shared transaction; return once it is durably committed."""
        if self._writer is None:
            raise StorageError("database writer is not running")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending.put_nowait(_Pending(op, future))
        return await future

    async def write_items(self, op: Callable[[AsyncConnection, Sequence[ItemT]], Awaitable[object]],
                          items: Sequence[ItemT]) -> list[StorageError | None]:
        """Write ``items`` with one statement set and one commit; if that fails, each alone.

        One bad item then fails alone: the result lists, per item, None (committed) or the
        error that kept it out.
        """
        try:
            await self.write(_bound(op, items))
            return [None] * len(items)
        except StorageError as exc:
            if len(items) == 1:
                return [exc]
        results: list[StorageError | None] = []
        for item in items:
            try:
                await self.write(_bound(op, (item,)))
            except StorageError as exc:
                results.append(exc)
            else:
                results.append(None)
        return results

    async def read(self, op: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        try:
            async with self.engine.connect() as conn:
                return await op(conn)
        except SQLAlchemyError as exc:
            _cancelled_underneath(exc)
            raise StorageError(f"database read failed: {_short(exc)}") from exc

    async def _write_loop(self) -> None:
        while True:
            batch = [await self._pending.get()]
            while len(batch) < MAX_BATCH and not self._pending.empty():
                batch.append(self._pending.get_nowait())
            try:
                # A pooled connection per batch: a database restart costs one failed batch.
                async with self.engine.connect() as conn:
                    await self._commit_batch(conn, batch)
            except Exception as exc:
                log.error("database unavailable: %s", _short(exc))
                for item in batch:
                    _settle_error(item.future, exc)

    async def _commit_batch(self, conn: AsyncConnection, batch: list[_Pending[Any]]) -> None:
        live = [item for item in batch if not item.future.cancelled()]
        if not live:
            return
        try:
            results = await self._run_in_transaction(conn, [item.op for item in live])
        except Exception as exc:
            metrics.STORAGE_COMMITS.labels("failed").inc()
            if len(live) == 1:
                _settle_error(live[0].future, exc)
                return
            # One bad operation must not fail its neighbours: retry each on its own.
            log.warning("group commit of %d writes failed (%s); retrying one by one",
                        len(live), _short(exc))
            for item in live:
                await self._commit_batch(conn, [item])
            return
        metrics.STORAGE_COMMITS.labels("ok").inc()
        metrics.STORAGE_BATCH_SIZE.observe(len(live))
        for item, result in zip(live, results, strict=True):
            if not item.future.done():
                item.future.set_result(result)

    @staticmethod
    async def _run_in_transaction(conn: AsyncConnection, ops: list[WriteOp[Any]]) -> list[Any]:
        async with conn.begin():  # rolls back on any exception
            results = [await op(conn) for op in ops]
        tally.settle(conn)  # committed: what the writes finished now counts
        return results


def _cancelled_underneath(exc: SQLAlchemyError) -> None:
    """A task cancelled in the middle of a query (Gateway.stop()) can see SQLAlchemy's error
    from closing the interrupted connection ("Can't reconnect until invalid transaction is
    rolled back") instead of its CancelledError. Turned into a StorageError, the cancellation
    would be lost: the background loops catch StorageError and go on, and stop() then waits
    for them forever. So the cancellation wins."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError() from exc


def _bound(op: Callable[[AsyncConnection, Sequence[ItemT]], Awaitable[object]],
           chunk: Sequence[ItemT]) -> WriteOp[object]:
    async def run(conn: AsyncConnection) -> object:
        return await op(conn, chunk)
    return run


def _settle_error(future: asyncio.Future[Any], exc: BaseException) -> None:
    if future.done():
        return
    if isinstance(exc, StorageError):
        future.set_exception(exc)
    else:
        error = StorageError(f"database write failed: {_short(exc)}")
        error.__cause__ = exc
        future.set_exception(error)


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]
