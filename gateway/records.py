"""Values that cross folders on a message's path: what intake stores, what the
scheduler claims, and what delivery reports back.

They live here, outside queue/ and storage/, so that both can use them without
importing each other.
"""

from __future__ import annotations

import enum
import secrets
from dataclasses import dataclass
from datetime import datetime

from gateway.feedback.verdicts import Verdict


class DeliveryState(enum.StrEnum):
    """Where one recipient's copy of a message stands.

    ``queued``, ``deferred`` and ``held`` are still in the queue; the others are final.
    Every recipient accepted at intake ends in exactly one final state, which is why
    received = delivered + bounced + suppressed + expired + (queued + deferred + held) holds.
    ``suppressed`` recipients were accepted at end of DATA but refused by the consent and
    suppression rules (a "drop", or one of several recipients): they are never sent.
    ``held`` copies are kept but never claimed (their campaign is paused, or an operator held
    them) until they are released; they do not expire while held.
    """

    QUEUED = "queued"
    DEFERRED = "deferred"
    HELD = "held"
    DELIVERED = "delivered"
    BOUNCED = "bounced"
    EXPIRED = "expired"
    SUPPRESSED = "suppressed"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATES


FINAL_STATES = frozenset({DeliveryState.DELIVERED, DeliveryState.BOUNCED, DeliveryState.EXPIRED,
                          DeliveryState.SUPPRESSED})
# Waiting for an attempt: what the scheduler claims once due.
PENDING_STATES = frozenset({DeliveryState.QUEUED, DeliveryState.DEFERRED})
# Still in the queue (not final): the pending states and the held copies. A body is kept while
# any delivery of its message is in one of them.
QUEUE_STATES = PENDING_STATES | {DeliveryState.HELD}


def new_queue_id(now: datetime) -> str:
    """A 26-character id that sorts by arrival time and is unique across nodes."""
    millis = int(now.timestamp() * 1000)
    return f"{millis:012X}{secrets.token_hex(7).upper()}"


@dataclass(frozen=True)
class NewMessage:
    """A message accepted at end of DATA, ready to be committed with its recipients."""

    queue_id: str
    received_at: datetime
    mail_from: str
    recipients: tuple[str, ...]
    body: bytes
    client_ip: str
    helo: str
    account: str | None = None
    header_message_id: str | None = None
    stream: str = "transactional"
    list_key: str = ""
    campaign: str = ""
    # Recipients refused by the ingest rules but recorded with the message: (address, why).
    suppressed: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class InboundMessage:
    """Mail addressed to the bounce domain (DSNs, complaints, unsubscribe mailto)."""

    received_at: datetime
    mail_from: str
    recipients: tuple[str, ...]
    body: bytes
    client_ip: str


@dataclass(frozen=True)
class ClaimedDelivery:
    """One recipient's copy, leased by this node for one delivery attempt."""

    delivery_id: int
    queue_id: str
    recipient: str
    domain: str
    mail_from: str
    attempts: int
    received_at: datetime
    stream: str = "transactional"
    list_key: str = ""
    campaign: str = ""


@dataclass(frozen=True)
class Outcome:
    """What one attempt achieved; ``state`` decides what storage records."""

    delivery_id: int
    queue_id: str
    recipient: str
    state: DeliveryState
    reply: str
    at: datetime
    next_attempt_at: datetime | None = None
    remote: str | None = None
    source_ip: str | None = None
    # The bounce classifier's reading of a failed attempt's reply (None when delivered).
    verdict: Verdict | None = None
    # The provider profile the attempt (or postponement) was routed to; "" when not shaped.
    provider: str = ""


@dataclass(frozen=True)
class AttemptResult:
    """What the remote side (or DNS) said to one delivery attempt.

    ``kind`` is the SMTP reading of the reply: delivered (2xx), transient (4xx,
    timeouts, connection failures: try again later) or permanent (5xx, null MX,
    non-existent domain). Bounce classification refines this in a later stage.
    """

    kind: str  # "delivered" | "transient" | "permanent"
    reply: str
    remote: str | None = None
    source_ip: str | None = None
