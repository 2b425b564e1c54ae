"""What intake changes in a message's headers, once, before it is queued (pure).

The mailer steers the gateway with control headers (``X-Gateway-Stream``,
``X-Gateway-List``, ``X-Gateway-Campaign``; names configurable). They are read here and
removed with every other ``X-Gateway-*`` field and the operator's list of internal
headers, so nothing meant for the gateway reaches a recipient. Message-ID and Date are
added when missing (RFC 5322 requires Date; receivers score a missing Message-ID), and
Feedback-ID is set so that Gmail's feedback loop reports by campaign, list and sender.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime
from typing import Literal

from gateway.config.units import KEY_RULE, is_key
from gateway.rewrite import headers as h
from gateway.rewrite.headers import Header, HeaderProblem

Stream = Literal["marketing", "transactional"]
STREAMS: tuple[Stream, ...] = ("marketing", "transactional")
CONTROL_PREFIX = b"X-Gateway-"
LIST_UNSUBSCRIBE = (b"List-Unsubscribe", b"List-Unsubscribe-Post")


@dataclass(frozen=True)
class HeaderRules:
    """The operator's choices (config [headers]), as values."""

    stream_header: bytes = b"X-Gateway-Stream"
    list_header: bytes = b"X-Gateway-List"
    campaign_header: bytes = b"X-Gateway-Campaign"
    strip: tuple[bytes, ...] = ()
    replace_list_unsubscribe: bool = True

    @property
    def control_names(self) -> tuple[bytes, ...]:
        return (self.stream_header, self.list_header, self.campaign_header)


@dataclass(frozen=True)
class Controls:
    """How the gateway treats a message: its stream, topical list and campaign."""

    stream: Stream = "transactional"
    list_key: str = ""
    campaign: str = ""


@dataclass(frozen=True)
class Origin:
    """Who sent the message and when intake took it, for the fields intake adds."""

    sender_id: str
    hostname: str
    queue_id: str
    received_at: datetime


def read_controls(headers: Sequence[Header], rules: HeaderRules, defaults: Controls) -> Controls:
    """Stream, list and campaign from the control headers, else the account's defaults."""
    stream = _single(headers, rules.stream_header)
    if stream is not None and stream.lower() not in STREAMS:
        raise HeaderProblem(f"{rules.stream_header.decode()} must be marketing or transactional, "
                            f"not {stream[:40]!a}")
    list_key = _key(headers, rules.list_header)
    campaign = _key(headers, rules.campaign_header)
    return Controls(
        stream=_stream(stream.lower()) if stream is not None else defaults.stream,
        list_key=list_key if list_key is not None else defaults.list_key,
        campaign=campaign if campaign is not None else defaults.campaign,
    )


def _stream(value: str) -> Stream:
    return "marketing" if value == "marketing" else "transactional"


def _single(headers: Sequence[Header], name: bytes) -> str | None:
    found = h.values(headers, name)
    if len(found) > 1:
        raise HeaderProblem(f"more than one {name.decode()} header")
    return found[0] if found else None


def _key(headers: Sequence[Header], name: bytes) -> str | None:
    value = _single(headers, name)
    if value is not None and not is_key(value):
        raise HeaderProblem(f"{name.decode()} must be {KEY_RULE}, not {value[:40]!a}")
    return value


def prepare(headers: Sequence[Header], rules: HeaderRules, controls: Controls,
            origin: Origin) -> list[Header]:
    """The header section as it is queued: control and internal fields gone, fields added."""
    dropped = [*rules.control_names, *rules.strip, b"Feedback-ID"]
    if rules.replace_list_unsubscribe:
        dropped.extend(LIST_UNSUBSCRIBE)
    kept = h.without(headers, dropped, prefixes=[CONTROL_PREFIX])
    if not h.has(kept, b"Message-ID"):
        kept.append(h.field(b"Message-ID", f"<{origin.queue_id}@{origin.hostname}>"))
    if not h.has(kept, b"Date"):
        kept.append(h.field(b"Date", format_datetime(origin.received_at)))
    kept.append(h.field(b"Feedback-ID", feedback_id(controls, origin.sender_id)))
    return kept


def feedback_id(controls: Controls, sender_id: str) -> str:
    """campaign:list:stream:sender, the order Gmail's Postmaster Tools aggregate by."""
    sender = re.sub(r"[^A-Za-z0-9._-]", "-", sender_id)[:64] or "gateway"
    return f"{controls.campaign}:{controls.list_key}:{controls.stream}:{sender}"
