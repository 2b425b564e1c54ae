"""Queue persistence: every SQL statement that intake, the scheduler and the CLI need.

Each function takes an open connection so callers decide the transaction: intake and
the scheduler go through ``Database.write`` (group commit), the CLI through
``Database.read`` or its own short transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, exists, func, insert, or_, select, union_all, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from gateway.feedback.softbounce import SoftBounceRule
from gateway.ingest.addresses import address_hash, address_key, normalize_recipient
from gateway.ingest.rules import ANY_STREAM_REASONS
from gateway.records import (
    PENDING_STATES,
    QUEUE_STATES,
    ClaimedDelivery,
    DeliveryState,
    InboundMessage,
    NewMessage,
    Outcome,
)
from gateway.storage import campaign_store, consent_store, feedback_store, reputation_store, tally
from gateway.storage.feedback_store import BounceEffect, BounceFact
from gateway.storage.tables import deliveries, events, inbound, messages, suppressions

log = logging.getLogger(__name__)
_PENDING = [s.value for s in PENDING_STATES]  # claimable once due
_IN_QUEUE = [s.value for s in QUEUE_STATES]  # not final: pending or held
PRIORITIES = {"transactional": 0, "marketing": 1}
"""``deliveries.priority`` by stream: lower is claimed first; an unknown stream ranks last."""
LOWEST_PRIORITY = max(PRIORITIES.values())
DEFAULT_SOFT_RULE = SoftBounceRule()


def recipient_domain(address: str) -> str:
    return address.rpartition("@")[2].lower()


async def insert_messages(conn: AsyncConnection, batch: Sequence[NewMessage]) -> None:
    """Messages and one delivery row per recipient, a few statements for the whole batch:
    suppressed recipients get a final row and an event saying why, copies of a paused
    campaign are stored held, and accepted marketing copies update the frequency caps'
    last-send times in the same transaction."""
    await conn.execute(insert(messages), [{
        "queue_id": message.queue_id,
        "received_at": message.received_at,
        "mail_from": message.mail_from,
        "account": message.account,
        "client_ip": message.client_ip,
        "helo": message.helo,
        "header_message_id": message.header_message_id,
        "size": len(message.body),
        "recipient_count": len(message.recipients) + len(message.suppressed),
        "stream": message.stream,
        "list_key": message.list_key,
        "campaign": message.campaign,
        "body": message.body if message.recipients else None,  # nothing will be sent
    } for message in batch])
    paused = await campaign_store.paused_among(conn, (m.campaign for m in batch if m.recipients))
    rows = [_delivery_row(message, recipient,
                          DeliveryState.HELD if message.campaign in paused else DeliveryState.QUEUED, None)
            for message in batch for recipient in message.recipients]
    rows += [_delivery_row(message, recipient, DeliveryState.SUPPRESSED, why)
             for message in batch for recipient, why in message.suppressed]
    if rows:
        await conn.execute(insert(deliveries), rows)
    suppressed = [{"at": m.received_at, "kind": DeliveryState.SUPPRESSED.value, "queue_id": m.queue_id,
                   "recipient": recipient, "reply": why} for m in batch for recipient, why in m.suppressed]
    if suppressed:
        await conn.execute(insert(events), suppressed)
    await consent_store.record_sends(conn, [
        (address_hash(recipient), message.list_key, message.received_at)
        for message in batch if message.stream == "marketing" and message.list_key
        for recipient in message.recipients])


def _delivery_row(message: NewMessage, recipient: str, state: DeliveryState,
                  reply: str | None) -> dict[str, Any]:
    return {"queue_id": message.queue_id, "recipient": recipient, "domain": recipient_domain(recipient),
            "state": state.value, "attempts": 0, "next_attempt_at": message.received_at,
            "last_reply": reply, "updated_at": message.received_at,
            "priority": PRIORITIES.get(message.stream, LOWEST_PRIORITY), "provider": ""}


async def insert_inbound(conn: AsyncConnection, message: InboundMessage) -> None:
    await conn.execute(insert(inbound), [{
        "received_at": message.received_at,
        "mail_from": message.mail_from,
        "recipients": "\n".join(message.recipients),
        "client_ip": message.client_ip,
        "body": message.body,
        "state": "new",
    }])


async def claim_due(conn: AsyncConnection, *, node: str, now: datetime,
                    lease_until: datetime, limit: int) -> list[ClaimedDelivery]:
    """Lease up to ``limit`` due deliveries to ``node``, transactional first and then by due
    time; other nodes skip leased rows. Copies whose address was suppressed meanwhile are
    finished as suppressed, copies of a campaign paused meanwhile are held: neither is
    returned, and neither counts an attempt."""
    due = _due_ids(now, limit)
    if conn.dialect.name == "postgresql":
        due = (select(deliveries.c.id).where(deliveries.c.id.in_(due.scalar_subquery()), _claimable(now))
               .with_for_update(skip_locked=True))
    claimed = await conn.execute(
        update(deliveries)
        .where(deliveries.c.id.in_(due.scalar_subquery()))
        .values(claimed_by=node, lease_until=lease_until)
        .returning(deliveries.c.id)
    )
    ids = [row[0] for row in claimed]
    if not ids:
        return []
    rows = await conn.execute(
        select(deliveries.c.id, deliveries.c.queue_id, deliveries.c.recipient,
               deliveries.c.domain, deliveries.c.attempts, messages.c.mail_from,
               messages.c.received_at, messages.c.stream, messages.c.list_key, messages.c.campaign)
        .join(messages, messages.c.queue_id == deliveries.c.queue_id)
        .where(deliveries.c.id.in_(ids))
        .order_by(deliveries.c.id)
    )
    claims = [ClaimedDelivery(delivery_id=r.id, queue_id=r.queue_id, recipient=r.recipient,
                              domain=r.domain, mail_from=r.mail_from, attempts=r.attempts,
                              received_at=r.received_at, stream=r.stream, list_key=r.list_key,
                              campaign=r.campaign) for r in rows]
    blocked = await _blocked_by_suppression(conn, claims, now)
    if blocked:
        await _finish_claimed(conn, node, [c for c in claims if c.delivery_id in blocked], blocked, now)
    claims = [c for c in claims if c.delivery_id not in blocked]
    paused = await campaign_store.paused_among(conn, (c.campaign for c in claims))
    if paused:
        await _hold_claimed(conn, node, [c.delivery_id for c in claims if c.campaign in paused])
    return [c for c in claims if c.campaign not in paused]


def blocking_reason(reasons: Iterable[str], stream: str) -> str | None:
    """The global suppression reason that forbids a copy of ``stream``, if any (pure): the
    same reasons intake refuses at RCPT (gateway/ingest/rules.py) - any of them for
    marketing, only those that hold for every stream (hard-bounce, complaint ...) otherwise."""
    found = sorted(set(reasons))
    holding = found if stream == "marketing" else [r for r in found if r in ANY_STREAM_REASONS]
    return holding[0] if holding else None


async def _blocked_by_suppression(conn: AsyncConnection, claims: Sequence[ClaimedDelivery],
                                  now: datetime) -> dict[int, str]:
    """Claimed copies whose address was suppressed after they were queued (a hard bounce
    of another copy, a complaint): delivery id -> why. One indexed read for the batch."""
    if not claims:
        return {}
    digests = {c.delivery_id: address_hash(c.recipient) for c in claims}
    reasons: dict[str, list[str]] = {}
    unique = sorted(set(digests.values()))
    for start in range(0, len(unique), consent_store.IN_BATCH):
        rows = await conn.execute(
            select(suppressions.c.address_hash, suppressions.c.reason)
            .where(suppressions.c.address_hash.in_(unique[start:start + consent_store.IN_BATCH]),
                   suppressions.c.scope == "global", suppressions.c.scope_key == "",
                   or_(suppressions.c.expires_at.is_(None), suppressions.c.expires_at > now)))
        for row in rows:
            reasons.setdefault(row.address_hash, []).append(row.reason)
    blocked: dict[int, str] = {}
    for claim in claims:
        reason = blocking_reason(reasons.get(digests[claim.delivery_id], ()), claim.stream)
        if reason is not None:
            blocked[claim.delivery_id] = f"suppressed: {reason}"
    return blocked


async def _finish_claimed(conn: AsyncConnection, node: str, claims: Sequence[ClaimedDelivery],
                          replies: dict[int, str], now: datetime) -> None:
    """Finish copies this transaction just claimed as suppressed, without an attempt."""
    await conn.execute(
        update(deliveries).where(deliveries.c.id == bindparam("b_id"), deliveries.c.claimed_by == node)
        .values(state=DeliveryState.SUPPRESSED.value, last_reply=bindparam("b_reply"), updated_at=now,
                claimed_by=None, lease_until=None),
        [{"b_id": c.delivery_id, "b_reply": replies[c.delivery_id]} for c in claims])
    await conn.execute(insert(events), [
        {"at": now, "kind": DeliveryState.SUPPRESSED.value, "queue_id": c.queue_id,
         "delivery_id": c.delivery_id, "recipient": c.recipient, "reply": replies[c.delivery_id]}
        for c in claims])
    for claim in claims:
        tally.count_suppressed(conn, replies[claim.delivery_id])
    await _drop_finished_bodies(conn, {c.queue_id for c in claims})


async def _hold_claimed(conn: AsyncConnection, node: str, delivery_ids: Sequence[int]) -> None:
    """Hold copies this transaction just claimed (their campaign was paused after they were
    queued or deferred): the lease is dropped, the attempt count and due time stay."""
    await conn.execute(update(deliveries)
                       .where(deliveries.c.id.in_(list(delivery_ids)), deliveries.c.claimed_by == node)
                       .values(state=DeliveryState.HELD.value, claimed_by=None, lease_until=None))


def _claimable(now: datetime) -> Any:
    return or_(deliveries.c.lease_until.is_(None), deliveries.c.lease_until < now)


def _due_ids(now: datetime, limit: int) -> Any:
    """The ``limit`` first due ids by (priority, due time). One ordered range scan of the
    (state, priority, next_attempt_at) index per state and priority, merged: a single query
    over ``state IN (...)`` would have to sort every due row to find the first ones."""
    parts = [select(deliveries.c.id, deliveries.c.priority, deliveries.c.next_attempt_at)
             .where(deliveries.c.state == state, deliveries.c.priority == priority,
                    deliveries.c.next_attempt_at <= now, _claimable(now))
             .order_by(deliveries.c.next_attempt_at).limit(limit).subquery()
             for state in _PENDING for priority in sorted(set(PRIORITIES.values()))]
    merged = union_all(*(select(part.c.id, part.c.priority, part.c.next_attempt_at) for part in parts))
    found = merged.subquery()
    return select(found.c.id).order_by(found.c.priority, found.c.next_attempt_at).limit(limit)


async def load_bodies(conn: AsyncConnection, queue_ids: Iterable[str]) -> dict[str, bytes]:
    rows = await conn.execute(
        select(messages.c.queue_id, messages.c.body).where(messages.c.queue_id.in_(set(queue_ids)))
    )
    return {row.queue_id: row.body for row in rows if row.body is not None}


async def record_outcomes(conn: AsyncConnection, node: str, outcomes: Sequence[Outcome], *,
                          soft_rule: SoftBounceRule = DEFAULT_SOFT_RULE) -> int:
    """Apply attempt results; a row whose lease moved to another node is left alone.

    In the same transaction, the address's bounce state follows: a hard verdict suppresses
    it globally and drops its queued mail, a final soft failure counts toward
    ``soft_rule``, a delivery resets that count (gateway/storage/feedback_store.py).
    """
    owned_query = select(deliveries.c.id).where(
        deliveries.c.id.in_([o.delivery_id for o in outcomes]), deliveries.c.claimed_by == node)
    if conn.dialect.name == "postgresql":
        owned_query = owned_query.with_for_update()
    owned = {row[0] for row in await conn.execute(owned_query)} if outcomes else set()
    applied = [o for o in outcomes if o.delivery_id in owned]
    if not applied:
        return 0
    next_at = bindparam("b_next", type_=deliveries.c.next_attempt_at.type)
    await conn.execute(
        update(deliveries)
        .where(deliveries.c.id == bindparam("b_id"))
        .values(state=bindparam("b_state"), attempts=deliveries.c.attempts + 1,
                next_attempt_at=func.coalesce(next_at, deliveries.c.next_attempt_at),
                last_reply=bindparam("b_reply"), updated_at=bindparam("b_at"),
                provider=func.coalesce(bindparam("b_provider", type_=deliveries.c.provider.type),
                                       deliveries.c.provider),
                claimed_by=None, lease_until=None),
        [{"b_id": o.delivery_id, "b_state": o.state.value, "b_next": o.next_attempt_at,
          "b_reply": storable(o.reply, MAX_REPLY), "b_at": o.at, "b_provider": o.provider or None}
         for o in applied],
    )
    await conn.execute(insert(events), [_event_row(o) for o in applied])
    await _drop_finished_bodies(conn, {o.queue_id for o in applied if o.state.is_final})
    await _bounce_state_or_marker(conn, applied, soft_rule)
    # The circuit breakers' base and hard bounces, in this node's own counter rows.
    await reputation_store.count_outcomes(conn, applied, node=node)
    return len(applied)


async def _bounce_state_or_marker(conn: AsyncConnection, applied: Sequence[Outcome],
                                  rule: SoftBounceRule) -> None:
    """Bounce bookkeeping in a savepoint. An outcome that cannot be recorded is retried by
    sending the message again, so a failure here must not fail the outcomes; it must not be
    lost either: the facts are then stored as unapplied feedback records, in the outer
    transaction, and ``reapply_unapplied`` (run by the inbound processor) applies them later."""
    facts = _bounce_facts(applied)
    try:
        async with conn.begin_nested():
            await _bounce_state(conn, applied, facts, rule)
    except SQLAlchemyError as exc:
        log.error("bounce state for %d outcomes not applied now (kept for a retry): %s", len(applied),
                  str(exc).splitlines()[0])
        await feedback_store.store_unapplied(conn, facts)


def _bounce_facts(applied: Sequence[Outcome]) -> list[BounceFact]:
    # A deferral is evidence only when it is hard; otherwise the final attempt speaks.
    return [BounceFact(o.at, o.recipient, o.verdict, "sync", o.reply or "", final=o.state.is_final,
                       delivery_id=o.delivery_id, queue_id=o.queue_id, provider=o.provider)
            for o in applied if o.verdict is not None and (o.state.is_final or o.verdict.is_hard)]


async def _bounce_state(conn: AsyncConnection, applied: Sequence[Outcome], facts: Sequence[BounceFact],
                        rule: SoftBounceRule) -> None:
    delivered = [o.recipient for o in applied if o.state is DeliveryState.DELIVERED]
    if delivered:
        await feedback_store.reset_soft_bounces(conn, delivered)
    await apply_feedback(conn, facts, rule)


async def apply_feedback(conn: AsyncConnection, facts: Sequence[BounceFact],
                         rule: SoftBounceRule) -> list[BounceEffect]:
    """Bounce state for ``facts``; a hard bounce also drops the address's queued mail, a
    soft-bounce suppression its queued marketing mail."""
    if not facts:
        return []
    effects = await feedback_store.apply_bounces(conn, facts, rule)
    for fact, effect in zip(facts, effects, strict=True):
        if effect.hard:
            await drop_pending_to(conn, fact.recipient, "suppressed: hard-bounce", fact.at)
        elif effect.marketing_suppressed:
            await suppress_pending(conn, fact.recipient, "", "suppressed: soft-bounce", fact.at)
    return effects


async def reapply_marker(conn: AsyncConnection, marker_id: int, rule: SoftBounceRule) -> bool:
    """Apply one bounce fact whose bookkeeping failed with its outcome. The marker is deleted
    in the same transaction, and only the node whose DELETE removed it applies it (so two
    nodes sweeping at once apply it once); False when it was gone already."""
    fact = await feedback_store.take_marker(conn, marker_id)
    if fact is None:
        return False
    await apply_feedback(conn, [fact], rule)
    return True


async def drop_pending_to(conn: AsyncConnection, recipient: str, reason: str, now: datetime) -> int:
    """Stop every queued copy to ``recipient``, of any stream and any letter case (the
    address is dead); a copy being delivered right now is left to finish, as in
    suppress_pending."""
    return await _suppress_waiting(conn, _same_address(recipient), reason, now)


def _same_address(recipient: str) -> Any:
    """Through the lower(recipient) index. SQL lower() folds ASCII only on SQLite: a local
    part with upper-case non-ASCII letters is matched as stored."""
    return func.lower(deliveries.c.recipient) == address_key(recipient)


async def _suppress_waiting(conn: AsyncConnection, where: Any, reason: str, now: datetime) -> int:
    """Finish waiting copies (held ones too) as suppressed, counted under ``reason``."""
    finished = await _finish_waiting(conn, [where, deliveries.c.state.in_(_IN_QUEUE)],
                                     DeliveryState.SUPPRESSED, reason, now)
    tally.count_suppressed(conn, reason, finished)
    return finished


async def _finish_waiting(conn: AsyncConnection, where: Sequence[Any], state: DeliveryState, reply: str,
                          now: datetime) -> int:
    """Give copies matching ``where`` that are not leased a final state without an attempt:
    the rows, an event each, and the bodies no longer needed. The UPDATE itself checks the
    lease, and events are written only for the rows it changed: a copy another node claimed
    in the meantime is left to that node."""
    changed = list(await conn.execute(
        update(deliveries)
        .where(*where, deliveries.c.claimed_by.is_(None))
        .values(state=state.value, last_reply=reply, updated_at=now)
        .returning(deliveries.c.id, deliveries.c.queue_id, deliveries.c.recipient)))
    if not changed:
        return 0
    await conn.execute(insert(events), [
        {"at": now, "kind": state.value, "queue_id": r.queue_id, "delivery_id": r.id,
         "recipient": r.recipient, "reply": reply} for r in changed])
    await _drop_finished_bodies(conn, {r.queue_id for r in changed})
    return len(changed)


MAX_REPLY = 2000


def storable(text: str | None, limit: int) -> str | None:
    """Remote text as a column can hold it: valid UTF-8 (aiosmtplib keeps undecodable
    bytes as surrogates, which neither SQLite nor PostgreSQL accept), cut to ``limit``."""
    if text is None:
        return None
    clean = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace").replace("\x00", "")
    return clean[:limit]


def _event_row(outcome: Outcome) -> dict[str, Any]:
    return {"at": outcome.at, "kind": outcome.state.value, "queue_id": outcome.queue_id,
            "delivery_id": outcome.delivery_id, "recipient": outcome.recipient,
            "reply": storable(outcome.reply, MAX_REPLY), "remote": storable(outcome.remote, 300),
            "source_ip": storable(outcome.source_ip, 45)}


async def _drop_finished_bodies(conn: AsyncConnection, queue_ids: set[str]) -> None:
    if not queue_ids:
        return
    still_pending = exists().where(deliveries.c.queue_id == messages.c.queue_id,
                                   deliveries.c.state.in_(_IN_QUEUE))
    await conn.execute(update(messages)
                       .where(messages.c.queue_id.in_(queue_ids), ~still_pending)
                       .values(body=None))


async def renew_leases(conn: AsyncConnection, node: str, delivery_ids: Sequence[int],
                       lease_until: datetime) -> int:
    """Extend this node's leases on attempts still running (a long lane queue or slow MX)."""
    if not delivery_ids:
        return 0
    result = await conn.execute(update(deliveries)
                                .where(deliveries.c.id.in_(list(delivery_ids)),
                                       deliveries.c.claimed_by == node)
                                .values(lease_until=lease_until))
    return int(result.rowcount or 0)


