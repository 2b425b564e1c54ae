"""The thin I/O around the rules: read the records for a batch of recipients, decide each.

One read transaction gathers every recipient's suppressions, consent and last send with
a handful of indexed queries (SQLAlchemy's asyncio API: the event loop never waits on the
database); the decisions themselves are the pure rules of :mod:`gateway.ingest.rules`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from gateway.ingest.addresses import address_hash
from gateway.ingest.rules import (
    ANY_STREAM_RULES,
    DEFAULT_ACTIONS,
    DEFAULT_ROLE_LOCAL_PARTS,
    MARKETING_RULES,
    Action,
    Facts,
    ListInfo,
    Refusal,
    Rule,
    decide,
    is_role_account,
    rules_for,
)
from gateway.rewrite.message import Controls
from gateway.storage import consent_store, queue_store
from gateway.storage.consent_store import RecipientRecords
from gateway.storage.database import Database
from gateway.storage.errors import StorageError

log = logging.getLogger(__name__)
LIST_TTL = 2.0
Scope = tuple[str, str]  # (list key, campaign): what a batch of record lookups shares


@dataclass(frozen=True)
class Verdict:
    """A refused recipient: why, and whether the sender hears of it (reject) or not (drop)."""

    refusal: Refusal
    action: Action


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Gate:
    def __init__(self, db: Database, *, actions: Mapping[str, Action] = DEFAULT_ACTIONS,
                 role_local_parts: frozenset[str] = DEFAULT_ROLE_LOCAL_PARTS,
                 clock: Callable[[], datetime] = _utcnow) -> None:
        self.db = db
        self.actions = actions
        self.role_local_parts = role_local_parts
        self.clock = clock
        self._refusal_writes: set[asyncio.Task[None]] = set()
        self._lists: dict[str, tuple[float, ListInfo | None]] = {}
        self._waiting: dict[Scope, dict[str, list[asyncio.Future[RecipientRecords]]]] = {}
        self._lookups: dict[Scope, asyncio.Task[None]] = {}

    async def _records(self, hashes: list[str], scope: Scope) -> dict[str, RecipientRecords]:
        """Records for ``hashes``, read together with what other sessions ask at the same time.

        Like the spool's group commit, for reads: while one lookup for a (list, campaign) is
        running, the hashes asked for meanwhile wait and go in the next one. Twenty sessions
        sending RCPTs (or one campaign's messages) then cost one round trip to the database
        instead of twenty.
        """
        loop = asyncio.get_running_loop()
        waiting = self._waiting.setdefault(scope, {})
        futures = []
        for digest in hashes:
            future: asyncio.Future[RecipientRecords] = loop.create_future()
            waiting.setdefault(digest, []).append(future)
            futures.append(future)
        lookup = self._lookups.get(scope)
        if lookup is None or lookup.done():
            self._lookups[scope] = asyncio.create_task(self._look_up(scope), name="consent-lookup")
        return dict(zip(hashes, await asyncio.gather(*futures), strict=True))

    async def _look_up(self, scope: Scope) -> None:
        try:
            await self._look_up_batches(scope)
        finally:
            self._lookups.pop(scope, None)  # campaigns come and go: keep no entry per campaign

    async def _look_up_batches(self, scope: Scope) -> None:
        while self._waiting.get(scope):
            batch = self._waiting.pop(scope)
            try:
                hashes = list(batch)
                found = await self.db.read(
                    lambda conn: consent_store.records_for(conn, hashes, *scope))  # noqa: B023
            except Exception as exc:  # every waiting session gets it (StorageError, usually)
                for futures in batch.values():
                    for future in futures:
                        if not future.done():
                            future.set_exception(exc)
                continue
            for digest, futures in batch.items():
                for future in futures:
                    if not future.done():
                        future.set_result(found[digest])

    async def _list_info(self, key: str) -> ListInfo | None:
        """Lists change rarely and every marketing decision needs one: kept LIST_TTL seconds,
        so a list added with the CLI or the API is known to a running gateway that soon."""
        now = time.monotonic()
        cached = self._lists.get(key)
        if cached is not None and now - cached[0] < LIST_TTL:
            return cached[1]
        info = await self.db.read(lambda conn: consent_store.list_info(conn, key))
        if info is None:  # not remembered: a list created a moment later must be found at once
            return None
        if len(self._lists) > 1000:
            self._lists.clear()
        self._lists[key] = (now, info)
        return info

    def remember_refusals(self, refusals: Sequence[tuple[str, str]]) -> None:
        """Record (recipient, reply) refusals for `gateway trace`, without holding up the
        reply: nothing was accepted, so nothing depends on this write being durable first."""
        now = self.clock()
        rows = [(now, recipient, reply) for recipient, reply in refusals]
        task = asyncio.create_task(self._write_refusals(rows), name="record-refusals")
        self._refusal_writes.add(task)
        task.add_done_callback(self._refusal_writes.discard)

    async def _write_refusals(self, rows: list[tuple[datetime, str, str]]) -> None:
        try:
            await self.db.write(lambda conn: queue_store.record_refusals(conn, rows))
        except StorageError as exc:
            log.warning("could not record %d refusals for trace: %s", len(rows), exc)

    async def at_rcpt(self, recipient: str, pinned: Controls | None) -> Verdict | None:
        """Suppressions that hold for any mail; all marketing rules when a list is pinned."""
        if pinned is not None and pinned.stream == "marketing" and pinned.list_key:
            verdicts = await self.check([recipient], pinned, MARKETING_RULES)
        else:
            verdicts = await self.check([recipient], Controls("transactional"), ANY_STREAM_RULES)
        return verdicts.get(recipient)

    async def at_data(self, recipients: Sequence[str], controls: Controls) -> dict[str, Verdict]:
        return await self.check(recipients, controls, rules_for(controls.stream))

    async def check(self, recipients: Sequence[str], controls: Controls,
                    rules: Sequence[Rule]) -> dict[str, Verdict]:
        """The refused ones among ``recipients``, each with its verdict."""
        hashes = {recipient: address_hash(recipient) for recipient in recipients}
        now = self.clock()

        info = await self._list_info(controls.list_key) if controls.list_key else None
        records = await self._records(sorted(set(hashes.values())), (controls.list_key, controls.campaign))
        verdicts: dict[str, Verdict] = {}
        for recipient in recipients:
            found = records[hashes[recipient]]
            facts = Facts(recipient=recipient, now=now, stream=controls.stream, list_key=controls.list_key,
                          campaign=controls.campaign, suppressions=found.suppressions,
                          role_account=is_role_account(recipient, self.role_local_parts), list_info=info,
                          consent=found.consent, last_sent_at=found.last_sent_at)
            refusal = decide(facts, rules)
            if refusal is not None:
                verdicts[recipient] = Verdict(refusal, self.actions.get(refusal.reason, "reject"))
        return verdicts
