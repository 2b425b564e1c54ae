"""Checks and edits on a message's raw bytes at end of DATA (pure).

aiosmtpd splits DATA on CRLF only and keeps any bare CR, bare LF or NUL inside a
line. Such bytes are how SMTP smuggling works ("\\n.\\n" read as end of data by a
lenient server further on), so the gateway refuses them instead of passing them on.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime

from gateway.smtp import replies
from gateway.smtp.replies import Reply

MAX_LINE = 998  # octets, without CRLF (RFC 5321 4.5.3.1.6)



def content_problem(data: bytes) -> Reply | None:
    """The reply refusing ``data``, or None when it may be relayed."""
    if b"\x00" in data:
        return replies.NUL_IN_MESSAGE
    # Every CR and every LF must belong to a CRLF pair. Counting runs in C, in one pass
    # each; a regex with look-arounds costs several times more on large bodies.
    pairs = data.count(b"\r\n")
    if data.count(b"\r") != pairs or data.count(b"\n") != pairs:
        return replies.BARE_LINE_ENDING
    if len(data) > MAX_LINE and _has_long_line(data):
        return replies.LINE_TOO_LONG
    return None


WINDOW = 1 << 20  # bytes split at once: bounds memory and lets other threads run between windows


def _has_long_line(data: bytes) -> bool:
    """Any line over MAX_LINE octets? Linear, in C, one window at a time (data is CRLF-only)."""
    start, size = 0, len(data)
    while start < size:
        end = min(start + WINDOW, size)
        cut = size if end == size else data.rfind(b"\r\n", start, end)
        if cut < start:  # a whole window without a line break
            return True
        if max(map(len, data[start:cut].split(b"\r\n"))) > MAX_LINE:
            return True
        start = cut + 2
    return False


@dataclass(frozen=True)
class TraceInfo:
    """What the Received: header records about how a message came in (RFC 5321 4.4)."""

    helo: str
    client_ip: str
    hostname: str
    queue_id: str
    tls: bool
    authenticated: bool
    received_at: datetime
    recipient: str | None = None


def received_header(info: TraceInfo) -> bytes:
    protocol = "ESMTP" + ("S" if info.tls else "") + ("A" if info.authenticated else "")
    helo = _printable(info.helo) or "unknown"
    lines = [
        f"Received: from {helo} ([{info.client_ip}])",
        f"\tby {info.hostname} (smtp-gateway) with {protocol} id {info.queue_id}",
    ]
    if info.recipient:
        lines.append(f"\tfor <{_printable(info.recipient)}>")
    lines[-1] += f"; {format_datetime(info.received_at)}"
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


def _printable(text: str) -> str:
    return "".join(ch for ch in text if ch.isprintable() and ch not in "()<>;")[:255]