async def release_claims(conn: AsyncConnection, node: str) -> int:
    """Forget this node's leases (after a restart its in-flight attempts are gone)."""
    result = await conn.execute(update(deliveries).where(deliveries.c.claimed_by == node)
                                .values(claimed_by=None, lease_until=None))
    return int(result.rowcount or 0)


async def next_due(conn: AsyncConnection) -> datetime | None:
    row = await conn.execute(select(func.min(deliveries.c.next_attempt_at))
                             .where(deliveries.c.state.in_(_PENDING)))
    value = row.scalar()
    return value if isinstance(value, datetime) else None


async def count_pending(conn: AsyncConnection) -> dict[str, int]:
    """Deliveries still in the queue by state, held ones included (an index range; final
    states are counted by metrics)."""
    rows = await conn.execute(select(deliveries.c.state, func.count())
                              .where(deliveries.c.state.in_(_IN_QUEUE))
                              .group_by(deliveries.c.state))
    return {row[0]: int(row[1]) for row in rows}


# -- operator actions: `gateway queue retry|hold|release|purge` and the admin API ---------------
# Every action takes the same filters (all optional, combined with AND): queue id, recipient
# domain, provider profile, campaign ("" = mail without a campaign) and states, which must be
# among the states the action applies to (default: all of them).

