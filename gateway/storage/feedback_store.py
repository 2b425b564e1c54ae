"""Bounce and complaint state and the webhook outbox: every SQL statement feedback needs.

Functions take an open connection so that a bounce changes the delivery, the address's
state and the evidence in one transaction (see queue_store.record_outcomes and
queue_store.apply_feedback, which also drop the address's queued mail).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.feedback.breakers import COMPLAINT, HARD_BOUNCE
from gateway.feedback.softbounce import SoftBounceRule, SoftCount, add_soft_bounce, counts_toward_limit
from gateway.feedback.verdicts import BounceClass, Severity, Verdict
from gateway.ingest.addresses import address_hash
from gateway.storage import consent_store, reputation_store
from gateway.storage.consent_store import SuppressionRecord
from gateway.storage.database import upsert
from gateway.storage.tables import (
    events,
    feedback_records,
    soft_bounce_deliveries,
    soft_bounces,
    webhook_cursors,
    webhook_outbox,
)

MAX_EVIDENCE = 4000
MAX_NOTE = 500


def _cut(text: str | None, limit: int) -> str:
    """Remote text as a column holds it: valid UTF-8 without NUL, at most ``limit`` characters."""
    if not text:
        return ""
    clean = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace").replace("\x00", "")
    return clean[:limit]


@dataclass(frozen=True)
class BounceFact:
    """One bounce about one address: what was read, by which rule, and where it came from."""

    at: datetime
    recipient: str
    verdict: Verdict
    source: str  # sync (the reply to our attempt) | dsn (a report mailed back)
    evidence: str  # the reply, or the DSN's status and diagnostic lines
    final: bool = True  # the message failed for good (a deferral is never counted)
    delivery_id: int | None = None
    queue_id: str | None = None
    list_key: str = ""
    campaign: str = ""
    provider: str = ""
    inbound_id: int | None = None


@dataclass(frozen=True)
class BounceEffect:
    action: str  # for people: what the gateway did
    hard: bool  # the address is globally suppressed: its queued mail must be dropped
    marketing_suppressed: bool = False  # a soft-bounce suppression: its queued marketing mail goes


async def apply_bounces(conn: AsyncConnection, facts: Sequence[BounceFact],
                        rule: SoftBounceRule) -> list[BounceEffect]:
    """Hard bounces suppress globally at once; counted soft ones move the address's count."""
    effects = []
    for fact in facts:
        if fact.verdict.is_hard:
            effect = await _hard(conn, fact)
            counted = False
        else:
            effect, counted = await _soft(conn, fact, rule)
        if fact.source == "dsn" and fact.verdict.is_hard:  # sync ones: queue_store.record_outcomes
            await reputation_store.count_feedback(conn, fact.delivery_id, HARD_BOUNCE)
        await _record(conn, fact, "bounce", effect.action, counted)
        effects.append(effect)
    return effects


async def _hard(conn: AsyncConnection, fact: BounceFact) -> BounceEffect:
    note = f"{_explain(fact.verdict)}: {_cut(fact.evidence, MAX_NOTE)}"
    await consent_store.add_suppressions(conn, [SuppressionRecord(
        fact.recipient, address_hash(fact.recipient), "global", "", "hard-bounce", f"bounce-{fact.source}",
        fact.at, None, note)])
    await conn.execute(delete(soft_bounces).where(
        soft_bounces.c.address_hash == address_hash(fact.recipient)))
    return BounceEffect("suppressed globally (hard-bounce)", hard=True)


async def _soft(conn: AsyncConnection, fact: BounceFact, rule: SoftBounceRule) -> tuple[BounceEffect, bool]:
    if not counts_toward_limit(fact.verdict):
        return BounceEffect(f"not counted ({fact.verdict.bounce_class} says nothing about the mailbox)",
                            hard=False), False
    if not fact.final:
        return BounceEffect("not counted (the message is still being retried)", hard=False), False
    if fact.delivery_id is not None and not await _claim_count(conn, fact.delivery_id, fact.at):
        return BounceEffect("not counted (this message was counted already)", hard=False), False
    digest = address_hash(fact.recipient)
    current = await _locked_count(conn, digest, fact.at)
    step = add_soft_bounce(current, fact.at, rule)
    if step.suppress_until is None:
        await _store_count(conn, digest, step.count)
        return BounceEffect(step.count.describe(rule), hard=False), True
    await conn.execute(delete(soft_bounces).where(soft_bounces.c.address_hash == digest))
    await consent_store.add_suppressions(conn, [SuppressionRecord(
        fact.recipient, digest, "global", "", "soft-bounce", f"bounce-{fact.source}", fact.at,
        step.suppress_until, f"{step.count.describe(rule)}; last: {_cut(fact.evidence, MAX_NOTE)}")])
    until = f"{step.suppress_until:%Y-%m-%d %H:%M} UTC"
    action = f"{step.count.describe(rule)}: marketing suppressed until {until}"
    return BounceEffect(action, hard=False, marketing_suppressed=True), True


