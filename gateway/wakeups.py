"""Waiting for a wake-up or a timeout without losing a cancellation.

On Python 3.11, ``asyncio.wait_for`` returns the inner result when the inner awaitable
finishes just as the waiting task is cancelled, and the cancellation is lost (fixed in 3.12,
whose ``wait_for`` is built on ``asyncio.timeout``). A background loop that loses it keeps
running, and ``Gateway.stop()``, which cancels the loop and waits for it, waits forever. The
gateway's loops therefore wait with ``asyncio.timeout``, which counts cancellations.
"""

from __future__ import annotations

import asyncio


async def wake_or_timeout(event: asyncio.Event, seconds: float) -> bool:
    """Wait until ``event`` is set (True) or ``seconds`` have passed (False)."""
    try:
        async with asyncio.timeout(max(0.0, seconds)):
            await event.wait()
    except TimeoutError:
        return False
    return True