def _selection(action: str, states: Iterable[str] | None, *,
               queue_id: str | None, domain: str | None, provider: str | None,
               campaign: str | None) -> list[ColumnElement[bool]]:
    """The WHERE terms of an operator's filters; ValueError for a state the action cannot take."""
    valid = [s.value for s in sorted(ACTION_STATES[action])]
    chosen = sorted(set(states)) if states else valid
    wrong = [s for s in chosen if s not in valid]
    if wrong:
        named = " or ".join([", ".join(valid[:-1]), valid[-1]] if len(valid) > 1 else valid)
        raise ValueError(f"{action} applies to {named} deliveries, not {', '.join(wrong)}")
    where: list[ColumnElement[bool]] = [deliveries.c.state.in_(chosen)]
    if queue_id:
        where.append(deliveries.c.queue_id == queue_id.strip().upper())
    if domain:
        where.append(deliveries.c.domain == domain.strip().lower())
    if provider is not None:
        where.append(deliveries.c.provider == provider)
    if campaign is not None:
        where.append(deliveries.c.queue_id.in_(
            select(messages.c.queue_id).where(messages.c.campaign == campaign).scalar_subquery()))
    return where


# The states each operator action applies to (the CLI and the admin API validate with it).
ACTION_STATES: dict[str, frozenset[DeliveryState]] = {
    "list": QUEUE_STATES, "retry": PENDING_STATES, "hold": PENDING_STATES,
    "release": frozenset({DeliveryState.HELD}), "purge": QUEUE_STATES,
}