async def _locked_count(conn: AsyncConnection, digest: str, at: datetime) -> SoftCount | None:
    """The address's count, locked until commit. The row is created first (0 bounces) if
    missing, so that two nodes counting an address's first bounce at once queue on the row
    (PostgreSQL: the second insert waits for the first to commit, then finds it) instead of
    both reading "none" and one overwriting the other. SQLite serialises writers anyway."""
    await conn.execute(upsert(conn, soft_bounces).values(address_hash=digest, bounces=0, first_at=at,
                                                         last_at=at).on_conflict_do_nothing())
    query = select(soft_bounces).where(soft_bounces.c.address_hash == digest)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    row = (await conn.execute(query)).one()
    return SoftCount(row.bounces, row.first_at, row.last_at) if row.bounces > 0 else None


async def _store_count(conn: AsyncConnection, digest: str, count: SoftCount) -> None:
    await conn.execute(update(soft_bounces).where(soft_bounces.c.address_hash == digest).values(
        bounces=count.count, first_at=count.first_at, last_at=count.last_at))


async def _claim_count(conn: AsyncConnection, delivery_id: int, at: datetime) -> bool:
    """True the first time a delivery's soft bounce is counted (its sync reply, a DSN, two
    DSNs: once). The primary key decides, so two transactions cannot both count it."""
    inserted = await conn.execute(upsert(conn, soft_bounce_deliveries).values(delivery_id=delivery_id, at=at)
                                  .on_conflict_do_nothing().returning(soft_bounce_deliveries.c.delivery_id))
    return inserted.first() is not None


async def reset_soft_bounces(conn: AsyncConnection, recipients: Collection[str]) -> None:
    """A delivery proves the mailbox works: its soft-bounce count starts again."""
    digests = sorted({address_hash(r) for r in recipients})
    for start in range(0, len(digests), consent_store.IN_BATCH):
        await conn.execute(delete(soft_bounces).where(
            soft_bounces.c.address_hash.in_(digests[start:start + consent_store.IN_BATCH])))


async def soft_count(conn: AsyncConnection, recipient: str) -> SoftCount | None:
    row = (await conn.execute(select(soft_bounces).where(
        soft_bounces.c.address_hash == address_hash(recipient)))).first()
    return None if row is None else SoftCount(row.bounces, row.first_at, row.last_at)


@dataclass(frozen=True)
class ComplaintFact:
    at: datetime
    recipient: str
    scope: str  # list | global
    evidence: str  # the report's fields and its Authentication-Results header
    delivery_id: int | None = None
    queue_id: str | None = None
    list_key: str = ""
    campaign: str = ""
    provider: str = ""
    inbound_id: int | None = None
    feedback_type: str = "abuse"


async def apply_complaint(conn: AsyncConnection, fact: ComplaintFact) -> str:
    """Suppress (list or global), record the evidence; returns the scope key used ("" = global)."""
    scope_key = fact.list_key if fact.scope == "list" else ""
    scope = "list" if scope_key else "global"
    await consent_store.add_suppressions(conn, [SuppressionRecord(
        fact.recipient, address_hash(fact.recipient), scope, scope_key, "complaint", "arf", fact.at, None,
        _cut(f"{fact.feedback_type} report, delivery {fact.delivery_id}", MAX_NOTE))])
    where = f"list {scope_key}" if scope_key else "globally"
    verdict = Verdict(BounceClass.COMPLAINT, Severity.SOFT, f"arf:{fact.feedback_type}")
    bounce = BounceFact(fact.at, fact.recipient, verdict, "arf", fact.evidence, True, fact.delivery_id,
                        fact.queue_id, fact.list_key, fact.campaign, fact.provider, fact.inbound_id)
    await reputation_store.count_feedback(conn, fact.delivery_id, COMPLAINT)
    await _record(conn, bounce, "complaint", f"suppressed {where} (complaint)", False)
    return scope_key


