"""Counters that follow the transaction: storage notes what a transaction finished, and the
metrics move only once it is committed.

Copies finished without an attempt (suppressed after intake, purged) are decided inside a
transaction that may still roll back, retry alone after a failed group commit, or lose a
savepoint. Counting them at once would break the accounting identity of
docs/operations.md; so the counts wait on the connection (``Connection.info``) in one frame
per open savepoint:

- a savepoint opens a frame; releasing it merges the frame into its parent, rolling it back
  drops it;
- a rollback (or a new transaction on a connection whose last one was never settled) drops
  them all;
- ``settle(conn)``, called by whoever committed (``Database`` after each group commit, the
  CLI after its own transaction), adds them to the metrics.

SQLAlchemy's ``commit`` event fires before the database has committed, so it cannot be the
trigger: a commit that fails would already have been counted.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway import metrics
from gateway.ingest.rules import REASONS

_KEY = "gateway.tally"
Frames = list[Counter[tuple[str, str]]]  # the transaction's counts, then one per open savepoint
_SUPPRESSED, _EXPIRED = "suppressed", "expired"
OTHER_REASON = "other"


def suppression_label(reason: str) -> str:
    """The bounded ``reason`` label of a suppressed copy's reply ("suppressed: hard-bounce")."""
    bare = reason.removeprefix("suppressed:").strip()
    return bare if bare in REASONS else OTHER_REASON


def count_suppressed(conn: AsyncConnection, reason: str, copies: int = 1) -> None:
    """``copies`` recipients finished as suppressed after intake, once this commits."""
    _note(conn, (_SUPPRESSED, suppression_label(reason)), copies)


def count_expired(conn: AsyncConnection, copies: int) -> None:
    """``copies`` deliveries given up without an attempt (purged), once this commits."""
    _note(conn, (_EXPIRED, ""), copies)


def settle(conn: AsyncConnection) -> None:
    """The transaction committed: add what it noted to the metrics."""
    frames = _take(conn.sync_connection.info if conn.sync_connection is not None else {})
    total: Counter[tuple[str, str]] = Counter()
    for counts in frames:
        total.update(counts)
    for (kind, label), copies in total.items():
        if kind == _SUPPRESSED:
            metrics.RECIPIENTS_SUPPRESSED.labels(label).inc(copies)
        else:
            metrics.DELIVERIES.labels("expired").inc(copies)


def install(engine: AsyncEngine) -> None:
    """Follow savepoints and rollbacks on every connection of ``engine``."""
    sync = engine.sync_engine
    event.listen(sync, "begin", _forget)
    event.listen(sync, "rollback", _forget)
    event.listen(sync, "savepoint", _open_savepoint)
    event.listen(sync, "release_savepoint", _release_savepoint)
    event.listen(sync, "rollback_savepoint", _rollback_savepoint)


def _note(conn: AsyncConnection, key: tuple[str, str], copies: int) -> None:
    if copies <= 0:
        return
    frames: Frames = conn.info.setdefault(_KEY, [])
    if not frames:
        frames.append(Counter())
    frames[-1][key] += copies


def _take(info: dict[Any, Any]) -> Frames:
    frames: Frames = info.pop(_KEY, [])
    return frames


def _forget(conn: Connection) -> None:
    _take(conn.info)


def _open_savepoint(conn: Connection, name: str | None) -> None:
    # The event comes before SQLAlchemy names the savepoint: frames are matched by nesting
    # (savepoints open and close last-in first-out), not by name.
    frames: Frames = conn.info.setdefault(_KEY, [])
    if not frames:
        frames.append(Counter())
    frames.append(Counter())


def _release_savepoint(conn: Connection, name: str, context: Any) -> None:
    frames: Frames = conn.info.get(_KEY, [])
    if len(frames) > 1:
        frames[-2].update(frames.pop())


def _rollback_savepoint(conn: Connection, name: str, context: Any) -> None:
    frames: Frames = conn.info.get(_KEY, [])
    if len(frames) > 1:
        frames.pop()
