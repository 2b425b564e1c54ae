"""A mailer (smtplib, raw sockets) -> gateway -> sink MX found through loopback DNS."""

from __future__ import annotations

import asyncio
import smtplib
import socket
from typing import Any

import pytest
from sqlalchemy import text

from gateway.sandbox.sink import ReplyScript
from gateway.smtp.passwords import hash_password
from tests.e2e.conftest import Running, StartGateway

MESSAGE = (
    "From: Shop <news@example.com>\r\n"
    "To: <alice@example.net>\r\n"
    "Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n"
    "Message-ID: <e2e-1@example.com>\r\n"
    "MIME-Version: 1.0\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n"
    "Content-Transfer-Encoding: 8bit\r\n"
    "\r\n"
    "Grüße aus dem Süden, 8-bit body.\r\n"
    ".a line that starts with a dot\r\n"
    "..two dots\r\n"
    "." + "x" * 997 + "\r\n"
    "\r\n"
    "last line\r\n"
).encode()


def _send(port: int, rcpts: list[str], data: bytes, sender: str = "news@example.com",
          source: str = "127.0.0.1", **login: str) -> Any:
    with smtplib.SMTP("127.0.0.1", port, source_address=(source, 0), timeout=10) as client:
        client.ehlo("mailer.example.com")
        if login:
            client.login(login["user"], login["password"])
        return client.sendmail(sender, rcpts, data)


async def _delivered(running: Running, count: int) -> list[Any]:
    await running.sink.wait_for(count, timeout=15)
    return running.sink.messages


