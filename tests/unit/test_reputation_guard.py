"""The breaker task's life (gateway/feedback/reputation.py ReputationGuard.run): it ends on
cancellation wherever it waits, and an error ends only its round. No database: a stand-in
whose reads and writes block or fail on demand."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from gateway.config.policy import Reputation
from gateway.feedback.reputation import ReputationGuard
from gateway.storage.database import Database
from gateway.storage.errors import StorageError


class Stalled:
    """Reads and writes that never return (a database that hangs), or raise ``error``."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error
        self.reads = 0
        self.writes = 0
        self.waiting = asyncio.Event()

    async def read(self, op: Callable[[Any], Awaitable[Any]]) -> Any:
        self.reads += 1
        return await self._stall()

    async def write(self, op: Callable[[Any], Awaitable[Any]]) -> Any:
        self.writes += 1
        return await self._stall()

    async def _stall(self) -> Any:
        if self.error is not None:
            raise self.error
        self.waiting.set()
        await asyncio.Event().wait()


def _guard(db: Stalled, **kwargs: Any) -> ReputationGuard:
    database: Database = db  # type: ignore[assignment]  # a stand-in with read and write
    return ReputationGuard(database, Reputation, debounce=0.0, **kwargs)


async def _ends_when_cancelled(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)


async def test_cancelling_while_a_read_hangs_ends_the_task() -> None:
    db = Stalled()
    task = asyncio.create_task(_guard(db).run())
    await asyncio.wait_for(db.waiting.wait(), 5)  # the first full pass reads
    await _ends_when_cancelled(task)


async def test_cancelling_while_a_write_hangs_ends_the_task(monkeypatch: pytest.MonkeyPatch) -> None:
    db = Stalled()
    guard = _guard(db)

    async def evaluate(campaigns: object) -> list[object]:
        await guard.db.write(lambda conn: asyncio.sleep(0))
        return []

    monkeypatch.setattr(guard, "evaluate", evaluate)
    task = asyncio.create_task(guard.run())
    await asyncio.wait_for(db.waiting.wait(), 5)
    assert db.writes == 1
    await _ends_when_cancelled(task)


async def test_cancelling_as_a_note_wakes_it_ends_the_task() -> None:
    """The note and the cancellation in the same loop turn: asyncio.wait_for (3.11) lost
    the cancellation and the task ran on."""
    guard = _guard(Stalled(error=StorageError("down")), period=3600.0)
    for _ in range(10):
        task = asyncio.create_task(guard.run())
        for _ in range(5):
            await asyncio.sleep(0)  # through the failing full pass into the wait for a note
        guard.note("marketing", "spring")
        await _ends_when_cancelled(task)


async def test_an_unexpected_error_is_logged_and_the_next_round_runs(caplog: pytest.LogCaptureFixture) -> None:
    db = Stalled(error=RuntimeError("a bug"))
    guard = _guard(db, period=3600.0)
    task = asyncio.create_task(guard.run())
    with caplog.at_level(logging.ERROR, logger="gateway.feedback.reputation"):
        for _ in range(50):
            await asyncio.sleep(0)
        assert db.reads == 1 and not task.done()  # the full pass failed; the task lives on
        guard.note("marketing", "spring")
        for _ in range(50):
            await asyncio.sleep(0)
        assert db.reads == 2 and not task.done()  # and judges the next note
    assert "unexpected error" in caplog.text
    await _ends_when_cancelled(task)


async def test_a_report_about_a_campaign_has_it_judged_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    guard = _guard(Stalled(), period=3600.0)
    judged: list[object] = []

    async def evaluate(campaigns: object) -> list[object]:
        judged.append(campaigns)
        return []

    async def refresh() -> None:
        return None

    monkeypatch.setattr(guard, "evaluate", evaluate)
    monkeypatch.setattr(guard, "refresh", refresh)
    task = asyncio.create_task(guard.run())
    for _ in range(5):
        await asyncio.sleep(0)
    assert judged == [None]  # the first full pass; the next one is an hour away
    guard.reported("spring")  # a DSN or complaint committed by the inbound processor
    guard.reported("")  # mail without a campaign: nothing to pause
    for _ in range(5):
        await asyncio.sleep(0)
    assert judged == [None, {"spring"}]
    await _ends_when_cancelled(task)
