"""Fixtures of the storage tests: ``db`` is a started Database on each kind of ``db_url``."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gateway.storage.database import Database


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    database = Database(db_url)
    await database.start()
    yield database
    await database.close()