async def test_message_arrives_byte_exact_behind_a_received_header(start_gateway: StartGateway) -> None:
    running = await start_gateway()
    refused = await asyncio.to_thread(_send, running.port, ["alice@example.net"], MESSAGE)
    assert refused == {}
    [received] = await _delivered(running, 1)
    assert received.mail_from.startswith("b+") and received.mail_from.endswith("@bounces.example.com")
    assert received.rcpt_tos == ("alice@example.net",)
    assert received.peer_ip == "127.0.0.10"  # the pool's source address
    assert received.helo == "mta1.example.com"
    signature, _, rest = received.data.partition(b"\r\nReceived: ")
    assert signature.startswith(b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.com;")
    assert rest.startswith(b"from mailer.example.com ([127.0.0.1])\r\n\tby gw.example.com")
    # The mailer's header fields and body go out byte for byte; the gateway only adds fields.
    original_headers, _, body = MESSAGE.partition(b"\r\n\r\n")
    assert received.data.endswith(b"\r\n\r\n" + body)
    assert original_headers + b"\r\n" in received.data


async def test_connection_is_reused_for_a_batch(start_gateway: StartGateway) -> None:
    running = await start_gateway()
    rcpts = [f"user{n}@example.net" for n in range(30)]
    await asyncio.to_thread(_send, running.port, rcpts, MESSAGE)
    messages = await _delivered(running, 30)
    assert sorted(r for m in messages for r in m.rcpt_tos) == sorted(rcpts)
    assert running.sink.connections_total <= 10  # connection_limit, each reused


def _raw_session(port: int, lines: list[bytes], data: bytes) -> list[str]:
    """Speak SMTP by hand so nothing normalizes the payload; return every reply line."""
    replies: list[str] = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        stream = sock.makefile("rb")

        def reply() -> None:
            while True:
                line = stream.readline().decode()
                replies.append(line.rstrip("\r\n"))
                if line[3:4] != "-":
                    return

        reply()
        for line in lines:
            sock.sendall(line + b"\r\n")
            reply()
        sock.sendall(data)
        reply()
    return replies


@pytest.mark.parametrize("payload", [b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\r"])
async def test_smuggling_payloads_are_refused(start_gateway: StartGateway, payload: bytes) -> None:
    running = await start_gateway()
    smuggled = (b"Subject: hi\r\n\r\nhello" + payload +
                b"MAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\nevil\r\n"
                b"\r\n.\r\n")
    replies = await asyncio.to_thread(_raw_session, running.port, [
        b"EHLO mailer", b"MAIL FROM:<news@example.com>", b"RCPT TO:<alice@example.net>", b"DATA"],
        smuggled)
    assert replies[-1] == "554 5.5.0 bare CR or LF in message"
    await asyncio.sleep(0.5)
    assert running.sink.messages == []


async def test_size_and_recipient_limits(start_gateway: StartGateway) -> None:
    running = await start_gateway({"smtp": {"max_message_size": "2KB", "max_recipients": 3}})
    big = b"Subject: x\r\n\r\n" + b"y" * 900 + b"\r\n" + b"z" * 900 + b"\r\n" + b"w" * 900 + b"\r\n"
    with pytest.raises(smtplib.SMTPSenderRefused) as declared:  # smtplib announces SIZE=
        await asyncio.to_thread(_send, running.port, ["a@example.net"], big)
    assert (declared.value.smtp_code, declared.value.smtp_error) == (552, b"5.3.4 message too big")
    undeclared = await asyncio.to_thread(_raw_session, running.port, [
        b"EHLO mailer", b"MAIL FROM:<news@example.com>", b"RCPT TO:<a@example.net>", b"DATA"],
        big + b".\r\n")
    assert undeclared[-1] == "552 5.3.4 message too big"
    replies = await asyncio.to_thread(_raw_session, running.port, [
        b"EHLO mailer", b"MAIL FROM:<news@example.com>", *[b"RCPT TO:<u%d@example.net>" % n for n in range(4)],
        b"RSET"], b"QUIT\r\n")
    assert replies[-4] == "250 2.1.5 recipient ok"
    assert replies[-3] == "452 4.5.3 too many recipients"


async def test_open_relay_refused_but_bounce_domain_accepted(start_gateway: StartGateway) -> None:
    running = await start_gateway({"smtp": {"allowed_networks": ["127.0.0.2/32"]}})
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        await asyncio.to_thread(_send, running.port, ["victim@example.net"], MESSAGE)
    assert refused.value.recipients["victim@example.net"] == (530, b"5.7.0 authentication required")
    assert await asyncio.to_thread(_send, running.port, ["b+token@bounces.example.com"], MESSAGE) == {}
    async with running.gateway.db.engine.connect() as conn:
        assert (await conn.execute(text("select count(*) from inbound"))).scalar() == 1
    # An allowed network relays without AUTH.
    assert await asyncio.to_thread(_send, running.port, ["ok@example.net"], MESSAGE, source="127.0.0.2") == {}


async def test_auth_on_trusted_local_listener(start_gateway: StartGateway) -> None:
    account = {"username": "crm", "password_hash": hash_password("s3cret-pass", n=2**10),
               "allowed_from_domains": ["example.com"],
               "default_stream": "transactional"}
    running = await start_gateway({"smtp": {
        "allowed_networks": ["127.0.0.2/32"], "listen_trusted_local": ["127.0.0.1:0"],
        "max_auth_failures": 4, "accounts": [account]}})
    # The plain listener offers AUTH only after STARTTLS (none configured here): refused.
    with pytest.raises(smtplib.SMTPNotSupportedError):
        await asyncio.to_thread(_send, running.port, ["a@example.net"], MESSAGE, user="crm", password="s3cret-pass")
    port = running.port_of("trusted-local")
    assert await asyncio.to_thread(_send, port, ["a@example.net"], MESSAGE, user="crm", password="s3cret-pass") == {}
    with pytest.raises(smtplib.SMTPSenderRefused) as wrong_domain:
        await asyncio.to_thread(_send, port, ["a@example.net"], MESSAGE, sender="x@other.example",
                                user="crm", password="s3cret-pass")
    assert wrong_domain.value.smtp_code == 550
    for _ in range(2):  # smtplib tries PLAIN then LOGIN: two failures per login
        with pytest.raises(smtplib.SMTPAuthenticationError) as bad:
            await asyncio.to_thread(_send, port, ["a@example.net"], MESSAGE, user="crm", password="wrong")
        assert bad.value.smtp_code == 535
    with pytest.raises(smtplib.SMTPAuthenticationError) as locked:
        await asyncio.to_thread(_send, port, ["a@example.net"], MESSAGE, user="crm", password="s3cret-pass")
    assert locked.value.smtp_code == 454


async def test_storage_failure_answers_451_and_stores_nothing(start_gateway: StartGateway) -> None:
    running = await start_gateway()
    async with running.gateway.db.engine.begin() as conn:
        await conn.execute(text("CREATE TRIGGER refuse BEFORE INSERT ON messages "
                                "BEGIN SELECT RAISE(ABORT, 'disk full'); END"))
    with pytest.raises(smtplib.SMTPDataError) as failed:
        await asyncio.to_thread(_send, running.port, ["a@example.net"], MESSAGE)
    assert (failed.value.smtp_code, failed.value.smtp_error) == (451, b"4.3.0 temporary storage failure, try again")
    async with running.gateway.db.engine.begin() as conn:
        await conn.execute(text("DROP TRIGGER refuse"))
        assert (await conn.execute(text("select count(*) from deliveries"))).scalar() == 0
    assert await asyncio.to_thread(_send, running.port, ["a@example.net"], MESSAGE) == {}
    await _delivered(running, 1)


async def test_remote_replies_become_bounces_and_retries(start_gateway: StartGateway) -> None:
    running = await start_gateway()
    running.sink.script = (ReplyScript()
                           .on_rcpt("dead@example.net", "550 5.1.1 <dead@example.net>: user unknown")
                           .first(1, "451 4.3.0 try again later", match="busy@example.net"))
    await asyncio.to_thread(_send, running.port, ["dead@example.net", "busy@example.net"], MESSAGE)
    dead = await running.wait_for_event("dead@example.net", "bounced")
    bounced = [row for row in dead if row.kind == "bounced"]  # the classifier's explanation follows it
    assert "550 5.1.1 <dead@example.net>: user unknown via mx.example.net[127.0.1.5]" in bounced[-1].detail
    busy = await running.wait_for_event("busy@example.net", "delivered")
    assert [row.kind for row in busy] == ["received", "deferred", "delivered"]


async def test_unknown_domain_bounces_at_once(start_gateway: StartGateway) -> None:
    running = await start_gateway()
    await asyncio.to_thread(_send, running.port, ["a@nowhere.example"], MESSAGE)
    rows = await running.wait_for_event("a@nowhere.example", "bounced")
    assert "does not exist" in rows[-1].detail


async def test_connections_per_ip_limit(start_gateway: StartGateway) -> None:
    running = await start_gateway({"smtp": {"max_connections_per_ip": 2}})
    held = [await asyncio.open_connection("127.0.0.1", running.port) for _ in range(2)]
    try:
        for reader, _ in held:
            assert (await reader.readline()).startswith(b"220 ")
        reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
        assert await reader.readline() == b"421 4.7.0 too many connections from your address, try again later\r\n"
        assert await reader.read() == b""  # and the connection is closed
        writer.close()
    finally:
        for _, held_writer in held:
            held_writer.close()


async def test_null_sender_is_accepted_and_relayed(start_gateway: StartGateway) -> None:
    running = await start_gateway()
    replies = await asyncio.to_thread(_raw_session, running.port, [
        b"EHLO mailer", b"MAIL FROM:<> SIZE=100", b"RCPT TO:<alice@example.net>", b"DATA"],
        b"From: MAILER-DAEMON@example.com\r\nSubject: delivery status\r\n\r\nreport\r\n.\r\n")
    assert replies[-4] == "250 2.1.0 sender ok", replies
    assert replies[-1].startswith("250 2.0.0 queued as "), replies[6:]
    [received] = await _delivered(running, 1)
    assert received.mail_from == ""


async def test_undecodable_address_bytes_get_a_syntax_reply(start_gateway: StartGateway) -> None:
    running = await start_gateway()
    replies = await asyncio.to_thread(_raw_session, running.port, [
        b"EHLO mailer", b"MAIL FROM:<news@example.com> SMTPUTF8", b"RCPT TO:<\xff@example.net>"], b"QUIT\r\n")
    assert replies[-2].startswith("55"), replies[-2]
