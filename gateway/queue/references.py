"""From a token in an unsubscribe link or a bounce address back to the delivery it names.

The one-click endpoint, the mailto unsubscribe and bounce processing all start here: a
token is trusted only once its MAC matches the recipient, list and campaign recorded for
the delivery, so a guessed or altered token names nothing.
"""

from __future__ import annotations

from gateway.rewrite.tokens import BadToken, Binding, Purpose, TokenCodec
from gateway.storage import queue_store
from gateway.storage.database import Database
from gateway.storage.queue_store import DeliveryRef


async def resolve(db: Database, codec: TokenCodec, token: str, purpose: Purpose) -> DeliveryRef:
    """The delivery ``token`` was issued for; BadToken if there is none (or it was forged)."""
    parts = codec.parse(token)
    ref = await db.read(lambda conn: queue_store.delivery_ref(conn, parts.delivery_id))
    if ref is None:
        raise BadToken("no such delivery")
    codec.verify(parts, purpose, Binding(ref.recipient, ref.list_key, ref.campaign))
    return ref
