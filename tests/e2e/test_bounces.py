"""Bounces and complaints over real sockets: a dead address gets no second message, a full
mailbox is paused and comes back, an unauthenticated complaint changes nothing, and a
webhook receiver that was down still gets every event, in order, signed."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import smtplib
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import delete, select

from gateway.ingest.addresses import address_hash
from gateway.sandbox.sink import ReplyScript
from gateway.signing.keys import write_private_file
from gateway.storage import consent_store, queue_store
from gateway.storage.tables import deliveries, inbound
from tests.e2e.conftest import Running, StartGateway
from tests.e2e.test_consent import message, send
from tests.fakes import FakeClock

BOUNCE_DOMAIN = "bounces.example.com"


def send_from_outside(port: int, mail_from: str, rcpt: str, data: bytes) -> Any:
    """What a remote MTA does: no AUTH, from a network that may not relay."""
    with smtplib.SMTP("127.0.0.1", port, source_address=("127.0.0.99", 0), timeout=10) as client:
        return client.sendmail(mail_from, [rcpt], data)


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def suppressions_of(running: Running, address: str) -> list[consent_store.SuppressionRecord]:
    found = await running.gateway.db.read(
        lambda c: consent_store.find_suppressions(c, address_hash=address_hash(address)))
    return [record for _, record in found]


async def inbound_settled(running: Running) -> None:
    """Wait until the inbound processor has handled every stored report."""
    for _ in range(200):
        running.gateway.inbound.wake()
        if not await running.gateway.db.read(lambda c: queue_store.new_inbound(c)):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("inbound mail was not processed")


async def test_a_550_at_rcpt_suppresses_globally_and_the_next_message_is_refused(
        start_gateway: StartGateway) -> None:
    running = await start_gateway()
    await running.consent("news", "gone@example.net")
    running.sink.script = ReplyScript().on_rcpt("gone@example.net", "550 5.1.1 <gone@example.net>: user unknown")
    hard = metric("gateway_bounces_total", **{"class": "user-unknown", "severity": "hard"})
    await asyncio.to_thread(send, running.port, ["gone@example.net"], message(campaign="one"))
    await running.wait_for_event("gone@example.net", "bounced")
    assert metric("gateway_bounces_total", **{"class": "user-unknown", "severity": "hard"}) == hard + 1
    [record] = await suppressions_of(running, "gone@example.net")
    assert (record.scope, record.reason, record.source) == ("global", "hard-bounce", "bounce-sync")
    assert "user-unknown" in (record.note or "") and "5.1.1" in (record.note or "")
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        await asyncio.to_thread(send, running.port, ["gone@example.net"], message(campaign="two"))
    assert refused.value.recipients["gone@example.net"] == (
        550, b"5.7.1 <gone@example.net>: recipient suppressed (hard-bounce)")
    rows = await running.gateway.db.read(lambda c: queue_store.trace(c, "gone@example.net"))
    [explained] = [row for row in rows if row.kind == "bounce"]
    assert "class user-unknown (hard 5.1.1)" in explained.detail
    assert "suppressed globally (hard-bounce)" in explained.detail and "user unknown" in explained.detail
    assert len(running.sink.messages) == 0


def dsn(verp: str, recipient: str, status: str = "5.1.1",
        diagnostic: str = "smtp; 550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown",
        action: str = "failed", message_id: str = "") -> bytes:
    """A DSN as a receiving MTA sends it after accepting the message (RFC 3464)."""
    original_id = f"Message-ID: {message_id}\r\n" if message_id else ""
    return (f"From: Mail Delivery System <MAILER-DAEMON@mx.example.net>\r\nTo: {verp}\r\n"
            "Subject: Undelivered Mail Returned to Sender\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/report; report-type=delivery-status; boundary="b1"\r\n\r\n'
            "--b1\r\nContent-Type: text/plain\r\n\r\nI'm sorry to have to inform you that your message could not\r\n"
            "be delivered to one or more recipients.\r\n\r\n"
            "--b1\r\nContent-Type: message/delivery-status\r\n\r\n"
            "Reporting-MTA: dns; mx.example.net\r\nArrival-Date: Tue, 24 Nov 2026 08:00:00 +0000\r\n\r\n"
            f"Final-Recipient: rfc822; {recipient}\r\nOriginal-Recipient: rfc822;{recipient}\r\n"
            f"Action: {action}\r\nStatus: {status}\r\nRemote-MTA: dns; store.example.net\r\n"
            f"Diagnostic-Code: {diagnostic.format(rcpt=recipient)}\r\n\r\n"
            "--b1\r\nContent-Type: text/rfc822-headers\r\n\r\n"
            f"Return-Path: <{verp}>\r\nFrom: Shop <news@example.com>\r\nTo: {recipient}\r\n{original_id}"
            "Subject: Spring offers\r\n\r\n"
            "--b1--\r\n").encode()


async def inbound_states(running: Running) -> list[str]:
    rows = await running.gateway.db.read(lambda c: c.execute(select(inbound.c.state).order_by(inbound.c.id)))
    return [row.state for row in rows]


async def test_an_async_dsn_to_the_verp_address_suppresses_and_a_forged_one_changes_nothing(
        start_gateway: StartGateway) -> None:
    running = await start_gateway()
    await running.consent("news", "late@example.net")
    await asyncio.to_thread(send, running.port, ["late@example.net"], message(campaign="one"))
    [delivered] = await running.sink.wait_for(1, timeout=15)
    verp = delivered.mail_from
    assert re.fullmatch(r"b\+[a-z2-7]{40}@bounces\.example\.com", verp), verp
    forged = f"b+{'a' * 40}@{BOUNCE_DOMAIN}"
    counted = metric("gateway_inbound_reports_total", kind="dsn", result="forged")
    await asyncio.to_thread(send_from_outside, running.port, "", forged, dsn(forged, "late@example.net"))
    await inbound_settled(running)
    assert await suppressions_of(running, "late@example.net") == []
    assert metric("gateway_inbound_reports_total", kind="dsn", result="forged") == counted + 1
    await asyncio.to_thread(send_from_outside, running.port, "", verp, dsn(verp, "late@example.net"))
    await inbound_settled(running)
    assert await inbound_states(running) == ["forged", "bounced"]
    [record] = await suppressions_of(running, "late@example.net")
    assert (record.scope, record.reason, record.source) == ("global", "hard-bounce", "bounce-dsn")
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        await asyncio.to_thread(send, running.port, ["late@example.net"], message(campaign="two"))
    assert refused.value.recipients["late@example.net"] == (
        550, b"5.7.1 <late@example.net>: recipient suppressed (hard-bounce)")
    rows = await running.gateway.db.read(lambda c: queue_store.trace(c, "late@example.net"))
    assert [row.kind for row in rows if row.kind in ("delivered", "bounced", "bounce")] == [
        "delivered", "bounced", "bounce"]
    [explained] = [row for row in rows if row.kind == "bounce"]
    assert "class user-unknown (hard 5.1.1)" in explained.detail and "from dsn" in explained.detail
    assert "matched by verp" in explained.detail and "User unknown" in explained.detail


async def test_a_dsn_without_a_token_counts_only_for_the_message_that_was_sent(
        start_gateway: StartGateway) -> None:
    running = await start_gateway()
    await running.consent("news", "moved@example.net")
    await asyncio.to_thread(send, running.port, ["moved@example.net"], message(campaign="one"))
    [delivered] = await running.sink.wait_for(1, timeout=15)
    sent_id = re.search(rb"(?im)^Message-ID:\s*(<[^>]+>)", delivered.data)
    assert sent_id is not None
    plain = f"postmaster@{BOUNCE_DOMAIN}"  # a server that ignores the envelope sender
    await asyncio.to_thread(send_from_outside, running.port, "", plain, dsn(plain, "stranger@example.net"))
    # The address alone (any stranger can name it): evidence, nothing else.
    await asyncio.to_thread(send_from_outside, running.port, "", plain,
                            dsn(plain, "Moved@example.net", message_id="<other@example.org>"))
    await inbound_settled(running)
    assert await inbound_states(running) == ["unmatched", "unverified"]
    assert await suppressions_of(running, "moved@example.net") == []
    rows = await running.gateway.db.read(lambda c: queue_store.trace(c, "moved@example.net"))
    [kept] = [row for row in rows if row.kind == "bounce"]
    assert "evidence only" in kept.detail and "not counted" not in kept.detail
    # The same address and the Message-ID of the message it was sent: applied.
    await asyncio.to_thread(send_from_outside, running.port, "", plain,
                            dsn(plain, "moved@example.net", message_id=sent_id.group(1).decode()))
    await inbound_settled(running)
    assert await inbound_states(running) == ["unmatched", "unverified", "bounced"]
    assert await suppressions_of(running, "stranger@example.net") == []
    [record] = await suppressions_of(running, "moved@example.net")
    assert record.reason == "hard-bounce"
    rows = await running.gateway.db.read(lambda c: queue_store.trace(c, "moved@example.net"))
    assert any("matched by address" in row.detail and "hard-bounce" in row.detail
               for row in rows if row.kind == "bounce")


async def test_a_delay_notice_and_an_auto_reply_change_nothing(start_gateway: StartGateway) -> None:
    running = await start_gateway()
    await running.consent("news", "away@example.net")
    await asyncio.to_thread(send, running.port, ["away@example.net"], message(campaign="one"))
    [delivered] = await running.sink.wait_for(1, timeout=15)
    verp = delivered.mail_from
    late = dsn(verp, "away@example.net", "4.4.7", "smtp; 451 4.4.7 still trying", action="delayed")
    vacation = (f"From: away@example.net\r\nTo: {verp}\r\nSubject: Out of office\r\n"
                "Auto-Submitted: auto-replied\r\n\r\nI am away until Monday.\r\n").encode()
    await asyncio.to_thread(send_from_outside, running.port, "", verp, late)
    await asyncio.to_thread(send_from_outside, running.port, "away@example.net", verp, vacation)
    await inbound_settled(running)
    assert await inbound_states(running) == ["delayed", "auto-reply"]
    assert await suppressions_of(running, "away@example.net") == []


async def bounced_count(running: Running, address: str, count: int) -> None:
    for _ in range(150):
        rows = await running.gateway.db.read(lambda c: queue_store.trace(c, address))
        if sum(row.kind == "bounced" for row in rows) >= count:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"fewer than {count} bounces for {address}")


async def test_a_full_mailbox_for_a_week_is_paused_for_thirty_days_then_mail_flows_again(
        start_gateway: StartGateway) -> None:
    running = await start_gateway()
    await running.consent("news", "full@example.net")
    clock = FakeClock(datetime.now(UTC) + timedelta(minutes=1))  # mail received now is due at once
    start = clock.now
    running.gateway.scheduler.clock = clock
    running.gateway.gate.clock = clock
    running.sink.script = ReplyScript().on_rcpt("full@example.net", "552 5.2.2 <full@example.net>: mailbox full")
    for n, day in enumerate((0, 1.75, 3.5, 5.25, 7), start=1):
        clock.now = start + timedelta(days=day)
        await asyncio.to_thread(send, running.port, ["full@example.net"], message(campaign=f"c{n}"))
        await bounced_count(running, "full@example.net", n)
        suppressed = await suppressions_of(running, "full@example.net")
        assert (suppressed == []) == (n < 5), (n, suppressed)
    [record] = await suppressions_of(running, "full@example.net")
    assert (record.scope, record.reason) == ("global", "soft-bounce")
    assert record.expires_at == start + timedelta(days=37)
    clock.now = start + timedelta(days=8)
    with pytest.raises(smtplib.SMTPDataError) as refused:
        await asyncio.to_thread(send, running.port, ["full@example.net"], message(campaign="c6"))
    assert refused.value.smtp_error == b"5.7.1 <full@example.net>: recipient suppressed (soft-bounce)"
    rows = await running.gateway.db.read(lambda c: queue_store.trace(c, "full@example.net"))
    counts = [row.detail for row in rows if row.kind == "bounce"]
    assert "soft bounce 4 of 5 over 5.2 days" in counts[3] and "suppressed until" in counts[4]
    clock.now = start + timedelta(days=38)  # the suppression has run out
    running.sink.script = None
    assert await asyncio.to_thread(send, running.port, ["full@example.net"], message(campaign="c7")) == {}
    await running.wait_for_event("full@example.net", "delivered")


class Receiver:
    """A webhook endpoint on loopback: records each POST (headers, body), answers 200.

    It listens on its own address, not 127.0.0.1: while it is down the gateway keeps
    connecting to it, and a connection to a closed port of 127.0.0.1 in the ephemeral range
    can get that very port as its source and connect to itself (TCP simultaneous open),
    taking the port the receiver restarts on. Clients of 127.0.x.y leave from 127.0.0.1."""

    host = "127.0.2.80"

    def __init__(self) -> None:
        self.posts: list[tuple[dict[str, str], bytes]] = []
        self.server: asyncio.Server | None = None
        with socket.socket() as probe:
            probe.bind((self.host, 0))
            self.port = probe.getsockname()[1]  # free now; the receiver starts on it later

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, self.host, self.port)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.posts.append((headers, body))
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def verify(secret: bytes, headers: dict[str, str], body: bytes) -> bool:
    """What a receiver does with X-Gateway-Signature (docs/feedback.md)."""
    parts = dict(item.split("=", 1) for item in headers["x-gateway-signature"].split(","))
    expected = hmac.new(secret, parts["t"].encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts["v1"]) and abs(int(parts["t"]) - datetime.now(UTC).timestamp()) < 300


async def test_a_webhook_receiver_that_was_down_gets_every_event_in_order_after_a_restart(
        start_gateway: StartGateway, tmp_path: Path) -> None:
    secret = b"k" * 40
    write_private_file(tmp_path / "hook.key", secret)
    receiver = Receiver()
    hook = {"webhooks": [{"name": "crm", "url": f"http://{receiver.host}:{receiver.port}/events",
                          "secret_file": str(tmp_path / "hook.key"), "retry_min": "200ms", "retry_max": "1s"}]}
    running = await start_gateway(hook)
    await running.consent("news", "ann@example.net", "bob@example.net")
    running.sink.script = ReplyScript().on_rcpt("bob@example.net", "451 4.3.0 try later", times=1)
    await asyncio.to_thread(send, running.port, ["ann@example.net", "bob@example.net"], message(campaign="one"))
    await running.wait_for_event("bob@example.net", "delivered")
    await asyncio.to_thread(send, running.port, ["ann@example.net"], message(campaign="two"))
    await running.sink.wait_for(3, timeout=15)
    await running.wait_for_event("ann@example.net", "delivered")
    await asyncio.sleep(1.5)  # the dispatcher has tried, and failed, by now
    await running.gateway.stop()  # a restart while the receiver is still down
    running = await start_gateway(hook)
    await receiver.start()
    try:
        for _ in range(100):
            if len(receiver.posts) >= 4:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # nothing more should come
    finally:
        await receiver.stop()
    bodies = [json.loads(body) for _, body in receiver.posts]
    assert all(verify(secret, headers, body) for headers, body in receiver.posts)
    assert len({b["id"] for b in bodies}) == len(bodies) == 4
    by_person = {who: [b["event"] for b in bodies if b["recipient"] == who] for who in ("ann@example.net", "bob@example.net")}
    assert by_person == {"ann@example.net": ["delivered", "delivered"], "bob@example.net": ["deferred", "delivered"]}
    for who in by_person:
        ids = [b["id"] for b in bodies if b["recipient"] == who]
        assert ids == sorted(ids)


def arf(verp: str, recipient: str) -> bytes:
    """A complaint as a feedback loop sends it (RFC 5965), with the original's headers."""
    return (f"From: Feedback Loop <fbl@example.com>\r\nTo: fbl@{BOUNCE_DOMAIN}\r\nSubject: complaint\r\n"
            "Message-ID: <arf-1@example.com>\r\nDate: Tue, 24 Nov 2026 08:00:00 +0000\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/report; report-type=feedback-report; boundary="f1"\r\n\r\n'
            "--f1\r\nContent-Type: text/plain\r\n\r\nThis is an email abuse report.\r\n\r\n"
            "--f1\r\nContent-Type: message/feedback-report\r\n\r\n"
            "Feedback-Type: abuse\r\nUser-Agent: ExampleFBL/1.0\r\nVersion: 1\r\n"
            f"Original-Mail-From: <{verp}>\r\nOriginal-Rcpt-To: <{recipient}>\r\n"
            "Arrival-Date: Tue, 24 Nov 2026 07:59:00 +0000\r\nSource-IP: 127.0.0.10\r\n"
            "Reported-Domain: example.com\r\n\r\n"
            "--f1\r\nContent-Type: text/rfc822-headers\r\n\r\n"
            f"Return-Path: <{verp}>\r\nFrom: Shop <news@example.com>\r\nTo: {recipient}\r\n"
            "Subject: Spring offers\r\n\r\n--f1--\r\n").encode()


