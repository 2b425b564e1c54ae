"""Consent and suppression storage on SQLite and PostgreSQL (upserts differ by dialect)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.ingest.addresses import address_hash
from gateway.ingest.gate import Gate
from gateway.ingest.rules import Consent, Suppression
from gateway.records import NewMessage
from gateway.rewrite.message import Controls
from gateway.storage import consent_store, queue_store
from gateway.storage.consent_store import ConsentChange, ListRecord, SuppressionRecord
from gateway.storage.database import Database

NOW = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


def _suppression(address: str, reason: str, scope: str = "global", key: str = "",
                 expires: datetime | None = None) -> SuppressionRecord:
    return SuppressionRecord(address, address_hash(address), scope, key, reason, "test", NOW, expires)


async def test_records_for_a_batch_with_every_kind_of_fact(db: Database) -> None:
    async def setup(conn: AsyncConnection) -> Any:
        assert await consent_store.add_list(conn, ListRecord("news", "marketing", True, {"en": "News"}, {},
                                                             {"weekly": 5}, NOW))
        assert not await consent_store.add_list(conn, ListRecord("news", "marketing", False, {}, {}, {}, NOW))
        ann = await consent_store.contact_id(conn, "Ann@example.net", address_hash("Ann@example.net"), NOW,
                                             "de", {"plan": "gold"})
        assert await consent_store.contact_id(conn, "ann@example.net", address_hash("ann@example.net"), NOW) == ann
        await consent_store.record_consent(conn, ConsentChange(ann, address_hash("ann@example.net"), "news",
                                                               "pending", "form", NOW, "weekly", "192.0.2.1",
                                                               "Firefox", "form v3: Yes, send me news"))
        await consent_store.record_consent(conn, ConsentChange(ann, address_hash("ann@example.net"), "news",
                                                               "confirmed", "form", NOW, proof="token abc"))
        await consent_store.add_suppressions(conn, [
            _suppression("bob@example.net", "hard-bounce"),
            _suppression("bob@example.net", "hard-bounce"),  # the same again: refreshed, not doubled
            _suppression("bob@example.net", "unsubscribe", "list", "news"),
            _suppression("bob@example.net", "manual", "campaign", "autumn"),  # another campaign
            _suppression("bob@example.net", "manual", "list", "tips")])
        await consent_store.record_sends(conn, [(address_hash("ann@example.net"), "news", NOW)])
        await consent_store.record_sends(conn, [(address_hash("ann@example.net"), "news", NOW + timedelta(1))])

    await db.write(setup)
    hashes = [address_hash(a) for a in ("ann@example.net", "bob@example.net", "new@example.net")]
    found = await db.read(lambda conn: consent_store.records_for(conn, hashes, "news", "spring"))
    ann, bob, new = (found[h] for h in hashes)
    assert ann.consent == Consent("confirmed", "weekly")  # frequency kept when not given again
    assert ann.last_sent_at == NOW + timedelta(1)
    assert sorted(bob.suppressions, key=lambda s: s.reason) == [
        Suppression("global", "", "hard-bounce"), Suppression("list", "news", "unsubscribe")]
    assert new.suppressions == [] and new.consent is None
    info = await db.read(lambda conn: consent_store.list_info(conn, "news"))
    assert info is not None and info.double_opt_in and info.cap_days == {"weekly": 5}
    history = await db.read(lambda conn: consent_store.consent_history_of(conn, address_hash("ann@example.net")))
    assert [(h["status"], h["proof"], h["ip"]) for h in history] == [
        ("pending", "form v3: Yes, send me news", "192.0.2.1"), ("confirmed", "token abc", None)]


async def test_erasure_keeps_the_hashed_proof(db: Database) -> None:
    key = address_hash("eve@example.net")

    async def setup(conn: AsyncConnection) -> Any:
        await consent_store.add_list(conn, ListRecord("news", "marketing", False, {}, {}, {}, NOW))
        contact = await consent_store.contact_id(conn, "eve@example.net", key, NOW, "en", {"name": "Eve"})
        await consent_store.record_consent(conn, ConsentChange(contact, key, "news", "confirmed", "api", NOW,
                                                               proof="api call 7"))
        return await consent_store.erase_contact(conn, key, NOW)

    assert await db.write(setup)
    history = await db.read(lambda conn: consent_store.consent_history_of(conn, key))
    assert [h["proof"] for h in history] == ["api call 7"]


async def test_gate_and_queue_record_suppressed_recipients_and_sends(db: Database) -> None:
    await db.write(lambda conn: consent_store.add_list(conn, ListRecord("news", "marketing", False, {}, {}, {},
                                                                       NOW)))
    gate = Gate(db, clock=lambda: NOW)
    verdicts = await gate.at_data(["a@example.net", "b@example.net"], Controls("marketing", "news"))
    assert {r: v.refusal.reason for r, v in verdicts.items()} == {"a@example.net": "no-consent",
                                                                  "b@example.net": "no-consent"}
    message = NewMessage(queue_id="Q" * 26, received_at=NOW, mail_from="news@example.com",
                         recipients=("c@example.net",), body=b"From: x@example.com\r\n\r\nhi\r\n",
                         client_ip="127.0.0.1", helo="h", stream="marketing", list_key="news",
                         suppressed=(("a@example.net", "suppressed: no-consent (news)"),))
    await db.write(lambda conn: queue_store.insert_messages(conn, [message]))
    rows = await db.read(lambda conn: queue_store.trace(conn, "a@example.net"))
    assert [(r.kind, r.detail) for r in rows if r.kind == "suppressed"] == [
        ("suppressed", "suppressed: no-consent (news)")]
    assert await db.read(queue_store.count_pending) == {"queued": 1}
    sent = await db.read(lambda conn: consent_store.records_for(conn, [address_hash("c@example.net")], "news", ""))
    assert sent[address_hash("c@example.net")].last_sent_at == NOW


async def test_suppression_pages_and_removal(db: Database) -> None:
    await db.write(lambda conn: consent_store.add_suppressions(
        conn, [_suppression(f"u{n}@example.net", "manual") for n in range(25)]))
    first = await db.read(lambda conn: consent_store.find_suppressions(conn, limit=10))
    rest = await db.read(lambda conn: consent_store.find_suppressions(conn, after_id=first[-1][0], limit=100))
    assert len(first) == 10 and len(rest) == 15
    removed = await db.write(lambda conn: consent_store.remove_suppressions(conn, address_hash("u3@example.net")))
    assert removed == 1


async def test_an_import_never_undoes_a_later_withdrawal_or_an_erasure(db: Database) -> None:
    from gateway.ingest.csv_import import ContactRow

    def row(address: str, at: datetime | None) -> ContactRow:
        return ContactRow(1, address, address_hash(address), "old list", at=at)

    async def setup(conn: AsyncConnection) -> None:
        await consent_store.add_list(conn, ListRecord("news", "marketing", False, {}, {}, {}, NOW))
        for address in ("left@example.net", "gone@example.net"):
            contact = await consent_store.contact_id(conn, address, address_hash(address), NOW)
            await consent_store.record_consent(conn, ConsentChange(contact, address_hash(address), "news",
                                                                   "withdrawn", "preference-page", NOW))
        await consent_store.erase_contact(conn, address_hash("gone@example.net"), NOW)

    await db.write(setup)
    rows = [row("left@example.net", None), row("left@example.net", NOW - timedelta(days=300)),
            row("gone@example.net", NOW + timedelta(days=1)), row("new@example.net", None)]
    new, suppressed, skipped = await db.write(
        lambda conn: consent_store.import_consents(conn, rows, "news", "import", NOW + timedelta(days=2)))
    assert (new, suppressed, skipped) == (1, 0, 3)
    found = await db.read(lambda conn: consent_store.records_for(
        conn, [address_hash(a) for a in ("left@example.net", "gone@example.net")], "news", ""))
    assert [r.consent.status if r.consent else None for r in found.values()] == ["withdrawn", "withdrawn"]
    # A consent given after the withdrawal (a new sign-up, with its time) does count.
    later = [row("left@example.net", NOW + timedelta(days=1))]
    assert await db.write(lambda conn: consent_store.import_consents(conn, later, "news", "import", NOW)) == (0, 0, 0)


async def test_adding_a_suppression_again_never_shortens_it(db: Database) -> None:
    soon, later = NOW + timedelta(days=1), NOW + timedelta(days=30)
    for expires in (None, soon):  # permanent, then an import with an expiry
        await db.write(lambda conn, e=expires: consent_store.add_suppressions(
            conn, [_suppression("kay@example.net", "manual", expires=e)]))
    await db.write(lambda conn: consent_store.add_suppressions(
        conn, [_suppression("lee@example.net", "manual", expires=soon)]))
    await db.write(lambda conn: consent_store.add_suppressions(
        conn, [_suppression("lee@example.net", "manual", expires=later)]))
    found = await db.read(lambda conn: consent_store.records_for(
        conn, [address_hash("kay@example.net"), address_hash("lee@example.net")], "", ""))
    assert [r.suppressions[0].expires_at for r in found.values()] == [None, later]
