"""Confirming a double opt-in: shared by the admin API (POST /api/consents/confirm) and the
public confirmation page (POST /confirm/TOKEN).

The confirmation token (purpose CONFIRM) names a contact and is bound to its address and
the list. Confirming moves the pending consent to confirmed and keeps the token as the
proof. A second confirmation changes nothing; a token whose consent is no longer pending
(withdrawn) or was left pending longer than the window confirms nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.rewrite.tokens import BadToken, Binding, Purpose, TokenCodec, TokenParts
from gateway.storage import consent_store
from gateway.storage.consent_store import ConsentChange, ContactRow

DEFAULT_WINDOW = timedelta(days=30)


@dataclass(frozen=True)
class Evidence:
    """Who confirmed, kept with the token as the proof."""

    source: str  # api | confirm-page
    at: datetime
    ip: str | None = None
    user_agent: str | None = None


@dataclass(frozen=True)
class Confirmation:
    contact: ContactRow
    list_key: str
    status: str  # the consent's status now: pending | confirmed
    frequency: str | None


async def confirm(conn: AsyncConnection, codec: TokenCodec, token: str, list_key: str, evidence: Evidence,
                  window: timedelta = DEFAULT_WINDOW) -> Confirmation | None:
    """Confirm the consent ``token`` was issued for; None if it cannot be (bad or expired)."""
    found = await pending(conn, codec, token, evidence.at, window, list_key)
    if found is None or found.status == "confirmed":
        return found  # a second click (or a mail scanner's) changes nothing
    await consent_store.record_consent(conn, ConsentChange(
        found.contact.id, found.contact.address_hash, found.list_key, "confirmed", evidence.source,
        evidence.at, frequency=found.frequency, ip=evidence.ip, user_agent=evidence.user_agent, proof=token))
    return Confirmation(found.contact, found.list_key, "confirmed", found.frequency)


async def pending(conn: AsyncConnection, codec: TokenCodec, token: str, now: datetime,
                  window: timedelta = DEFAULT_WINDOW, list_key: str | None = None) -> Confirmation | None:
    """What ``token`` would confirm, without changing anything.

    The link in the mail (PUBLIC_URL/confirm/TOKEN) does not say which list it is for: without
    ``list_key`` the contact's consents are tried in turn against the token's MAC.
    """
    try:
        parts = codec.parse(token)
    except BadToken:
        return None
    contact = await consent_store.contact_by_id(conn, parts.delivery_id)
    if contact is None or contact.address is None:
        return None
    consents = await consent_store.consents_of(conn, contact.id)
    for consent in consents:
        if list_key is not None and consent.list_key != list_key:
            continue
        if _issued_for(codec, parts, contact, consent.list_key):
            if consent.status == "confirmed":
                return Confirmation(contact, consent.list_key, "confirmed", consent.frequency)
            if consent.status != "pending" or now - consent.updated_at > window:
                return None
            return Confirmation(contact, consent.list_key, "pending", consent.frequency)
    return None


def _issued_for(codec: TokenCodec, parts: TokenParts, contact: ContactRow, list_key: str) -> bool:
    assert contact.address is not None
    try:
        codec.verify(parts, Purpose.CONFIRM, Binding(contact.address, list_key))
    except BadToken:
        return False
    return True