async def retry_now(conn: AsyncConnection, now: datetime, *, queue_id: str | None = None,
                    domain: str | None = None, provider: str | None = None, campaign: str | None = None,
                    states: Iterable[str] | None = None) -> int:
    """Make waiting (queued, deferred) deliveries due now; held ones need a release."""
    where = _selection("retry", states, queue_id=queue_id, domain=domain, provider=provider,
                       campaign=campaign)
    result = await conn.execute(update(deliveries).where(*where).values(next_attempt_at=now))
    return int(result.rowcount or 0)


async def hold(conn: AsyncConnection, now: datetime, *, queue_id: str | None = None,
               domain: str | None = None, provider: str | None = None, campaign: str | None = None,
               states: Iterable[str] | None = None) -> int:
    """Hold waiting deliveries until released; one being attempted right now is left to finish."""
    where = _selection("hold", states, queue_id=queue_id, domain=domain, provider=provider,
                       campaign=campaign)
    return await campaign_store.hold_deliveries(conn, and_(*where))


async def release(conn: AsyncConnection, now: datetime, *, queue_id: str | None = None,
                  domain: str | None = None, provider: str | None = None, campaign: str | None = None,
                  states: Iterable[str] | None = None) -> int:
    """Release held deliveries, due now. A copy of a paused campaign is held again when it is
    claimed: resuming the campaign is what releases those."""
    where = _selection("release", states, queue_id=queue_id, domain=domain,
                       provider=provider, campaign=campaign)
    return await campaign_store.release_deliveries(conn, and_(*where), now)


