"""Delivery paths: MX fallback, outbound STARTTLS, remote disconnects; intake idle timeout,
AUTH LOGIN; and the whole relay on PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
import ssl
from pathlib import Path

from gateway.sandbox.sink import ReplyScript, SinkServer
from gateway.smtp.passwords import hash_password
from gateway.storage import queue_store
from tests.conftest import temporary_postgres
from tests.e2e.conftest import Running, StartGateway
from tests.e2e.test_relay import MESSAGE, _raw_session, _send
from tests.e2e.test_tls import _self_signed


async def test_falls_back_to_the_next_mx_when_the_first_refuses_connections(start_gateway: StartGateway) -> None:
    running = await start_gateway()
    running.dns.add("backup.example", "MX", "5 dead.backup.example.")
    running.dns.add("backup.example", "MX", "10 mx.example.net.")
    running.dns.add("dead.backup.example", "A", "127.0.1.99")  # nothing listens there
    await asyncio.to_thread(_send, running.port, ["carol@backup.example"], MESSAGE)
    [received] = await running.sink.wait_for(1, timeout=15)
    assert received.rcpt_tos == ("carol@backup.example",)


async def test_outbound_starttls_when_the_mx_offers_it(start_gateway: StartGateway, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    async with SinkServer("127.0.1.8", 0, tls_context=context) as tls_sink:
        running = await start_gateway({"dns": {"mx_port": tls_sink.port}})
        running.dns.add("secure.example", "MX", "10 mx.secure.example.")
        running.dns.add("mx.secure.example", "A", "127.0.1.8")
        await asyncio.to_thread(_send, running.port, ["dave@secure.example"], MESSAGE)
        [received] = await tls_sink.wait_for(1, timeout=15)
        assert received.tls


async def test_disconnect_during_data_defers_then_delivers(start_gateway: StartGateway) -> None:
    running = await start_gateway()
    running.sink.script = ReplyScript().disconnect("data", times=1)
    await asyncio.to_thread(_send, running.port, ["erin@example.net"], MESSAGE)
    rows = await running.wait_for_event("erin@example.net", "delivered")
    assert [row.kind for row in rows] == ["received", "deferred", "delivered"]
    assert "lost connection with mx.example.net" in rows[1].detail


async def test_idle_session_gets_421_before_close(start_gateway: StartGateway) -> None:
    running = await start_gateway({"smtp": {"idle_timeout": "1s"}})
    reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
    assert (await reader.readline()).startswith(b"220 ")
    assert await asyncio.wait_for(reader.readline(), 5) == b"421 4.4.2 idle timeout, closing connection\r\n"
    assert await reader.read() == b""
    writer.close()


async def test_auth_login_on_trusted_local_listener(start_gateway: StartGateway) -> None:
    account = {"username": "crm", "password_hash": hash_password("login-secret", n=2**10),
               "allowed_from_domains": ["example.com"],
               "default_stream": "transactional"}
    running = await start_gateway({"smtp": {"listen_trusted_local": ["127.0.0.1:0"],
                                            "allowed_networks": ["127.0.0.2/32"], "accounts": [account]}})
    b64 = base64.b64encode
    replies = await asyncio.to_thread(_raw_session, running.port_of("trusted-local"), [
        b"EHLO mailer", b"AUTH LOGIN " + b64(b"crm"), b64(b"login-secret"),
        b"MAIL FROM:<news@example.com>", b"RCPT TO:<frank@example.net>", b"DATA"], MESSAGE + b".\r\n")
    assert "235 2.7.0 authentication successful" in replies
    assert replies[-1].startswith("250 2.0.0 queued as ")


async def test_relay_on_postgresql(start_gateway: StartGateway) -> None:
    async with temporary_postgres() as url:
        running: Running = await start_gateway({"storage": {"url": url}})
        rcpts = [f"pg{n}@example.net" for n in range(25)]
        await asyncio.to_thread(_send, running.port, rcpts, MESSAGE)
        await running.sink.wait_for(25, timeout=20)
        for _ in range(50):  # outcomes are committed just after the sink's 250
            counts = await running.gateway.db.read(queue_store.count_pending)
            if not counts:
                break
            await asyncio.sleep(0.1)
        assert counts == {}
        await running.gateway.stop()  # before the database is dropped



async def test_null_mx_bounces_without_a_connection(start_gateway: StartGateway) -> None:
    running = await start_gateway()
    running.dns.add("nomail.example", "MX", "0 .")
    await asyncio.to_thread(_send, running.port, ["gina@nomail.example"], MESSAGE)
    rows = await running.wait_for_event("gina@nomail.example", "bounced")
    assert "null MX" in rows[-1].detail
    assert running.sink.connections_total == 0


async def test_remote_timeout_defers(start_gateway: StartGateway) -> None:
    running = await start_gateway(policy={"command_timeout": "1s", "retry_first": "30s", "retry_max": "1m"})
    running.sink.script = ReplyScript().delay("data", 3)
    await asyncio.to_thread(_send, running.port, ["hank@example.net"], MESSAGE)
    rows = await running.wait_for_event("hank@example.net", "deferred")
    assert "lost connection with mx.example.net" in rows[-1].detail
    assert "imed out" in rows[-1].detail  # aiosmtplib: "Timed out waiting for server response"


async def test_command_line_over_512_octets(start_gateway: StartGateway) -> None:
    running = await start_gateway()
    replies = await asyncio.to_thread(_raw_session, running.port, [
        b"EHLO mailer", b"MAIL FROM:<" + b"a" * 600 + b"@example.com>"], b"QUIT\r\n")
    assert replies[-2] == "500 5.5.2 command line too long"


async def test_smtputf8_recipient_is_delivered_with_utf8_envelope(start_gateway: StartGateway) -> None:
    running = await start_gateway()

    def send_utf8() -> object:
        import smtplib
        with smtplib.SMTP("127.0.0.1", running.port, timeout=10) as client:
            client.ehlo("mailer.example.com")
            return client.sendmail("news@example.com", ["josé@example.net"], MESSAGE,
                                   mail_options=["SMTPUTF8"])

    assert await asyncio.to_thread(send_utf8) == {}
    rows = await running.wait_for_event("josé@example.net", "delivered")
    assert rows[-1].kind == "delivered"
    [received] = running.sink.messages
    assert received.rcpt_tos == ("josé@example.net",)