def dkim_signed(raw: bytes, key_file: Path) -> bytes:
    import dkim

    header = dkim.sign(raw, b"s1", b"example.com", key_file.read_bytes(),
                       include_headers=[b"from", b"to", b"subject", b"message-id", b"date"])
    return header + raw


async def test_complaints_count_only_when_they_authenticate(
        start_gateway: StartGateway, dkim_files: Any) -> None:
    running = await start_gateway({"complaints": {"dkim_domains": ["example.com"],
                                                  "trusted_networks": ["127.0.0.98/32"]}})
    await running.consent("news", "cat@example.net", "dan@example.net")
    await asyncio.to_thread(send, running.port, ["cat@example.net"], message(campaign="one"))
    await asyncio.to_thread(send, running.port, ["dan@example.net"], message(campaign="one"))
    await running.sink.wait_for(2, timeout=15)
    verp = {m.rcpt_tos[0]: m.mail_from for m in running.sink.messages}
    fbl = f"fbl@{BOUNCE_DOMAIN}"
    # Unsigned, from a network nobody vouched for: nothing changes.
    await asyncio.to_thread(send_from_outside, running.port, "", fbl, arf(verp["cat@example.net"], "cat@example.net"))
    await inbound_settled(running)
    assert await inbound_states(running) == ["untrusted"]
    assert await suppressions_of(running, "cat@example.net") == []
    # Signed by the feedback loop's domain (DKIM checked through the loopback DNS): applied.
    signed = dkim_signed(arf(verp["cat@example.net"], "cat@example.net"), dkim_files.rsa)
    await asyncio.to_thread(send_from_outside, running.port, "", fbl, signed)
    await inbound_settled(running)
    assert await inbound_states(running) == ["untrusted", "complaint"]
    [record] = await suppressions_of(running, "cat@example.net")
    assert (record.scope, record.scope_key, record.reason) == ("list", "news", "complaint")
    rows = await running.wait_for_event("cat@example.net", "complained")
    [explained] = [row for row in rows if row.kind == "complaint"]
    assert "dkim=pass header.d=example.com" in explained.detail and "matched by" in explained.detail
    # From a trusted network, unsigned: applied too.
    def from_trusted() -> Any:
        with smtplib.SMTP("127.0.0.1", running.port, source_address=("127.0.0.98", 0), timeout=10) as client:
            return client.sendmail("", [fbl], arf(verp["dan@example.net"], "dan@example.net"))

    await asyncio.to_thread(from_trusted)
    await inbound_settled(running)
    assert [r.reason for r in await suppressions_of(running, "dan@example.net")] == ["complaint"]
    with pytest.raises(smtplib.SMTPDataError):
        await asyncio.to_thread(send, running.port, ["dan@example.net"], message(campaign="two"))