async def _record(conn: AsyncConnection, fact: BounceFact, kind: str, action: str, counted: bool, *,
                  applied: bool = True) -> None:
    await conn.execute(insert(feedback_records).values(
        applied=applied,
        at=fact.at, address=fact.recipient, address_hash=address_hash(fact.recipient), kind=kind,
        source=fact.source, bounce_class=fact.verdict.bounce_class.value,
        severity=fact.verdict.severity.value,
        rule=_cut(fact.verdict.rule, 128), status=_cut(fact.verdict.status, 16), action=_cut(action, 200),
        counted=counted, evidence=_cut(fact.evidence, MAX_EVIDENCE), delivery_id=fact.delivery_id,
        queue_id=fact.queue_id, list_key=fact.list_key, campaign=fact.campaign,
        provider=_cut(fact.provider, 64), inbound_id=fact.inbound_id))


async def record_evidence(conn: AsyncConnection, fact: BounceFact, action: str) -> None:
    """A bounce kept for the record only: no suppression, not counted."""
    await _record(conn, fact, "bounce", action, False)


async def store_unapplied(conn: AsyncConnection, facts: Sequence[BounceFact]) -> None:
    """Keep facts whose bookkeeping failed as records flagged unapplied (the durable marker
    ``unapplied`` reads back)."""
    for fact in facts:
        await _record(conn, fact, "bounce", "not applied yet (bookkeeping failed; retried)", False,
                      applied=False)


async def unapplied_ids(conn: AsyncConnection, *, limit: int = 50, skip: Collection[int] = ()) -> list[int]:
    query = (select(feedback_records.c.id).where(feedback_records.c.applied.is_(False))
             .order_by(feedback_records.c.id).limit(limit))
    if skip:
        query = query.where(feedback_records.c.id.not_in(sorted(skip)))
    return [int(r.id) for r in await conn.execute(query)]


async def take_marker(conn: AsyncConnection, record_id: int) -> BounceFact | None:
    """Delete an unapplied record and return its fact; None when it was taken already.
    ``final`` is not stored: only final soft failures and hard verdicts are ever stored,
    and a hard one is applied the same whether final or not."""
    row = (await conn.execute(delete(feedback_records).where(
        feedback_records.c.id == record_id, feedback_records.c.applied.is_(False))
        .returning(*feedback_records.c))).first()
    if row is None:
        return None
    verdict = Verdict(BounceClass(row.bounce_class), Severity(row.severity), row.rule, row.status)
    return BounceFact(row.at, row.address or "", verdict, row.source, row.evidence, True, row.delivery_id,
                      row.queue_id, row.list_key, row.campaign, row.provider, row.inbound_id)


async def count_unapplied(conn: AsyncConnection) -> int:
    return int((await conn.execute(select(func.count()).select_from(feedback_records)
                                   .where(feedback_records.c.applied.is_(False)))).scalar_one())


def _explain(verdict: Verdict) -> str:
    status = f" {verdict.status}" if verdict.status else ""
    return f"{verdict.bounce_class} ({verdict.severity}{status}, rule {verdict.rule})"


async def add_event(conn: AsyncConnection, *, at: datetime, kind: str, queue_id: str,
                    delivery_id: int | None, recipient: str, reply: str) -> None:
    """One accounting event (a report about an earlier delivery, an unsubscribe)."""
    await conn.execute(insert(events).values(at=at, kind=kind, queue_id=queue_id, delivery_id=delivery_id,
                                             recipient=recipient, reply=_cut(reply, 2000)))


# -- trace ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class FeedbackRow:
    at: datetime
    queue_id: str
    recipient: str | None
    kind: str  # bounce | complaint
    detail: str


async def trace_rows(conn: AsyncConnection, *, recipient: str | None = None,
                     queue_ids: Collection[str] = (), limit: int = 200) -> list[FeedbackRow]:
    """The explanation of every bounce and complaint about an address or a message."""
    if recipient is not None:
        where = feedback_records.c.address_hash == address_hash(recipient)
    elif queue_ids:
        where = feedback_records.c.queue_id.in_(list(queue_ids))
    else:
        return []
    rows = await conn.execute(select(feedback_records).where(where)
                              .order_by(feedback_records.c.id).limit(limit))
    return [FeedbackRow(r.at, r.queue_id or "-", r.address, r.kind, _describe(r)) for r in rows]