async def purge(conn: AsyncConnection, now: datetime, *, queue_id: str | None = None,
                domain: str | None = None, provider: str | None = None, campaign: str | None = None,
                states: Iterable[str] | None = None) -> int:
    """Give up on deliveries still in the queue (held ones too) that are not being attempted:
    they become ``expired`` with an event saying so."""
    where = _selection("purge", states, queue_id=queue_id, domain=domain, provider=provider,
                       campaign=campaign)
    purged = await _finish_waiting(conn, where, DeliveryState.EXPIRED, "purged by operator", now)
    tally.count_expired(conn, purged)
    return purged


@dataclass(frozen=True)
class DeliveryRef:
    """What a token names: one recipient's copy of one message, and its list and campaign."""

    delivery_id: int
    queue_id: str
    recipient: str
    list_key: str
    campaign: str


async def delivery_ref(conn: AsyncConnection, delivery_id: int) -> DeliveryRef | None:
    row = (await conn.execute(
        select(deliveries.c.id, deliveries.c.queue_id, deliveries.c.recipient,
               messages.c.list_key, messages.c.campaign)
        .join(messages, messages.c.queue_id == deliveries.c.queue_id)
        .where(deliveries.c.id == delivery_id))).first()
    if row is None:
        return None
    return DeliveryRef(row.id, row.queue_id, row.recipient, row.list_key, row.campaign)


