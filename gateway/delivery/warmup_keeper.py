"""Saves warm-up counters to the database now and then, and loads them at start.

Without this a restart would reset today's caps (an IP on day 1 could send its 50 messages
again after each restart) and forget held-back schedules. Up to ``interval`` seconds of sends
can be lost in a crash, which errs by at most that much traffic.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from functools import partial

from gateway.shaping.router import utc_day
from gateway.shaping.store import MemoryThrottleStore
from gateway.storage import shaping_store
from gateway.storage.database import Database
from gateway.storage.errors import StorageError

log = logging.getLogger(__name__)


class WarmupKeeper:
    def __init__(self, db: Database, store: MemoryThrottleStore, *, interval: float = 10.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.store = store
        self.interval = interval
        self.clock = clock

    async def load(self) -> None:
        day = utc_day(self.clock())
        sends, holds = await self.db.read(partial(shaping_store.load_warmup, day=day))
        self.store.restore_warmup(day, sends, holds)

    async def save(self) -> None:
        day = utc_day(self.clock())
        sends, holds = self.store.warmup_snapshot(day)
        if sends or holds:
            await self.db.write(partial(shaping_store.save_warmup, day=day, sends=sends, holds=holds))

    async def run(self) -> None:
        try:
            while True:
                await asyncio.sleep(self.interval)
                try:
                    await self.save()
                except StorageError as exc:
                    log.error("cannot save warm-up counters (will retry): %s", exc)
        finally:
            try:
                await asyncio.shield(self.save())
            except (StorageError, asyncio.CancelledError) as exc:
                log.error("warm-up counters not saved at shutdown: %s", exc)
