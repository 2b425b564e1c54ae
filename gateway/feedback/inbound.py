"""Mail that arrives for the bounce domain, handled after it is stored.

``unsubscribe+TOKEN@BOUNCE_DOMAIN`` is the mailto half of List-Unsubscribe (RFC 2369): it
does what the one-click POST does. Mail addressed only to such addresses is marked
``unsubscribed`` (or ``refused`` when no token is valid: a forged address changes
nothing). Everything else - DSNs to the VERP addresses, complaint reports - stays ``new``
for bounce processing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging

from gateway.ingest.unsubscribe import Click, unsubscribe
from gateway.rewrite.tokens import BadToken, TokenCodec
from gateway.storage import queue_store
from gateway.storage.database import Database
from gateway.storage.errors import StorageError
from gateway.storage.queue_store import InboundRow

log = logging.getLogger(__name__)
POLL_SECONDS = 2.0
UNSUBSCRIBE_PREFIX = "unsubscribe+"


def unsubscribe_tokens(recipients: tuple[str, ...], bounce_domain: str) -> list[str] | None:
    """The tokens of a message sent only to unsubscribe addresses, else None (pure)."""
    tokens = []
    for recipient in recipients:
        local, _, domain = recipient.rpartition("@")
        if domain.lower() != bounce_domain or not local.lower().startswith(UNSUBSCRIBE_PREFIX):
            return None
        tokens.append(local[len(UNSUBSCRIBE_PREFIX):])
    return tokens or None


class InboundProcessor:
    def __init__(self, db: Database, codec: TokenCodec, bounce_domain: str, *,
                 poll: float = POLL_SECONDS) -> None:
        self.db = db
        self.codec = codec
        self.bounce_domain = bounce_domain
        self.poll = poll
        self._wake = asyncio.Event()
        self._left: set[int] = set()  # unsubscribe mail that also went elsewhere: for bounce processing

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                while await self.process_new():
                    pass  # a full page: there may be more
            except StorageError as exc:
                log.error("cannot process inbound mail: %s", exc)
            except Exception:  # keep the task alive; the row is tried again on the next poll
                log.exception("unexpected error processing inbound mail")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll)

    async def process_new(self) -> int:
        """Handle the unsubscribe mail waiting; returns how many messages were handled."""
        rows = await self.db.read(functools.partial(
            queue_store.new_inbound, recipients_like=f"%{UNSUBSCRIBE_PREFIX}%", skip=sorted(self._left)))
        handled = 0
        for row in rows:
            tokens = unsubscribe_tokens(row.recipients, self.bounce_domain)
            if tokens is None:
                self._left.add(row.id)
                continue
            try:
                state = await self._unsubscribe(row, tokens)
            except StorageError as exc:
                log.error("inbound %d: unsubscribe could not be recorded: %s", row.id, exc)
                state = "failed"
            await self.db.write(functools.partial(queue_store.mark_inbound, ids=[row.id], state=state))
            handled += 1
        return handled

    async def _unsubscribe(self, row: InboundRow, tokens: list[str]) -> str:
        state = "refused"
        for token in tokens:
            try:
                click = Click("mailto", row.client_ip, None, row.received_at)
                await unsubscribe(self.db, self.codec, token, click)
                state = "unsubscribed"
            except BadToken:
                log.info("inbound %d: unsubscribe address with an invalid token, ignored", row.id)
        return state