REFUSED = "refused"  # event kind: refused before anything was queued (no queue id)


async def record_refusals(conn: AsyncConnection, refusals: Sequence[tuple[datetime, str, str]]) -> None:
    """Recipients refused with a 5xx (at RCPT, or a whole message at end of DATA), so that
    `gateway trace ADDRESS` can say why a person got nothing: (time, recipient, reply)."""
    if refusals:
        await conn.execute(insert(events), [
            {"at": at, "kind": REFUSED, "queue_id": "", "recipient": recipient,
             "reply": storable(reply, MAX_REPLY)} for at, recipient, reply in refusals])


@dataclass(frozen=True)
class TraceRow:
    at: datetime
    queue_id: str
    recipient: str | None
    kind: str
    detail: str


async def trace(conn: AsyncConnection, key: str, limit: int = 200, *,
                pool_of: Mapping[str, str] | None = None) -> list[TraceRow]:
    """Every recorded step for a queue id, a Message-ID header or a recipient address.

    An attempt names the provider profile its delivery was routed to and, through
    ``pool_of`` (source IP -> pool name, from the settings), the pool of its source IP."""
    key = key.strip()
    if "@" in key and "<" not in key:
        key = normalize_recipient(key) or key  # stored with the domain in lower-case A-labels
    bare = key.strip("<>")
    matching = select(messages.c.queue_id).where(or_(
        messages.c.queue_id == key.upper(),
        messages.c.header_message_id.in_([bare, f"<{bare}>"]),
    ))
    by_recipient = deliveries.c.recipient == key if "@" in key and "<" not in key else None
    queue_ids = {row[0] for row in await conn.execute(matching)}
    if by_recipient is not None:
        queue_ids |= {row[0] for row in await conn.execute(
            select(deliveries.c.queue_id).where(by_recipient).limit(limit))}
    refused = [] if by_recipient is None else [
        TraceRow(e.at, "-", e.recipient, e.kind, e.reply or "") for e in await conn.execute(
            select(events).where(events.c.queue_id == "", events.c.recipient == key)
            .order_by(events.c.id).limit(limit))]
    if not queue_ids:
        return sorted(refused + await _feedback_rows(conn, key if by_recipient is not None else None,
                                                     queue_ids, limit), key=lambda row: row.at)
    received = await conn.execute(
        select(messages.c.queue_id, messages.c.received_at, messages.c.mail_from,
               messages.c.client_ip, messages.c.recipient_count, messages.c.header_message_id,
               messages.c.stream, messages.c.list_key, messages.c.campaign)
        .where(messages.c.queue_id.in_(queue_ids)))
    out = [TraceRow(r.received_at, r.queue_id, None, "received", _received_detail(r)) for r in received]
    event_query = (select(events, deliveries.c.provider)
                   .outerjoin(deliveries, deliveries.c.id == events.c.delivery_id)
                   .where(events.c.queue_id.in_(queue_ids)))
    if by_recipient is not None:
        event_query = event_query.where(events.c.recipient == key)
    for e in await conn.execute(event_query.order_by(events.c.id).limit(limit)):
        out.append(TraceRow(e.at, e.queue_id, e.recipient, e.kind, _event_detail(e, pool_of or {})))
    out.extend(refused)
    out.extend(await _feedback_rows(conn, key if by_recipient is not None else None, queue_ids, limit))
    out.sort(key=lambda row: (row.at, row.kind != "received"))
    return out


