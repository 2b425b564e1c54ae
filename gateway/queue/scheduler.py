"""Claims due deliveries, hands them to the delivery agent, and records outcomes.

Crash safety: a claim is a lease (``claimed_by`` + ``lease_until``) written before
the attempt; the outcome is written after it. A node killed in between leaves
leases that it releases itself at its next start (same node name) or that expire
for any other node. So every acknowledged message is attempted again until an
outcome is recorded: at-least-once, with a duplicate only when the remote side
had already answered 250 and the outcome was not yet committed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from functools import partial

from gateway import metrics
from gateway.feedback.softbounce import SoftBounceRule
from gateway.feedback.verdicts import Verdict
from gateway.queue.retry import RetrySchedule
from gateway.queue.spool import BodyCache
from gateway.records import (
    QUEUE_STATES,
    AttemptResult,
    ClaimedDelivery,
    DeliveryState,
    Outcome,
)
from gateway.shaping.outcomes import POSTPONED, ShapedResult
from gateway.storage import queue_store, shaping_store
from gateway.storage.database import Database
from gateway.storage.errors import StorageError
from gateway.storage.queue_store import DEFAULT_SOFT_RULE
from gateway.wakeups import wake_or_timeout

log = logging.getLogger(__name__)

Deliver = Callable[[ClaimedDelivery, bytes], Awaitable[AttemptResult]]
Clock = Callable[[], datetime]
Classify = Callable[[AttemptResult], Verdict | None]

LEASE = timedelta(minutes=15)
POLL_INTERVAL = 1.0
CLAIM_BATCH = 200


def utcnow() -> datetime:
    return datetime.now(UTC)


def no_verdict(result: AttemptResult) -> Verdict | None:
    return None


def outcome_for(claim: ClaimedDelivery, result: AttemptResult, retry: RetrySchedule,
                now: datetime, classify: Classify = no_verdict) -> Outcome:
    """The state an attempt leads to (pure): delivered, bounced, deferred or expired.

    A failed attempt's reply also gets the bounce classifier's verdict, which storage
    records in the same transaction (a hard bounce suppresses the address at once).
    """
    if isinstance(result, ShapedResult) and result.kind == POSTPONED:
        return _postponed(claim, result, retry, now)
    state, next_at, reply = DeliveryState.DEFERRED, None, result.reply
    if result.kind == "delivered":
        state = DeliveryState.DELIVERED
    elif result.kind == "permanent":
        state = DeliveryState.BOUNCED
    else:
        next_at = retry.next_attempt(attempts_done=claim.attempts + 1,
                                     received_at=claim.received_at, now=now)
        if next_at is None:
            state = DeliveryState.EXPIRED
            reply = f"gave up after {claim.attempts + 1} attempts: {result.reply}"
    verdict = None if state is DeliveryState.DELIVERED else classify(result)
    return Outcome(delivery_id=claim.delivery_id, queue_id=claim.queue_id,
                   recipient=claim.recipient, state=state, reply=reply, at=now,
                   next_attempt_at=next_at, remote=result.remote, source_ip=result.source_ip,
                   verdict=verdict, provider=_provider_of(result))


def _provider_of(result: AttemptResult) -> str:
    return result.provider if isinstance(result, ShapedResult) else ""


def _postponed(claim: ClaimedDelivery, result: ShapedResult, retry: RetrySchedule,
               now: datetime) -> Outcome:
    """Shaping held the delivery back without an attempt (warm-up cap, suspended IPs, paused
    provider, backlog): it stays pending, due at ``postpone_until``, with no attempt counted.
    The outcome says so with state QUEUED, which storage applies as a postponement. The due
    time never passes the provider's ``max_queue_age``; at that age the delivery expires like
    a failing one would."""
    expires_at = claim.received_at + timedelta(seconds=retry.max_age)
    if now >= expires_at:
        return Outcome(delivery_id=claim.delivery_id, queue_id=claim.queue_id,
                       recipient=claim.recipient, state=DeliveryState.EXPIRED,
                       reply=f"expired while held back by shaping: {result.reply}", at=now,
                       source_ip=result.source_ip, provider=result.provider)
    until = min(max(result.postpone_until or now, now), expires_at)
    return Outcome(delivery_id=claim.delivery_id, queue_id=claim.queue_id, recipient=claim.recipient,
                   state=DeliveryState.QUEUED, reply=result.reply, at=now,
                   next_attempt_at=until, source_ip=result.source_ip, provider=result.provider)


STREAM_PRIORITY = {"transactional": 0, "marketing": 1}


class Scheduler:
    def __init__(self, db: Database, bodies: BodyCache, deliver: Deliver, *,
                 retry_for: Callable[[str], RetrySchedule], node: str, max_in_flight: int = 500,
                 clock: Clock = utcnow, classify: Classify = no_verdict,
                 soft_rule: SoftBounceRule = DEFAULT_SOFT_RULE) -> None:
        self.db = db
        self.bodies = bodies
        self.deliver = deliver
        # The retry schedule of a provider profile ("": a delivery that was never routed).
        self.retry_for = retry_for
        self.node = node
        self.max_in_flight = max_in_flight
        self.clock = clock
        self.classify = classify
        self.soft_rule = soft_rule  # when soft bounces add up to a suppression (issue 8)
        self._wake = asyncio.Event()
        self._slot_free = asyncio.Event()
        self._in_flight: dict[asyncio.Task[None], int] = {}  # task -> delivery id
        self._outcomes: list[Outcome] = []
        self._outcomes_ready = asyncio.Event()
        self._stopping = False

    def wake(self) -> None:
        self._wake.set()

    async def prepare(self) -> None:
        """Release this node's leases from before a restart; raises StorageError if it cannot."""
        released = await self.db.write(lambda c: queue_store.release_claims(c, self.node))
        if released:
            log.info("released %d deliveries leased by %s before a restart", released, self.node)

    async def run(self) -> None:
        writer = asyncio.create_task(self._write_outcomes(), name="outcome-writer")
        helpers = [asyncio.create_task(self._report_queue(), name="queue-gauges"),
                   asyncio.create_task(self._renew_leases(), name="lease-renewal")]
        try:
            while not self._stopping:
                await self._claim_and_dispatch()
        finally:
            for helper in helpers:
                helper.cancel()
            await self._drain(writer)

    async def _renew_leases(self) -> None:
        """Attempts can outlive a lease (a long lane queue, a slow MX): keep theirs current."""
        while True:
            await asyncio.sleep(LEASE.total_seconds() / 3)
            ids = list(self._in_flight.values())
            until = self.clock() + LEASE
            try:
                await self.db.write(partial(queue_store.renew_leases, node=self.node,
                                            delivery_ids=ids, lease_until=until))
            except StorageError as exc:
                log.error("cannot renew %d leases: %s", len(ids), exc)

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        self._slot_free.set()

    async def _claim_and_dispatch(self) -> None:
        capacity = self.max_in_flight - len(self._in_flight)
        if capacity <= 0:
            self._slot_free.clear()
            await self._slot_free.wait()
            return
        self._wake.clear()
        now = self.clock()
        try:
            claimed = await self.db.write(lambda c: queue_store.claim_due(
                c, node=self.node, now=now, lease_until=now + LEASE,
                limit=min(capacity, CLAIM_BATCH)))
        except StorageError as exc:
            log.error("cannot claim deliveries: %s", exc)
            await asyncio.sleep(POLL_INTERVAL)
            return
        if not claimed:
            await self._idle()
            return
        bodies = await self._bodies_for(claimed)
        claimed.sort(key=lambda claim: STREAM_PRIORITY.get(claim.stream, 1))  # stable: due order kept
        for claim in claimed:
            task = asyncio.create_task(self._attempt(claim, bodies.get(claim.queue_id)))
            self._in_flight[task] = claim.delivery_id
            task.add_done_callback(self._finished)

    async def _idle(self) -> None:
        await wake_or_timeout(self._wake, POLL_INTERVAL)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight.pop(task, None)
        self._slot_free.set()

    async def _bodies_for(self, claimed: list[ClaimedDelivery]) -> dict[str, bytes]:
        found: dict[str, bytes] = {}
        missing = set()
        for claim in claimed:
            body = self.bodies.get(claim.queue_id)
            if body is None:
                missing.add(claim.queue_id)
            else:
                found[claim.queue_id] = body
        if missing:
            try:
                found.update(await self.db.read(lambda c: queue_store.load_bodies(c, missing)))
            except StorageError as exc:
                log.error("cannot load message bodies: %s", exc)
        return found

    async def _attempt(self, claim: ClaimedDelivery, body: bytes | None) -> None:
        if body is None:
            # The lease expires and another attempt reads the body again.
            log.error("no body for %s, leaving delivery %d to be retried",
                      claim.queue_id, claim.delivery_id)
            return
        try:
            result = await self.deliver(claim, body)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("delivery %d failed unexpectedly", claim.delivery_id)
            result = AttemptResult("transient", f"internal error: {type(exc).__name__}")
        retry = self.retry_for(result.provider if isinstance(result, ShapedResult) else "")
        self._outcomes.append(outcome_for(claim, result, retry, self.clock(), self.classify))
        self._outcomes_ready.set()

    async def _write_outcomes(self) -> None:
        """Commit outcomes as they come; at shutdown, run until every one is written."""
        while True:
            await self._outcomes_ready.wait()
            self._outcomes_ready.clear()
            await self._flush()
            if self._stopping and not self._in_flight and not self._outcomes:
                return

    async def _flush(self) -> None:
        batch, self._outcomes = self._outcomes, []
        if not batch:
            return
        try:
            await self._record(batch)
        except StorageError as exc:
            log.error("cannot record %d outcomes (will retry): %s", len(batch), exc)
            self._outcomes[:0] = batch
            await asyncio.sleep(POLL_INTERVAL)
            self._outcomes_ready.set()

    async def _record(self, batch: list[Outcome]) -> None:
        """Commit outcomes; one the database refuses must not hold back the others."""
        held = [outcome for outcome in batch if outcome.state is DeliveryState.QUEUED]
        if held:
            await self._postpone(held)
            batch = [outcome for outcome in batch if outcome.state is not DeliveryState.QUEUED]
            if not batch:
                return
        errors = await self.db.write_items(
            lambda conn, chunk: queue_store.record_outcomes(conn, self.node, chunk, soft_rule=self.soft_rule),
            batch)
        recorded = [outcome for outcome, error in zip(batch, errors, strict=True) if error is None]
        if not recorded:  # nothing went in: the database is down, keep them all for later
            raise errors[0] or StorageError("no outcome could be recorded")
        for outcome, error in zip(batch, errors, strict=True):
            if error is not None:
                log.error("outcome for delivery %d not recordable (%s); it is retried when its "
                          "lease expires", outcome.delivery_id, error)
        self._count(recorded)

    async def _postpone(self, held: list[Outcome]) -> None:
        items = [(o.delivery_id, o.next_attempt_at or o.at, o.provider) for o in held]
        await self.db.write(partial(shaping_store.postpone, node=self.node, items=items))

    def _count(self, batch: list[Outcome]) -> None:
        for outcome in batch:
            metrics.DELIVERIES.labels(outcome.state.value).inc()
            if outcome.state.is_final:
                self.bodies.drop(outcome.queue_id)
            log.info("%s %s %s: %s", outcome.queue_id, outcome.recipient, outcome.state.value,
                     outcome.reply)

    async def _drain(self, writer: asyncio.Task[None], grace: float = 10.0) -> None:
        if self._in_flight:
            _, pending = await asyncio.wait(set(self._in_flight), timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        # Let the writer finish on its own: cancelling it mid-write would lose a batch.
        self._outcomes_ready.set()
        try:
            await asyncio.wait_for(writer, grace)
        except TimeoutError:
            log.error("%d outcomes not recorded at shutdown; those deliveries will be retried",
                      len(self._outcomes))
        try:
            await self.db.write(lambda c: queue_store.release_claims(c, self.node))
        except StorageError as exc:
            log.error("cannot release claims at shutdown: %s", exc)

    async def _report_queue(self, interval: float = 5.0) -> None:
        while True:
            try:
                counts = await self.db.read(queue_store.count_pending)
                oldest = await self.db.read(queue_store.next_due)
            except StorageError:
                counts, oldest = {}, None
            for state in QUEUE_STATES:  # held copies are in the queue too (accounting identity)
                metrics.QUEUE_DELIVERIES.labels(state.value).set(counts.get(state.value, 0))
            overdue = (self.clock() - oldest).total_seconds() if oldest else 0.0
            metrics.OLDEST_QUEUED_SECONDS.set(max(overdue, 0.0))
            await asyncio.sleep(interval)