def _describe(row: Any) -> str:
    status = f" {row.status}" if row.status else ""
    return (f"class {row.bounce_class} ({row.severity}{status}), rule {row.rule}, from {row.source}"
            f"{f', provider {row.provider}' if row.provider else ''} -> {row.action}; "
            f"evidence: {' '.join(row.evidence.split())[:300]}")


# -- webhook outbox ---------------------------------------------------------------------------

@dataclass(frozen=True)
class OutboxItem:
    id: int
    event_id: int
    attempts: int
    payload: str
    created_at: datetime


async def feed_outbox(conn: AsyncConnection, webhook: str, kinds: Collection[str], now: datetime,
                      *, settle: int, limit: int = 500, from_start: bool = False) -> int:
    """Copy events after the webhook's cursor into its outbox; returns how many were read.

    ``settle`` bounds the cursor and is required: events with a higher id are left for the
    next call. The caller passes the last id it has checked for gaps (an event with a lower
    id that commits later must not be passed over; see webhooks.settled_limit). A webhook
    seen for the first time starts after the newest event, or at the first with
    ``from_start``.
    """
    query = select(webhook_cursors.c.last_event_id).where(webhook_cursors.c.webhook == webhook)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()  # two nodes feeding at once must not copy an event twice
    cursor = (await conn.execute(query)).scalar()
    if cursor is None:
        await ensure_cursor(conn, webhook, from_start=from_start)
        cursor = (await conn.execute(query)).scalar_one()  # another node's first row wins
    wanted = (select(events).where(events.c.id > cursor, events.c.id <= settle)
              .order_by(events.c.id).limit(limit))
    rows = list(await conn.execute(wanted))
    if not rows:
        return 0
    details = await _feedback_by_delivery(conn, [r.delivery_id for r in rows
                                                 if r.kind in ("bounced", "complained") and r.delivery_id])
    chosen = [r for r in rows if r.kind in kinds]
    if chosen:
        await conn.execute(insert(webhook_outbox), [
            {"webhook": webhook, "event_id": r.id, "order_key": _order_key(r), "attempts": 0,
             "payload": json.dumps(_payload(r, details.get((r.delivery_id, r.kind))), separators=(",", ":")),
             "next_attempt_at": now, "created_at": now, "state": WAITING} for r in chosen])
    await conn.execute(update(webhook_cursors).where(webhook_cursors.c.webhook == webhook)
                       .values(last_event_id=rows[-1].id))
    return len(rows)


async def ensure_cursor(conn: AsyncConnection, webhook: str, *, from_start: bool = False) -> None:
    """A webhook seen for the first time starts after the newest event (or at the first
    with ``from_start``); an existing cursor is left alone."""
    start = 0 if from_start else await newest_event_id(conn)
    await conn.execute(upsert(conn, webhook_cursors).values(webhook=webhook, last_event_id=start)
                       .on_conflict_do_nothing())


async def newest_event_id(conn: AsyncConnection) -> int:
    return int((await conn.execute(select(func.coalesce(func.max(events.c.id), 0)))).scalar_one())


async def cursor_of(conn: AsyncConnection, webhook: str) -> int:
    value = (await conn.execute(select(webhook_cursors.c.last_event_id)
                                .where(webhook_cursors.c.webhook == webhook))).scalar()
    return int(value or 0)


async def event_ids_after(conn: AsyncConnection, after: int, limit: int) -> list[int]:
    rows = await conn.execute(select(events.c.id).where(events.c.id > after)
                              .order_by(events.c.id).limit(limit))
    return [int(r[0]) for r in rows]


def _order_key(row: Any) -> str:
    return address_hash(row.recipient)[:64] if row.recipient else f"queue:{row.queue_id}"


def _payload(row: Any, detail: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": row.id, "event": row.kind, "at": row.at.isoformat(), "queue_id": row.queue_id or None,
        "delivery_id": row.delivery_id, "recipient": row.recipient, "reply": row.reply,
        "remote": row.remote, "source_ip": row.source_ip}
    if row.campaign:  # campaign events (paused, resumed, warned): no recipient, the figures in reply
        body["campaign"] = row.campaign
    if detail is not None:
        body["feedback"] = {"class": detail.bounce_class, "severity": detail.severity, "rule": detail.rule,
                            "status": detail.status or None, "source": detail.source, "action": detail.action}
    return body