async def test_an_auto_reply_to_the_unsubscribe_address_unsubscribes_nobody(start_gateway: StartGateway) -> None:
    running = await start_gateway()
    await running.consent("news", "mia@example.net")
    await asyncio.to_thread(send, running.port, ["mia@example.net"], message(campaign="one"))
    [delivered] = await running.sink.wait_for(1, timeout=15)
    mailto = re.search(rb"<mailto:(unsubscribe\+[a-z2-7]{40}@bounces\.example\.com)>", delivered.data)
    assert mailto is not None
    corpus = Path(__file__).parent.parent / "corpus" / "auto-reply" / "en-ooo-to-reply-address.eml"
    body = corpus.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    await asyncio.to_thread(send_from_outside, running.port, "", mailto.group(1).decode(), body)
    await inbound_settled(running)
    assert await inbound_states(running) == ["ignored"]
    assert await suppressions_of(running, "mia@example.net") == []
    assert await asyncio.to_thread(send, running.port, ["mia@example.net"], message(campaign="two")) == {}


async def test_a_dsn_for_a_delivery_no_longer_stored_is_unknown_not_forged(start_gateway: StartGateway) -> None:
    running = await start_gateway()
    await running.consent("news", "old@example.net")
    await asyncio.to_thread(send, running.port, ["old@example.net"], message(campaign="one"))
    [delivered] = await running.sink.wait_for(1, timeout=15)
    await running.wait_for_event("old@example.net", "delivered")
    await running.gateway.db.write(lambda c: c.execute(delete(deliveries)))  # as a purge of old rows would
    await asyncio.to_thread(send_from_outside, running.port, "", delivered.mail_from,
                            dsn(delivered.mail_from, "old@example.net"))
    await inbound_settled(running)
    assert await inbound_states(running) == ["unknown"]
    assert await suppressions_of(running, "old@example.net") == []
