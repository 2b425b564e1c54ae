"""What an unsubscribe does (RFC 8058 one-click, the button on the page behind it).

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
from gateway.storage import consent_store, queue_store
from gateway.storage.consent_store import ConsentChange, SuppressionRecord
from gateway.storage.database import Database
from gateway.storage.queue_store import DeliveryRef


@dataclass(frozen=True)
class Unsubscribed:
    recipient: str
    list_key: str  # "" = all marketing
    list_name: str
    dropped: int  # queued messages that will not be sent


@dataclass(frozen=True)
class Click:
    """Where an unsubscribe came from, kept as its proof."""

    source: str  # one-click | page
    ip: str | None
    user_agent: str | None
    at: datetime


async def recipient_of(db: Database, codec: TokenCodec, token: str) -> tuple[DeliveryRef, str]:
    """The delivery a link names, and its list's friendly name (raises BadToken)."""
    ref = await references.resolve(db, codec, token, Purpose.UNSUBSCRIBE)
    return ref, await _list_name(db, ref.list_key)


async def unsubscribe(db: Database, codec: TokenCodec, token: str, click: Click) -> Unsubscribed:
    ref, name = await recipient_of(db, codec, token)

    async def write(conn: AsyncConnection) -> int:
        digest = address_hash(ref.recipient)
        scope = "list" if ref.list_key else "global"
        await consent_store.add_suppressions(conn, [SuppressionRecord(
            ref.recipient, digest, scope, ref.list_key, "unsubscribe", click.source, click.at)])
        contact = await consent_store.contact_by_hash(conn, digest)
        listed = ref.list_key and await consent_store.list_info(conn, ref.list_key) is not None
        if contact is not None and listed:
            current = await consent_store.consent_for(conn, contact.id, ref.list_key)
            if current is None or current.status != "withdrawn":
                proof = f"List-Unsubscribe {click.source}, delivery {ref.delivery_id}"
                await consent_store.record_consent(conn, ConsentChange(
                    contact.id, digest, ref.list_key, "withdrawn", click.source, click.at, ip=click.ip,
                    user_agent=click.user_agent, proof=proof))
        return await queue_store.suppress_pending(conn, ref.recipient, ref.list_key,
                                                  "suppressed: unsubscribe", click.at)

    dropped = await db.write(write)
    return Unsubscribed(ref.recipient, ref.list_key, name, dropped)


async def _list_name(db: Database, key: str) -> str:
    if not key:
        return "all marketing mail"
    lists = {record.key: record for record in await db.read(consent_store.all_lists)}
    record = lists.get(key)
    if record is None:
        return key
    return record.names.get("en") or record.names.get("") or next(iter(record.names.values()), key)
