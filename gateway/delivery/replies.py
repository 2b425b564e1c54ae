"""Turning remote SMTP answers and local failures into attempt results (pure)."""

from __future__ import annotations

from gateway.records import AttemptResult


def from_reply(code: int, message: str, *, remote: str | None = None,
               source_ip: str | None = None) -> AttemptResult:
    text = f"{code} {' / '.join(line.strip() for line in message.splitlines()) or ''}".strip()
    if 200 <= code < 300:
        kind = "delivered"
    elif 500 <= code < 600:
        kind = "permanent"
    else:
        kind = "transient"  # 4xx, and anything out of protocol
    return AttemptResult(kind, text, remote, source_ip)


def transient(reason: str, *, remote: str | None = None,
              source_ip: str | None = None) -> AttemptResult:
    return AttemptResult("transient", reason, remote, source_ip)


def permanent(reason: str, *, remote: str | None = None) -> AttemptResult:
    return AttemptResult("permanent", reason, remote)