async def _feedback_by_delivery(conn: AsyncConnection, delivery_ids: list[int]) -> dict[tuple[int, str], Any]:
    """The latest bounce and complaint record per delivery, to explain those events."""
    if not delivery_ids:
        return {}
    rows = await conn.execute(select(feedback_records).where(
        feedback_records.c.delivery_id.in_(sorted(set(delivery_ids)))).order_by(feedback_records.c.id))
    found: dict[tuple[int, str], Any] = {}
    for r in rows:
        found[(r.delivery_id, "complained" if r.kind == "complaint" else "bounced")] = r
    return found


WAITING, PARKED = "waiting", "parked"


async def due_items(conn: AsyncConnection, webhook: str, now: datetime, *,
                    limit: int = 100, lock: bool = False) -> list[OutboxItem]:
    """The oldest waiting item of each recipient, if due: later items wait for it (order).

    Read through the (webhook, state, next_attempt_at) index; for each candidate an
    indexed NOT EXISTS on (webhook, order_key, id) checks that no older item of the same
    recipient is still waiting - never a scan of the whole outbox.
    """
    earlier = webhook_outbox.alias("earlier")
    older_waiting = (select(earlier.c.id).where(
        earlier.c.webhook == webhook_outbox.c.webhook, earlier.c.order_key == webhook_outbox.c.order_key,
        earlier.c.id < webhook_outbox.c.id, earlier.c.state == WAITING).exists())
    query = (select(webhook_outbox.c.id, webhook_outbox.c.event_id, webhook_outbox.c.attempts,
                    webhook_outbox.c.payload, webhook_outbox.c.created_at)
             .where(webhook_outbox.c.webhook == webhook, webhook_outbox.c.state == WAITING,
                    webhook_outbox.c.next_attempt_at <= now, ~older_waiting)
             .order_by(webhook_outbox.c.next_attempt_at, webhook_outbox.c.id).limit(limit))
    if lock and conn.dialect.name == "postgresql":
        query = query.with_for_update(of=webhook_outbox, skip_locked=True)
    rows = await conn.execute(query)
    return [OutboxItem(int(r.id), int(r.event_id), int(r.attempts), r.payload, r.created_at) for r in rows]


async def claim_items(conn: AsyncConnection, webhook: str, now: datetime, lease_until: datetime, *,
                      limit: int = 100) -> list[OutboxItem]:
    """Due items, leased until ``lease_until``: another node (or this one after a crash in
    the middle of a POST) takes them only once the lease has run out."""
    items = await due_items(conn, webhook, now, limit=limit, lock=True)
    if items:
        await conn.execute(update(webhook_outbox).where(webhook_outbox.c.id.in_([i.id for i in items]))
                           .values(next_attempt_at=lease_until))
    return items


async def sent(conn: AsyncConnection, ids: Sequence[int]) -> None:
    if ids:
        await conn.execute(delete(webhook_outbox).where(webhook_outbox.c.id.in_(list(ids))))


async def failed(conn: AsyncConnection, item_id: int, next_attempt_at: datetime, error: str) -> None:
    await conn.execute(update(webhook_outbox).where(webhook_outbox.c.id == item_id).values(
        attempts=webhook_outbox.c.attempts + 1, next_attempt_at=next_attempt_at, last_error=_cut(error, 500)))


async def park(conn: AsyncConnection, item_id: int, error: str) -> None:
    """Give up on an item (too many attempts, too old): it stays for inspection, and the
    recipient's later events are no longer held behind it."""
    await conn.execute(update(webhook_outbox).where(webhook_outbox.c.id == item_id).values(
        state=PARKED, attempts=webhook_outbox.c.attempts + 1, last_error=_cut(error, 500)))


async def backlog(conn: AsyncConnection) -> int:
    return int((await conn.execute(select(func.count()).select_from(webhook_outbox)
                                   .where(webhook_outbox.c.state == WAITING))).scalar_one())


async def next_due(conn: AsyncConnection, webhook: str) -> datetime | None:
    value = (await conn.execute(select(func.min(webhook_outbox.c.next_attempt_at))
                                .where(webhook_outbox.c.webhook == webhook,
                                       webhook_outbox.c.state == WAITING))).scalar()
    return value if isinstance(value, datetime) else None
