"""One recipient's copy of a queued message: its own headers, return path and signatures (pure).

Every copy differs from its siblings (the VERP return path always, List-Unsubscribe for
marketing mail), so each recipient gets its own SMTP transaction; the body is stored once
and shared. DKIM signs last, over the added fields, so a receiver can trust them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gateway.rewrite import headers as h
from gateway.rewrite.headers import Header
from gateway.rewrite.message import Controls
from gateway.rewrite.tokens import UNSUBSCRIBE_PREFIX, VERP_PREFIX, Binding, Purpose, TokenCodec
from gateway.signing import signer
from gateway.signing.keys import SigningKey


@dataclass(frozen=True)
class CopyRules:
    """Deployment values every copy uses."""

    public_url: str
    bounce_domain: str
    verp: bool = True
    transactional_list_unsubscribe: bool = False


@dataclass(frozen=True)
class Recipient:
    """The delivery a copy is for."""

    delivery_id: int
    address: str
    mail_from: str
    controls: Controls


@dataclass(frozen=True)
class Copy:
    """One recipient's copy: its own header section, and the body shared with its siblings
    (a view, not a copy: a queue of waiting copies holds one body, not one each)."""

    mail_from: str
    head: bytes
    body: memoryview
    smtputf8: bool = False  # the mailer sent it with SMTPUTF8 (VERP hides a UTF-8 sender)

    @property
    def data(self) -> bytes:
        return self.head + self.body


def list_unsubscribe(token: str, rules: CopyRules) -> list[Header]:
    """RFC 2369 + RFC 8058: an https one-click link first, then mailto for older clients."""
    url = f"{rules.public_url.rstrip('/')}/u/{token}"
    mailto = f"mailto:{UNSUBSCRIBE_PREFIX}{token}@{rules.bounce_domain}"
    return [h.field(b"List-Unsubscribe", f"<{url}>, <{mailto}>"),
            h.field(b"List-Unsubscribe-Post", "List-Unsubscribe=One-Click")]


def wants_list_unsubscribe(headers: Sequence[Header], controls: Controls, rules: CopyRules) -> bool:
    """Marketing mail always (unless the mailer's own pair was kept); transactional if configured."""
    if h.has(headers, b"List-Unsubscribe"):
        return False
    return controls.stream == "marketing" or rules.transactional_list_unsubscribe


def return_path(recipient: Recipient, codec: TokenCodec, rules: CopyRules) -> str:
    """b+TOKEN@BOUNCE_DOMAIN, so a bounce names its delivery; DSNs (null sender) stay null."""
    if not recipient.mail_from or not rules.verp:
        return recipient.mail_from
    token = codec.issue(Purpose.VERP, recipient.delivery_id, _binding(recipient))
    return f"{VERP_PREFIX}{token}@{rules.bounce_domain}"


def personal_headers(headers: Sequence[Header], recipient: Recipient, codec: TokenCodec,
                     rules: CopyRules) -> list[Header]:
    if not wants_list_unsubscribe(headers, recipient.controls, rules):
        return list(headers)
    # A List-Unsubscribe-Post without its List-Unsubscribe means nothing: ours replaces it.
    result = h.without(headers, [b"List-Unsubscribe-Post"])
    token = codec.issue(Purpose.UNSUBSCRIBE, recipient.delivery_id, _binding(recipient))
    return result + list_unsubscribe(token, rules)


def _binding(recipient: Recipient) -> Binding:
    return Binding(recipient.address, recipient.controls.list_key, recipient.controls.campaign)


def make_copy(headers: Sequence[Header], body: bytes | memoryview, bh: bytes, recipient: Recipient,
              keys: Sequence[SigningKey], codec: TokenCodec, rules: CopyRules,
              timestamp: int) -> Copy:
    """The bytes and return path for one recipient; ``bh`` is :func:`signer.body_hash` of body."""
    fields = personal_headers(headers, recipient, codec, rules)
    signatures = b"".join(signer.sign(fields, bh, key, timestamp) for key in keys)
    head = signatures + h.join_message(fields, b"")
    return Copy(return_path(recipient, codec, rules), head, memoryview(body),
                smtputf8=not recipient.mail_from.isascii())
