"""What the bounce classifier says about one reply or one DSN recipient (pure values).

The same verdict comes from a synchronous reply at delivery time and from an
asynchronous DSN, so that both change an address's state the same way. Severity is
about the *address*, not the message: a 5xx spam block bounces this message but says
nothing about whether the mailbox exists, so it is ``soft``. ``hard`` is kept for
proof that the address itself is permanently invalid.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Severity(enum.StrEnum):
    HARD = "hard"  # the address is dead: suppress globally at once
    SOFT = "soft"  # this message failed; the address may well be alive


class BounceClass(enum.StrEnum):
    USER_UNKNOWN = "user-unknown"
    MAILBOX_FULL = "mailbox-full"
    MAILBOX_DISABLED = "mailbox-disabled"
    DOMAIN_NOT_FOUND = "domain-not-found"
    NO_MX = "no-mx"
    SPAM_BLOCK = "spam-block"
    POLICY = "policy"  # policy or reputation refusal
    RATE_LIMIT = "rate-limit"
    CONTENT = "content"
    MESSAGE_TOO_LARGE = "message-too-large"
    AUTH_FAILURE = "auth-failure"  # SPF, DKIM or DMARC
    TLS = "tls"
    RELAY_DENIED = "relay-denied"
    NETWORK = "network"  # timeouts, refused connections, DNS trouble
    EXPIRED = "expired"  # gave up retrying
    OTHER = "other"
    COMPLAINT = "complaint"  # ARF reports only; never the reading of a reply


class ReportKind(enum.StrEnum):
    DSN = "dsn"
    ARF = "arf"
    AUTO_REPLY = "auto-reply"
    NOT_BOUNCE = "not-bounce"


@dataclass(frozen=True)
class Verdict:
    """One classification: which class, how severe, and which rule said so (for trace)."""

    bounce_class: BounceClass
    severity: Severity
    rule: str  # the name of the matching rule in policies/bounces.toml, or "default"
    status: str = ""  # enhanced status code (e.g. "5.1.1") when one was found

    @property
    def is_hard(self) -> bool:
        return self.severity is Severity.HARD