def _received_detail(row: Any) -> str:
    routing = f"stream {row.stream}" + "".join(
        f", {name} {value}" for name, value in (("list", row.list_key), ("campaign", row.campaign)) if value)
    return (f"from <{row.mail_from}> client {row.client_ip}, {row.recipient_count} recipient(s), "
            f"{routing}, Message-ID {row.header_message_id or '(none)'}")


def _event_detail(row: Any, pool_of: Mapping[str, str]) -> str:
    """The reply, then where it came from: remote host, source IP (and its pool), provider."""
    where = f" via {row.remote}" if row.remote else ""
    source = ""
    if row.source_ip:
        pool = pool_of.get(row.source_ip)
        source = f" from {row.source_ip}" + (f" (pool {pool})" if pool else "")
    routed = row.provider and row.kind != DeliveryState.SUPPRESSED.value
    provider = f", provider {row.provider}" if routed else ""
    return f"{row.reply}{where}{source}{provider}"


async def _feedback_rows(conn: AsyncConnection, recipient: str | None, queue_ids: set[str],
                         limit: int) -> list[TraceRow]:
    """Each bounce and complaint explained: class, rule, evidence and what was done."""
    found = await feedback_store.trace_rows(conn, recipient=recipient, queue_ids=queue_ids, limit=limit)
    return [TraceRow(r.at, r.queue_id, r.recipient, r.kind, r.detail) for r in found]


async def suppress_pending(conn: AsyncConnection, recipient: str, list_key: str, reason: str,
                           now: datetime) -> int:
    """Stop queued marketing mail to ``recipient`` (from ``list_key``, or from every list when
    it is empty): an unsubscribe counts for mail already in the queue, not only the next.

    A copy already being delivered (its row leased) is left to finish, so that what really
    happened to it - delivered, bounced - is recorded; only waiting copies are dropped.
    """
    marketing = select(messages.c.queue_id).where(messages.c.stream == "marketing")
    if list_key:
        marketing = marketing.where(messages.c.list_key == list_key)
    where = and_(_same_address(recipient), deliveries.c.queue_id.in_(marketing.scalar_subquery()))
    return await _suppress_waiting(conn, where, reason, now)


@dataclass(frozen=True)
class InboundRow:
    id: int
    received_at: datetime
    recipients: tuple[str, ...]
    client_ip: str


async def new_inbound(conn: AsyncConnection, *, recipients_like: str | None = None,
                      skip: Sequence[int] = (), limit: int = 100) -> list[InboundRow]:
    """Inbound mail not yet handled, oldest first (bodies are not read); ``recipients_like``
    narrows it to rows whose recipients match a lower-case LIKE pattern."""
    query = (select(inbound.c.id, inbound.c.received_at, inbound.c.recipients, inbound.c.client_ip)
             .where(inbound.c.state == "new").order_by(inbound.c.id).limit(limit))
    if recipients_like is not None:
        query = query.where(func.lower(inbound.c.recipients).like(recipients_like))
    if skip:
        query = query.where(inbound.c.id.not_in(list(skip)))
    rows = await conn.execute(query)
    return [InboundRow(r.id, r.received_at, tuple(r.recipients.split("\n")), r.client_ip) for r in rows]


async def inbound_body(conn: AsyncConnection, inbound_id: int) -> bytes:
    row = (await conn.execute(select(inbound.c.body).where(inbound.c.id == inbound_id))).first()
    return bytes(row.body) if row is not None else b""


