"""Consent and suppression persistence: every SQL statement the ingest gate, the CLI and
the admin API need. Functions take an open connection; callers choose the transaction."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import (
    ColumnElement,
    String,
    and_,
    case,
    delete,
    func,
    insert,
    literal,
    null,
    or_,
    select,
    union_all,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.ingest.csv_import import ContactRow as ImportRow
from gateway.ingest.rules import Consent, ListInfo, Suppression
from gateway.storage.database import upsert
from gateway.storage.tables import (
    UTCDateTime,
    consent_history,
    consents,
    contacts,
    deliveries,
    lists,
    marketing_sends,
    messages,
    suppressions,
)

T = TypeVar("T")


# -- facts for decisions ----------------------------------------------------------------

@dataclass
class RecipientRecords:
    suppressions: list[Suppression]
    consent: Consent | None = None
    last_sent_at: datetime | None = None


async def records_for(conn: AsyncConnection, hashes: Sequence[str], list_key: str,
                      campaign: str) -> dict[str, RecipientRecords]:
    """Suppressions (global, this list's, this campaign's), consent and last send, by hash.

    One statement for the whole batch: three indexed lookups joined with UNION ALL. Each
    statement is a round trip to the database driver's thread (~0.5 ms with aiosqlite), so
    one statement instead of three is what keeps a decision within its latency budget.
    """
    found = {h: RecipientRecords([]) for h in hashes}
    for part in _batches(hashes):
        await _read_records(conn, part, list_key, campaign, found)
    return found


async def _read_records(conn: AsyncConnection, hashes: Sequence[str], list_key: str, campaign: str,
                        found: dict[str, RecipientRecords]) -> None:
    scopes = [suppressions.c.scope == "global"]
    if list_key:
        scopes.append(and_(suppressions.c.scope == "list", suppressions.c.scope_key == list_key))
    if campaign:
        scopes.append(and_(suppressions.c.scope == "campaign", suppressions.c.scope_key == campaign))
    parts = [select(literal("s").label("kind"), suppressions.c.address_hash, suppressions.c.scope.label("a"),
                    suppressions.c.scope_key.label("b"), suppressions.c.reason.label("c"),
                    suppressions.c.expires_at.label("at"))
             .where(suppressions.c.address_hash.in_(hashes), or_(*scopes))]
    if list_key:
        no_text, no_time = null().cast(String), null().cast(UTCDateTime())
        parts.append(select(literal("c"), contacts.c.address_hash, consents.c.status, consents.c.frequency,
                            no_text, no_time)
                     .join(consents, consents.c.contact_id == contacts.c.id)
                     .where(contacts.c.address_hash.in_(hashes), consents.c.list_key == list_key))
        parts.append(select(literal("m"), marketing_sends.c.address_hash, no_text, no_text, no_text,
                            marketing_sends.c.last_at)
                     .where(marketing_sends.c.address_hash.in_(hashes),
                            marketing_sends.c.list_key == list_key))
    for row in await conn.execute(union_all(*parts)):
        record = found[row.address_hash]
        if row.kind == "s":
            record.suppressions.append(Suppression(row.a, row.b, row.c, row.at))
        elif row.kind == "c":
            record.consent = Consent(row.a, row.b)
        else:
            record.last_sent_at = row.at


async def list_info(conn: AsyncConnection, key: str) -> ListInfo | None:
    row = (await conn.execute(select(lists).where(lists.c.key == key))).first()
    if row is None:
        return None
    return ListInfo(row.key, row.kind, bool(row.double_opt_in), json.loads(row.cap_days))


async def record_sends(conn: AsyncConnection, sends: Iterable[tuple[str, str, datetime]]) -> None:
    """Remember (address hash, list, time) of accepted marketing copies for the caps."""
    rows = [{"address_hash": h, "list_key": key, "last_at": at} for h, key, at in sends]
    if not rows:
        return
    statement = upsert(conn, marketing_sends)
    await conn.execute(statement.on_conflict_do_update(
        index_elements=["address_hash", "list_key"], set_={"last_at": statement.excluded.last_at}), rows)


# -- lists --------------------------------------------------------------------------------

@dataclass(frozen=True)
class ListRecord:
    key: str
    kind: str
    double_opt_in: bool
    names: Mapping[str, str]
    descriptions: Mapping[str, str]
    cap_days: Mapping[str, float]
    created_at: datetime


async def add_list(conn: AsyncConnection, record: ListRecord) -> bool:
    """Create the list; False when the key exists (nothing changed)."""
    if (await conn.execute(select(lists.c.key).where(lists.c.key == record.key))).first():
        return False
    await conn.execute(insert(lists).values(
        key=record.key, kind=record.kind, double_opt_in=record.double_opt_in,
        names=json.dumps(dict(record.names), ensure_ascii=False),
        descriptions=json.dumps(dict(record.descriptions), ensure_ascii=False),
        cap_days=json.dumps(dict(record.cap_days)), created_at=record.created_at))
    return True


async def all_lists(conn: AsyncConnection) -> list[ListRecord]:
    rows = await conn.execute(select(lists).order_by(lists.c.key))
    return [ListRecord(r.key, r.kind, bool(r.double_opt_in), json.loads(r.names), json.loads(r.descriptions),
                       json.loads(r.cap_days), r.created_at) for r in rows]


# -- suppressions ---------------------------------------------------------------------------

@dataclass(frozen=True)
class SuppressionRecord:
    address: str | None
    address_hash: str
    scope: str
    scope_key: str
    reason: str
    source: str
    created_at: datetime
    expires_at: datetime | None = None
    note: str | None = None


async def add_suppressions(conn: AsyncConnection, records: Sequence[SuppressionRecord]) -> int:
    """Insert; an existing (address, scope, key, reason) is refreshed, not duplicated.

    Adding a suppression again never shortens it: the later expiry wins, and "never" (NULL)
    beats any date. Lifting one is `remove_suppressions`' job, not a side effect of an import.
    """
    if not records:
        return 0
    statement = upsert(conn, suppressions)
    old, new = suppressions.c.expires_at, statement.excluded.expires_at
    result = await conn.execute(statement.on_conflict_do_update(
        index_elements=["address_hash", "scope", "scope_key", "reason"],
        set_={"expires_at": case((or_(old.is_(None), new.is_(None)), None), (new > old, new), else_=old),
              "note": func.coalesce(statement.excluded.note, suppressions.c.note),
              "source": statement.excluded.source}),
        [{"address": r.address, "address_hash": r.address_hash, "scope": r.scope, "scope_key": r.scope_key,
          "reason": r.reason, "source": r.source, "created_at": r.created_at, "expires_at": r.expires_at,
          "note": r.note} for r in records])
    return int(result.rowcount or 0)


async def remove_suppressions(conn: AsyncConnection, address_hash: str, *, scope: str | None = None,
                              scope_key: str | None = None, reason: str | None = None) -> int:
    query = delete(suppressions).where(suppressions.c.address_hash == address_hash)
    if scope is not None:
        query = query.where(suppressions.c.scope == scope)
    if scope_key is not None:
        query = query.where(suppressions.c.scope_key == scope_key)
    if reason is not None:
        query = query.where(suppressions.c.reason == reason)
    return int((await conn.execute(query)).rowcount or 0)


async def find_suppressions(conn: AsyncConnection, *, address_hash: str | None = None,
                            after_id: int = 0, limit: int = 1000) -> list[tuple[int, SuppressionRecord]]:
    """Suppressions in id order from ``after_id`` (pages for export), optionally one address."""
    query = select(suppressions).where(suppressions.c.id > after_id).order_by(suppressions.c.id).limit(limit)
    if address_hash is not None:
        query = query.where(suppressions.c.address_hash == address_hash)
    return [(r.id, SuppressionRecord(r.address, r.address_hash, r.scope, r.scope_key, r.reason, r.source,
                                     r.created_at, r.expires_at, r.note))
            for r in await conn.execute(query)]


# -- contacts and consents ------------------------------------------------------------------

async def contact_id(conn: AsyncConnection, address: str, address_hash: str, now: datetime,
                     locale: str | None = None, attributes: Mapping[str, Any] | None = None) -> int:
    """The contact for this address, created if new (locale and attributes then set)."""
    row = (await conn.execute(select(contacts.c.id).where(contacts.c.address_hash == address_hash))).first()
    if row is not None:
        return int(row.id)
    result = await conn.execute(insert(contacts).values(
        address=address, address_hash=address_hash, created_at=now, locale=locale,
        attributes=json.dumps(dict(attributes or {}), ensure_ascii=False)).returning(contacts.c.id))
    return int(result.scalar_one())


@dataclass(frozen=True)
class ConsentChange:
    contact_id: int
    address_hash: str
    list_key: str
    status: str
    source: str
    at: datetime
    frequency: str | None = None
    ip: str | None = None
    user_agent: str | None = None
    proof: str | None = None


async def record_consent(conn: AsyncConnection, change: ConsentChange) -> None:
    """Set the current state and append the change, with its proof, to the history.

    A new confirmed consent lifts the list's own unsubscribe suppression: the person came
    back. Suppressions for any other reason (bounces, complaints) stay.
    """
    if change.status == "confirmed":
        await _lift_unsubscribes(conn, [change.address_hash], change.list_key)
    statement = upsert(conn, consents)
    await conn.execute(statement.values(
        contact_id=change.contact_id, list_key=change.list_key, status=change.status,
        frequency=change.frequency, updated_at=change.at).on_conflict_do_update(
        index_elements=["contact_id", "list_key"],
        set_={"status": change.status, "updated_at": change.at,
              "frequency": change.frequency if change.frequency is not None else consents.c.frequency}))
    await conn.execute(insert(consent_history).values(
        contact_id=change.contact_id, address_hash=change.address_hash, list_key=change.list_key,
        status=change.status, frequency=change.frequency, source=change.source, at=change.at,
        ip=change.ip, user_agent=change.user_agent, proof=change.proof))


async def _lift_unsubscribes(conn: AsyncConnection, hashes: Sequence[str], list_key: str) -> None:
    for part in _batches(hashes):
        await conn.execute(delete(suppressions).where(
            suppressions.c.address_hash.in_(part), suppressions.c.scope == "list",
            suppressions.c.scope_key == list_key, suppressions.c.reason == "unsubscribe"))


async def consent_history_of(conn: AsyncConnection, address_hash: str) -> list[dict[str, Any]]:
    rows = await conn.execute(select(consent_history).where(consent_history.c.address_hash == address_hash)
                              .order_by(consent_history.c.id))
    return [dict(row._mapping) for row in rows]


async def erase_contact(conn: AsyncConnection, address_hash: str, now: datetime) -> bool:
    """Erasure request: the address and attributes go, the hashed consent proof stays."""
    result = await conn.execute(update(contacts).where(contacts.c.address_hash == address_hash)
                                .values(address=None, attributes="{}", locale=None, erased_at=now))
    return bool(result.rowcount)


# -- reading contacts back (admin API) ------------------------------------------------------

@dataclass(frozen=True)
class ContactRow:
    id: int
    address: str | None
    address_hash: str
    created_at: datetime
    locale: str | None
    attributes: dict[str, Any]
    erased_at: datetime | None


@dataclass(frozen=True)
class ConsentRow:
    list_key: str
    status: str
    frequency: str | None
    updated_at: datetime


async def _contact_where(conn: AsyncConnection, clause: ColumnElement[bool]) -> ContactRow | None:
    row = (await conn.execute(select(contacts).where(clause))).first()
    if row is None:
        return None
    return ContactRow(int(row.id), row.address, row.address_hash, row.created_at, row.locale,
                      json.loads(row.attributes or "{}"), row.erased_at)


async def contact_by_hash(conn: AsyncConnection, digest: str) -> ContactRow | None:
    return await _contact_where(conn, contacts.c.address_hash == digest)


async def contact_by_id(conn: AsyncConnection, contact_id: int) -> ContactRow | None:
    return await _contact_where(conn, contacts.c.id == contact_id)


async def consents_of(conn: AsyncConnection, contact_id: int) -> list[ConsentRow]:
    rows = await conn.execute(select(consents.c.list_key, consents.c.status, consents.c.frequency,
                                     consents.c.updated_at)
                              .where(consents.c.contact_id == contact_id).order_by(consents.c.list_key))
    return [ConsentRow(r.list_key, r.status, r.frequency, r.updated_at) for r in rows]


async def consent_for(conn: AsyncConnection, contact_id: int, list_key: str) -> ConsentRow | None:
    return next((c for c in await consents_of(conn, contact_id) if c.list_key == list_key), None)


# -- bulk import and export (gateway contacts import|export) --------------------------------
# contact_id and record_consent work one row at a time; through the asyncio driver each
# statement costs ~0.4 ms, which would make a million-row import take half an hour. These
# do the same per chunk with a few executemany statements, and page consents for export.

IN_BATCH = 500  # hashes per IN (...) list: well under every driver's parameter limit

@dataclass(frozen=True)
class ConsentExportRow:
    contact_id: int
    address: str
    locale: str | None
    list_key: str
    status: str
    frequency: str | None
    source: str
    at: datetime | None
    proof: str


def _batches(items: Sequence[T]) -> Iterator[Sequence[T]]:
    """IN (...) lists of at most IN_BATCH values (PostgreSQL allows 32,767 parameters)."""
    for start in range(0, len(items), IN_BATCH):
        yield items[start:start + IN_BATCH]


async def contact_ids(conn: AsyncConnection, hashes: Sequence[str]) -> dict[str, int]:
    found: dict[str, int] = {}
    for part in _batches(hashes):
        rows = await conn.execute(select(contacts.c.address_hash, contacts.c.id)
                                  .where(contacts.c.address_hash.in_(part)))
        found.update({row.address_hash: int(row.id) for row in rows})
    return found


async def import_consents(conn: AsyncConnection, rows: Sequence[ImportRow], list_key: str, source: str,
                        now: datetime) -> tuple[int, int, int]:
    """Confirmed consent for each row (contacts created as needed), as record_consent does
    one by one. Returns (contacts created, rows whose address has an active global
    suppression, rows skipped).

    A file never undoes what a person did later: a row for an erased contact, or for a
    consent withdrawn at or after the row's consent time (a row without a time counts as
    older), is skipped. Re-importing last year's list must not re-subscribe whoever left.
    """
    hashes = [row.address_hash for row in rows]
    suppressed = 0
    for part in _batches(hashes):
        records = await records_for(conn, part, "", "")
        suppressed += sum(1 for record in records.values()
                          if any(s.scope == "global" and s.active(now) for s in record.suppressions))
    ids = await contact_ids(conn, hashes)
    new = [row for row in rows if row.address_hash not in ids]
    if new:
        statement = upsert(conn, contacts).on_conflict_do_nothing(index_elements=["address_hash"])
        await conn.execute(statement, [
            {"address": row.address, "address_hash": row.address_hash, "created_at": now,
             "locale": row.locale, "attributes": "{}"} for row in new])
        ids.update(await contact_ids(conn, [row.address_hash for row in new]))
    blocked = await _withdrawn_or_erased(conn, list(ids.values()), list_key)
    kept = [row for row in rows if not _overruled(blocked.get(ids[row.address_hash]), row.at)]
    skipped = len(rows) - len(kept)
    rows = kept
    if not rows:
        return len(new), suppressed, skipped
    statement = upsert(conn, consents)
    await conn.execute(statement.on_conflict_do_update(
        index_elements=["contact_id", "list_key"],
        set_={"status": statement.excluded.status, "updated_at": statement.excluded.updated_at,
              "frequency": func.coalesce(statement.excluded.frequency, consents.c.frequency)}),
        [{"contact_id": ids[row.address_hash], "list_key": list_key, "status": "confirmed",
          "frequency": row.frequency, "updated_at": row.at or now} for row in rows])
    await _lift_unsubscribes(conn, [row.address_hash for row in rows], list_key)
    await conn.execute(insert(consent_history), [
        {"contact_id": ids[row.address_hash], "address_hash": row.address_hash, "list_key": list_key,
         "status": "confirmed", "frequency": row.frequency, "source": source, "at": row.at or now,
         "ip": row.ip, "user_agent": None, "proof": row.proof} for row in rows])
    return len(new), suppressed, skipped


ERASED = datetime.max.replace(tzinfo=UTC)  # no row time is later: an erased contact stays out


async def _withdrawn_or_erased(conn: AsyncConnection, ids: Sequence[int],
                               list_key: str) -> dict[int, datetime]:
    """Contacts a file must not re-subscribe, with the time that a row would have to beat."""
    blocked: dict[int, datetime] = {}
    for part in _batches(ids):
        for row in await conn.execute(select(contacts.c.id).where(contacts.c.id.in_(part),
                                                                  contacts.c.erased_at.is_not(None))):
            blocked[int(row.id)] = ERASED
        for row in await conn.execute(select(consents.c.contact_id, consents.c.updated_at).where(
                consents.c.contact_id.in_(part), consents.c.list_key == list_key,
                consents.c.status == "withdrawn")):
            blocked.setdefault(int(row.contact_id), row.updated_at)
    return blocked


def _overruled(withdrawn_at: datetime | None, consent_at: datetime | None) -> bool:
    return withdrawn_at is not None and (consent_at is None or consent_at <= withdrawn_at)


async def consent_page(conn: AsyncConnection, list_key: str | None, after: tuple[int, str],
                        limit: int) -> list[ConsentExportRow]:
    """Consents of contacts that are not erased, in (contact, list) order after ``after``,
    each with the source, time and proof of its latest history row."""
    query = (select(consents.c.contact_id, consents.c.list_key, consents.c.status, consents.c.frequency,
                    contacts.c.address, contacts.c.locale)
             .join(contacts, contacts.c.id == consents.c.contact_id)
             .where(contacts.c.erased_at.is_(None),
                    or_(consents.c.contact_id > after[0],
                        and_(consents.c.contact_id == after[0], consents.c.list_key > after[1])))
             .order_by(consents.c.contact_id, consents.c.list_key).limit(limit))
    if list_key is not None:
        query = query.where(consents.c.list_key == list_key)
    page = list(await conn.execute(query))
    if not page:
        return []
    latest = (select(func.max(consent_history.c.id))
              .where(consent_history.c.contact_id.in_({row.contact_id for row in page}))
              .group_by(consent_history.c.contact_id, consent_history.c.list_key))
    if list_key is not None:
        latest = latest.where(consent_history.c.list_key == list_key)
    history = {(row.contact_id, row.list_key): row for row in await conn.execute(
        select(consent_history.c.contact_id, consent_history.c.list_key, consent_history.c.source,
               consent_history.c.at, consent_history.c.proof).where(consent_history.c.id.in_(latest)))}
    result = []
    for row in page:
        event = history.get((row.contact_id, row.list_key))
        result.append(ConsentExportRow(
            int(row.contact_id), row.address, row.locale, row.list_key, row.status, row.frequency,
            event.source if event else "", event.at if event else None, (event.proof or "") if event else ""))
    return result


# -- preference centre (gateway/ingest/preferences.py) ----------------------------------------

async def append_history(conn: AsyncConnection, change: ConsentChange) -> None:
    """A history row without a consent row: the master switch, whose list key is "" (all
    marketing), has no list to hold a current state; its state is the global suppression."""
    await conn.execute(insert(consent_history).values(
        contact_id=change.contact_id, address_hash=change.address_hash, list_key=change.list_key,
        status=change.status, frequency=change.frequency, source=change.source, at=change.at,
        ip=change.ip, user_agent=change.user_agent, proof=change.proof))


async def global_unsubscribe(conn: AsyncConnection, address_hash: str, now: datetime) -> bool:
    """Whether the address has left all marketing (an active global unsubscribe suppression)."""
    row = (await conn.execute(select(suppressions.c.expires_at).where(
        suppressions.c.address_hash == address_hash, suppressions.c.scope == "global",
        suppressions.c.reason == "unsubscribe"))).first()
    return row is not None and (row.expires_at is None or row.expires_at > now)


async def has_suppression(conn: AsyncConnection, address_hash: str, scope: str, scope_key: str, reason: str,
                          now: datetime) -> bool:
    """Whether this exact suppression is in force: an unsubscribe repeated finds it and adds nothing."""
    row = (await conn.execute(select(suppressions.c.expires_at).where(
        suppressions.c.address_hash == address_hash, suppressions.c.scope == scope,
        suppressions.c.scope_key == scope_key, suppressions.c.reason == reason))).first()
    return row is not None and (row.expires_at is None or row.expires_at > now)


async def message_received_at(conn: AsyncConnection, delivery_id: int) -> datetime | None:
    """When the message of a delivery reached the gateway: the age of the link in it."""
    row = (await conn.execute(select(messages.c.received_at)
                              .join(deliveries, deliveries.c.queue_id == messages.c.queue_id)
                              .where(deliveries.c.id == delivery_id))).first()
    return None if row is None else row.received_at
