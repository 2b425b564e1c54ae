"""wake_or_timeout: a wake-up, a timeout, and a cancellation that must never be lost."""

from __future__ import annotations

import asyncio

import pytest

from gateway.wakeups import wake_or_timeout


async def test_a_set_event_wakes_and_a_quiet_one_times_out() -> None:
    event = asyncio.Event()
    event.set()
    assert await wake_or_timeout(event, 5) is True
    assert await wake_or_timeout(asyncio.Event(), 0.01) is False
    assert await wake_or_timeout(asyncio.Event(), -1) is False  # a due time already past


async def test_a_cancellation_arriving_with_the_wake_up_ends_the_waiter() -> None:
    """The race asyncio.wait_for loses on Python 3.11: the event is set and the task is
    cancelled in the same loop iteration. A loop that swallowed it would outlive stop()."""
    event = asyncio.Event()

    async def loop_forever() -> None:
        while True:
            await wake_or_timeout(event, 10)
            event.clear()

    task = asyncio.create_task(loop_forever())
    await asyncio.sleep(0)  # the task is now waiting on the event
    event.set()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(2):
            await task
