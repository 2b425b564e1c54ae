"""CopyMaker: one parse and one body hash per message, shared by all its recipients."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import dkim
import pytest

from gateway.queue import outgoing
from gateway.records import AttemptResult, ClaimedDelivery
from gateway.rewrite.copies import Copy, CopyRules
from gateway.rewrite.tokens import TokenCodec
from gateway.signing import keys
from gateway.signing.keyring import DomainKeys, KeyRing

KEY = keys.generate_key("ed25519")
RING = KeyRing([DomainKeys("example.com", (keys.SigningKey("example.com", "e1", KEY),))])
RULES = CopyRules(public_url="https://gw.example.com", bounce_domain="bounces.example.com")
STORED = (b"Received: from x\r\n\tby gw; Tue, 24 Nov 2026 10:00:00 +0000\r\nFrom: news@example.com\r\n"
          b"Subject: s\r\n\r\n" + b"line with  double  spaces \r\n" * 20_000)  # ~560 KB: hashed in a thread


def _claim(n: int, queue_id: str = "Q1", mail_from: str = "news@example.com") -> ClaimedDelivery:
    return ClaimedDelivery(delivery_id=n, queue_id=queue_id, recipient=f"r{n}@example.net", domain="example.net",
                           mail_from=mail_from, attempts=0, received_at=datetime.now(UTC), stream="marketing",
                           list_key="news", campaign="c1")


def _maker() -> outgoing.CopyMaker:
    return outgoing.CopyMaker(RING, TokenCodec({1: b"k" * 32}, 1), RULES, clock=lambda: 1_790_000_000)


async def test_concurrent_copies_of_one_message_hash_its_body_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = outgoing.body_hash

    def counting(body: bytes | memoryview) -> bytes:
        calls.append(len(body))
        return real(body)

    monkeypatch.setattr(outgoing, "body_hash", counting)
    maker = _maker()
    copies = await asyncio.gather(*(maker.make(_claim(n), STORED) for n in range(20)))
    assert len(calls) == 1
    record = keys.txt_value(KEY).encode()
    for copy in copies:
        assert isinstance(copy, Copy)
        assert copy.body.obj is STORED  # a view of the stored message, not a copy of it
        assert dkim.verify(copy.data, dnsfunc=lambda name, timeout=5: record)
    assert len({copy.head for copy in copies}) == 20


async def test_unusable_messages_give_a_result_instead_of_a_copy() -> None:
    maker = _maker()
    no_from = await maker.make(_claim(1, "Q2"), b"Subject: s\r\n\r\nbody\r\n")
    assert no_from == AttemptResult("permanent", "5.6.0 message cannot be signed: no From header")
    no_key = await maker.make(_claim(2, "Q3"), b"From: a@example.org\r\n\r\nbody\r\n")
    assert no_key == AttemptResult("transient", "4.7.0 no DKIM key for From domain example.org")


async def test_a_utf8_sender_keeps_smtputf8_behind_its_verp_address() -> None:
    copy = await _maker().make(_claim(1, "Q4", mail_from="jürgen@example.com"), STORED)
    assert isinstance(copy, Copy)
    assert copy.mail_from.isascii() and copy.mail_from.startswith("b+")
    assert copy.smtputf8


async def test_kept_messages_are_bounded_in_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outgoing, "KEPT_BYTES", 3 * len(STORED))
    maker = _maker()
    for n in range(10):
        assert isinstance(await maker.make(_claim(n, f"Q{n}"), STORED), Copy)
    assert list(maker._parsed) == ["Q7", "Q8", "Q9"]
    assert maker._kept_bytes == 3 * len(STORED)