async def recent_delivery_to(conn: AsyncConnection, recipient: str, since: datetime,
                             message_id: str = "") -> tuple[DeliveryRef, bool] | None:
    """The copy sent (or tried) to ``recipient`` since ``since`` that a report naming only an
    address is about, and whether the report's original Message-ID is that message's: the
    copy with that Message-ID if there is one, else the latest (False). Copies never
    attempted prove nothing."""
    query = (select(deliveries.c.id, deliveries.c.queue_id, deliveries.c.recipient, messages.c.list_key,
                    messages.c.campaign)
             .join(messages, messages.c.queue_id == deliveries.c.queue_id)
             .where(_same_address(recipient), deliveries.c.attempts > 0, deliveries.c.updated_at >= since)
             .order_by(deliveries.c.id.desc()).limit(1))
    bare = message_id.strip().strip("<>").strip()
    if bare:
        row = (await conn.execute(query.where(messages.c.header_message_id.in_([bare, f"<{bare}>"])))).first()
        if row is not None:
            return DeliveryRef(row.id, row.queue_id, row.recipient, row.list_key, row.campaign), True
    row = (await conn.execute(query)).first()
    if row is None:
        return None
    return DeliveryRef(row.id, row.queue_id, row.recipient, row.list_key, row.campaign), False


async def begin_inbound_attempt(conn: AsyncConnection, inbound_id: int) -> int:
    """Count one more processing attempt of a new row; returns the count (0: not new any more)."""
    row = (await conn.execute(update(inbound).where(inbound.c.id == inbound_id, inbound.c.state == "new")
                              .values(attempts=inbound.c.attempts + 1).returning(inbound.c.attempts))).first()
    return int(row.attempts) if row is not None else 0


async def finish_inbound(conn: AsyncConnection, inbound_id: int, state: str) -> bool:
    """Give a new row its final state; False when another node (or an earlier try) already
    did, in which case the caller must not apply the row's effects."""
    changed = await conn.execute(update(inbound).where(inbound.c.id == inbound_id, inbound.c.state == "new")
                                 .values(state=state).returning(inbound.c.id))
    return changed.first() is not None


# -- operator views: `gateway queue list` and `gateway queue show` (read only) -----------------

@dataclass(frozen=True)
class DeliveryView:
    """One recipient's delivery as an operator sees it (``provider`` is "" before any attempt)."""

    queue_id: str
    recipient: str
    state: str
    attempts: int
    provider: str
    next_attempt_at: datetime
    last_reply: str | None


def _delivery_view(row: Any) -> DeliveryView:
    return DeliveryView(row.queue_id, row.recipient, row.state, row.attempts, row.provider,
                        row.next_attempt_at, row.last_reply)


_VIEW_COLUMNS = (deliveries.c.queue_id, deliveries.c.recipient, deliveries.c.state, deliveries.c.attempts,
                 deliveries.c.provider, deliveries.c.next_attempt_at, deliveries.c.last_reply)


async def list_queue(conn: AsyncConnection, *, queue_id: str | None = None, domain: str | None = None,
                     provider: str | None = None, campaign: str | None = None,
                     states: Iterable[str] | None = None, limit: int = 50) -> list[DeliveryView]:
    """Deliveries still in the queue (queued, deferred, held; or those in ``states``),
    soonest due first."""
    where = _selection("list", states, queue_id=queue_id, domain=domain, provider=provider,
                       campaign=campaign)
    query = select(*_VIEW_COLUMNS).where(*where)
    rows = await conn.execute(query.order_by(deliveries.c.next_attempt_at, deliveries.c.id).limit(limit))
    return [_delivery_view(row) for row in rows]


@dataclass(frozen=True)
class MessageView:
    queue_id: str
    received_at: datetime
    mail_from: str
    stream: str
    deliveries: list[DeliveryView]


async def show_message(conn: AsyncConnection, queue_id: str) -> MessageView | None:
    """A message and every delivery of it, in any state; None for an unknown queue id."""
    message = (await conn.execute(
        select(messages.c.queue_id, messages.c.received_at, messages.c.mail_from, messages.c.stream)
        .where(messages.c.queue_id == queue_id.strip().upper()))).first()
    if message is None:
        return None
    rows = await conn.execute(select(*_VIEW_COLUMNS).where(deliveries.c.queue_id == message.queue_id)
                              .order_by(deliveries.c.id))
    return MessageView(message.queue_id, message.received_at, message.mail_from, message.stream,
                       [_delivery_view(row) for row in rows])


async def delivery_providers(conn: AsyncConnection, delivery_ids: Iterable[int]) -> dict[int, str]:
    """The provider profile each delivery was last routed to ("" when it never was), so a
    bounce report or complaint about it can be counted per provider."""
    wanted = sorted(set(delivery_ids))
    if not wanted:
        return {}
    rows = await conn.execute(select(deliveries.c.id, deliveries.c.provider)
                              .where(deliveries.c.id.in_(wanted)))
    return {int(row.id): row.provider or "" for row in rows}
