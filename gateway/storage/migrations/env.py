"""Alembic environment: runs on a connection handed over by gateway.storage.migrate.

`gateway db upgrade` (and tests) open an async engine and pass its synchronous
facade in ``config.attributes["connection"]``; running `alembic` by hand with
``-x url=...`` works too.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from gateway.storage.database import create_engine
from gateway.storage.tables import metadata


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=metadata,
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


async def _run_standalone(url: str) -> None:
    engine = create_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(_run)
    await engine.dispose()


connection = context.config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    asyncio.run(_run_standalone(context.get_x_argument(as_dictionary=True)["url"]))
