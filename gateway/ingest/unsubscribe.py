"""What an unsubscribe does (RFC 8058 one-click, the mailto address, the preference centre).

The token in the link names a delivery; the delivery names the person and the list. The
person is out of that list at once - consent withdrawn (with the click as proof), a list
suppression so that the refusal says "unsubscribe", and their queued mail from the list
dropped - and doing it twice changes nothing more. Mail without a list is unsubscribed
from all marketing (a global suppression).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.ingest.addresses import address_hash
from gateway.queue import references
from gateway.rewrite.tokens import Purpose, TokenCodec
from gateway.storage import consent_store, feedback_store, queue_store
from gateway.storage.consent_store import ConsentChange, ContactRow, SuppressionRecord
from gateway.storage.database import Database
from gateway.storage.queue_store import DeliveryRef

DROPPED = "suppressed: unsubscribe"
ALL_MARKETING = ""  # the list key of history rows about all marketing (the global unsubscribe)


@dataclass(frozen=True)
class Unsubscribed:
    recipient: str
    list_key: str  # "" = all marketing
    dropped: int  # queued messages that will not be sent


@dataclass(frozen=True)
class Click:
    """Where an unsubscribe came from, kept as its proof."""

    source: str  # one-click | mailto | preference-page
    ip: str | None
    user_agent: str | None
    at: datetime


@dataclass(frozen=True)
class Left:
    """What leaving did: queued copies dropped, and whether anything was not so already."""

    dropped: int
    changed: bool  # a suppression newly in force or a consent withdrawn


async def unsubscribe(db: Database, codec: TokenCodec, token: str, click: Click) -> Unsubscribed:
    """Leave the list the link names (BadToken for a link that names no delivery)."""
    ref = await references.resolve(db, codec, token, Purpose.UNSUBSCRIBE)
    proof = f"List-Unsubscribe {click.source}, delivery {ref.delivery_id}"

    async def write(conn: AsyncConnection) -> int:
        if ref.list_key:
            left = await leave_list(conn, ref.recipient, ref.list_key, click, proof)
        else:
            left = await leave_all(conn, ref.recipient, click, proof)
        await record_unsubscribed(conn, ref, ref.list_key, click, left)
        return left.dropped

    dropped = await db.write(write)
    return Unsubscribed(ref.recipient, ref.list_key, dropped)


async def record_unsubscribed(conn: AsyncConnection, ref: DeliveryRef, list_key: str, click: Click,
                              left: Left) -> None:
    """The accounting event (and so the webhooks) hear of a leave once, not of every repeat."""
    if left.changed:
        await feedback_store.add_event(
            conn, at=click.at, kind="unsubscribed", queue_id=ref.queue_id, delivery_id=ref.delivery_id,
            recipient=ref.recipient, reply=f"unsubscribe ({click.source}) from {list_key or 'all lists'}")


async def leave_list(conn: AsyncConnection, recipient: str, list_key: str, click: Click, proof: str) -> Left:
    """Out of one list: suppression, withdrawn consent (once), queued mail of the list dropped.

    The suppression of an erased contact keeps no address (matched by hash, as erasure left
    the others).
    """
    digest = address_hash(recipient)
    contact = await consent_store.contact_by_hash(conn, digest)
    changed = not await consent_store.has_suppression(conn, digest, "list", list_key, "unsubscribe", click.at)
    address = _stored_address(recipient, contact)
    await consent_store.add_suppressions(conn, [SuppressionRecord(
        address, digest, "list", list_key, "unsubscribe", click.source, click.at)])
    if contact is not None and await consent_store.list_info(conn, list_key) is not None:
        current = await consent_store.consent_for(conn, contact.id, list_key)
        if current is None or current.status != "withdrawn":
            await consent_store.record_consent(conn, ConsentChange(
                contact.id, digest, list_key, "withdrawn", click.source, click.at, ip=click.ip,
                user_agent=click.user_agent, proof=proof))
            changed = True
    return Left(await queue_store.suppress_pending(conn, recipient, list_key, DROPPED, click.at), changed)


async def leave_all(conn: AsyncConnection, recipient: str, click: Click, proof: str) -> Left:
    """Out of all marketing: a global unsubscribe suppression and every queued marketing copy
    dropped. Transactional mail still goes (the rules let it pass an unsubscribe).

    A known contact gets a history row for list "" (all marketing, status withdrawn) with
    the click as proof, once: a repeat while the suppression is in force adds nothing.
    """
    digest = address_hash(recipient)
    contact = await consent_store.contact_by_hash(conn, digest)
    changed = not await consent_store.has_suppression(conn, digest, "global", "", "unsubscribe", click.at)
    await consent_store.add_suppressions(conn, [SuppressionRecord(
        _stored_address(recipient, contact), digest, "global", "", "unsubscribe", click.source, click.at)])
    if changed and contact is not None:
        await consent_store.append_history(conn, ConsentChange(
            contact.id, digest, ALL_MARKETING, "withdrawn", click.source, click.at, ip=click.ip,
            user_agent=click.user_agent, proof=proof))
    return Left(await queue_store.suppress_pending(conn, recipient, "", DROPPED, click.at), changed)


def _stored_address(recipient: str, contact: ContactRow | None) -> str | None:
    """The address written into a suppression: none for a contact erased on request."""
    return None if contact is not None and contact.erased_at is not None else recipient
