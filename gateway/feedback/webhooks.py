"""Events POSTed to webhooks: durable, signed, retried, in order per recipient.

Every delivered, deferred, bounced, expired, suppressed, refused, complained and
unsubscribed event is first a row of the ``events`` table, written in the transaction
that made it happen. For each configured webhook the dispatcher follows that table with
a cursor and copies the events it wants into ``webhook_outbox`` (cursor and copies in one
transaction), then POSTs the outbox: an item is deleted once the receiver answered 2xx,
and retried with exponential back-off otherwise. Only the oldest waiting item of each
recipient is ever in flight, so one person's events arrive in the order they happened;
different people's events do not wait for each other. Nothing lives only in memory: a
restart resumes from the cursor and the outbox. Delivery is at least once - a receiver
that answered but whose answer was not yet recorded sees the event again - so receivers
deduplicate by the ``id`` in the body.

The signature header lets a receiver check that the body came from this gateway and is
fresh::

    X-Gateway-Signature: t=UNIX_TIME,v1=HEX(HMAC-SHA256(secret, "UNIX_TIME." + body))
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial

import httpx
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway import metrics
from gateway.config.schema import Webhook
from gateway.signing.token_keys import read_secret
from gateway.storage import feedback_store
from gateway.storage.database import Database
from gateway.storage.errors import StorageError
from gateway.storage.feedback_store import OutboxItem
from gateway.wakeups import wake_or_timeout

log = logging.getLogger(__name__)
SIGNATURE_HEADER = "X-Gateway-Signature"
POLL_SECONDS = 1.0
SEND_BATCH = 50
FEED_BATCH = 500
# An id missing from the events table may belong to a transaction that has not committed
# yet (PostgreSQL hands out ids before commit); after this long it is taken to be a
# rolled-back one and skipped - logged and counted, see docs/feedback.md for the limits.
GAP_GRACE_SECONDS = 60.0
LEASE_MARGIN_SECONDS = 30.0  # a claimed item is someone else's to send after its timeout and this


def signature(secret: bytes, timestamp: int, body: bytes) -> str:
    """The X-Gateway-Signature value for ``body`` sent at ``timestamp`` (pure)."""
    mac = hmac.new(secret, str(timestamp).encode("ascii") + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def backoff(attempts: int, low: float, high: float) -> timedelta:
    """The wait after ``attempts`` failed tries: low, 2*low, 4*low ... capped at high (pure)."""
    return timedelta(seconds=min(high, low * 2 ** min(max(attempts - 1, 0), 32)))


@dataclass(frozen=True)
class Settle:
    limit: int  # the cursor may move up to this id (never past ids not yet checked for gaps)
    skipped: tuple[int, ...] = ()  # missing ids older than the grace period, now given up


def settled_limit(cursor: int, ids: Sequence[int], now: float, gaps: dict[int, float]) -> Settle:
    """How far the cursor may move over ``ids`` (the event ids after it, ascending, not
    empty): up to the first missing id that is still young, else to the last id read (pure;
    ``gaps`` remembers when each missing id was first seen)."""
    skipped: list[int] = []
    expected = cursor + 1
    for event_id in ids:
        for missing in range(expected, event_id):
            first_seen = gaps.setdefault(missing, now)
            if now - first_seen < GAP_GRACE_SECONDS:
                return Settle(missing - 1, tuple(skipped))
            skipped.append(missing)
        expected = event_id + 1
    return Settle(ids[-1], tuple(skipped))


def give_up(item: OutboxItem, now: datetime, max_attempts: int, max_age: float) -> bool:
    """Whether a failing item is parked instead of retried (pure): after ``max_attempts``
    tries, or once it has waited ``max_age`` seconds since it was queued."""
    return item.attempts + 1 >= max_attempts or (now - item.created_at).total_seconds() >= max_age


@dataclass(frozen=True)
class Endpoint:
    name: str
    url: str
    secret: bytes
    events: frozenset[str]
    timeout: float
    retry_min: float
    retry_max: float
    max_attempts: int = 50
    max_age: float = 86400.0
    from_start: bool = False  # a new webhook gets the events already stored, not only later ones

    @classmethod
    def from_settings(cls, hook: Webhook) -> Endpoint:
        """Reads the secret (owner-only file, 32+ bytes: raises KeyProblem otherwise)."""
        return cls(hook.name, hook.url, read_secret(hook.secret_file), frozenset(hook.events), hook.timeout,
                   hook.retry_min, hook.retry_max, hook.max_attempts, hook.max_age, hook.start == "start")


def _utcnow() -> datetime:
    return datetime.now(UTC)


class WebhookDispatcher:
    def __init__(self, db: Database, endpoints: Sequence[Endpoint], *, poll: float = POLL_SECONDS,
                 clock: Callable[[], datetime] = _utcnow,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.db = db
        self.endpoints = list(endpoints)
        self.poll = poll
        self.clock = clock
        self._client = httpx.AsyncClient(transport=transport, follow_redirects=False,
                                         headers={"User-Agent": "smtp-gateway-webhooks/1"})
        self._gaps: dict[str, dict[int, float]] = {endpoint.name: {} for endpoint in self.endpoints}
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        try:
            await self._start_cursors()
            while True:
                busy = False
                for endpoint in self.endpoints:
                    try:
                        busy |= await self._round(endpoint)
                    except StorageError as exc:
                        log.error("webhook %s: %s", endpoint.name, exc)
                with contextlib.suppress(StorageError):
                    metrics.WEBHOOK_BACKLOG.set(await self.db.read(feedback_store.backlog))
                if not busy:
                    self._wake.clear()
                    await wake_or_timeout(self._wake, self.poll)
        finally:
            await self._client.aclose()

    async def _start_cursors(self) -> None:
        """Fix where each new webhook starts, before any event written after startup."""
        for endpoint in self.endpoints:
            while True:
                try:
                    await self.db.write(partial(feedback_store.ensure_cursor, webhook=endpoint.name,
                                                from_start=endpoint.from_start))
                    break
                except StorageError as exc:
                    log.error("webhook %s: %s", endpoint.name, exc)
                    await asyncio.sleep(self.poll)

    async def _round(self, endpoint: Endpoint) -> bool:
        """Feed the outbox and send what is due; True when there may be more to do now."""
        fed = await self._feed(endpoint)
        now = self.clock()
        lease = now + timedelta(seconds=endpoint.timeout + LEASE_MARGIN_SECONDS)
        due = await self.db.write(partial(feedback_store.claim_items, webhook=endpoint.name, now=now,
                                          lease_until=lease, limit=SEND_BATCH))
        if not due:
            return fed == FEED_BATCH
        results = await asyncio.gather(*(self._post(endpoint, item) for item in due))
        await self._settle(endpoint, due, results)
        return fed == FEED_BATCH or (len(due) == SEND_BATCH and all(r is None for r in results))

    async def _feed(self, endpoint: Endpoint) -> int:
        cursor = await self.db.read(partial(feedback_store.cursor_of, webhook=endpoint.name))
        ids = await self.db.read(partial(feedback_store.event_ids_after, after=cursor, limit=FEED_BATCH))
        if not ids:
            return 0
        settle = settled_limit(cursor, ids, time.monotonic(), self._gaps[endpoint.name])
        if settle.skipped:
            metrics.WEBHOOK_SKIPPED_IDS.labels(endpoint.name).inc(len(settle.skipped))
            log.warning("webhook %s: event ids %s never appeared within %.0f s; taken as rolled back",
                        endpoint.name, _ranges(settle.skipped), GAP_GRACE_SECONDS)
        self._gaps[endpoint.name] = {k: v for k, v in self._gaps[endpoint.name].items() if k > settle.limit}
        return await self.db.write(partial(feedback_store.feed_outbox, webhook=endpoint.name,
                                           kinds=endpoint.events, now=self.clock(), limit=FEED_BATCH,
                                           settle=settle.limit, from_start=endpoint.from_start))

    async def _post(self, endpoint: Endpoint, item: OutboxItem) -> str | None:
        """None when the receiver took it, else why not."""
        body = item.payload.encode("utf-8")
        headers = {"Content-Type": "application/json", "X-Gateway-Event-Id": str(item.event_id),
                   SIGNATURE_HEADER: signature(endpoint.secret, int(time.time()), body)}
        try:
            async with asyncio.timeout(endpoint.timeout):  # the whole request, not each phase
                response = await self._client.post(endpoint.url, content=body, headers=headers,
                                                   timeout=endpoint.timeout)
        except TimeoutError:
            return f"no answer within {endpoint.timeout:g} s"
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"[:300]
        if 200 <= response.status_code < 300:
            return None
        return f"HTTP {response.status_code}"

    async def _settle(self, endpoint: Endpoint, items: Sequence[OutboxItem],
                      results: Sequence[str | None]) -> None:
        now = self.clock()
        done = [item.id for item, error in zip(items, results, strict=True) if error is None]
        failures = [(item, error) for item, error in zip(items, results, strict=True) if error is not None]
        metrics.WEBHOOK_DELIVERIES.labels("ok").inc(len(done))
        metrics.WEBHOOK_DELIVERIES.labels("failed").inc(len(failures))
        for item, error in failures[:1]:
            log.warning("webhook %s: event %d not taken (%s); %d failing now, retrying with back-off",
                        endpoint.name, item.event_id, error, len(failures))

        parked = [(item, error) for item, error in failures
                  if give_up(item, now, endpoint.max_attempts, endpoint.max_age)]
        for item, error in parked:
            log.error("webhook %s: event %d parked after %d attempts (%s); later events of its recipient "
                      "go on", endpoint.name, item.event_id, item.attempts + 1, error)
        metrics.WEBHOOK_PARKED.labels(endpoint.name).inc(len(parked))
        parked_ids = {item.id for item, _ in parked}

        async def write(conn: AsyncConnection) -> None:
            await feedback_store.sent(conn, done)
            for item, error in failures:
                if item.id in parked_ids:
                    await feedback_store.park(conn, item.id, error)
                    continue
                wait = backoff(item.attempts + 1, endpoint.retry_min, endpoint.retry_max)
                await feedback_store.failed(conn, item.id, now + wait, error)

        await self.db.write(write)


def _ranges(ids: Sequence[int]) -> str:
    shown = ", ".join(str(i) for i in ids[:10])
    return shown + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")
