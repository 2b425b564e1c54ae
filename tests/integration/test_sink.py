"""SinkServer with real SMTP clients on loopback: recording, scripting, counters, CLI."""

from __future__ import annotations

import asyncio
import datetime
import json
import re
import signal
import ssl
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiosmtplib
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.sandbox.sink import Action, Engine, ReplyScript, SinkServer

SINK_HOST = "127.0.1.5"
CLIENT_A = "127.0.0.10"
CLIENT_B = "127.0.0.11"

MESSAGE = (
    b"From: Sender <sender@example.com>\r\n"
    b"To: rcpt@example.net\r\n"
    b"Subject: =?utf-8?q?caf=C3=A9?=\r\n"
    b"\r\n"
    b".a line that starts with a dot\r\n"
    b"..and one with two\r\n"
    b"8-bit: caf\xc3\xa9 \xff\r\n"
    b".\r\n"
    b"last line\r\n"
)


async def eventually(predicate: Callable[[], bool], polls: int = 1000) -> None:
    """Poll for a state the server reaches after the client has already moved on."""
    for _ in range(polls):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


def client(sink: SinkServer, source: str = CLIENT_A, *, tls: bool = False) -> aiosmtplib.SMTP:
    return aiosmtplib.SMTP(
        hostname=sink.host,
        port=sink.port,
        source_address=(source, 0),
        local_hostname="client.test",
        start_tls=tls,
        validate_certs=False,
        timeout=30,
    )


async def send(sink: SinkServer, rcpts: list[str], data: bytes = MESSAGE) -> dict[str, int]:
    """Send one message on a new connection; returns refused recipients and their codes."""
    smtp = client(sink)
    await smtp.connect()
    try:
        errors, _ = await smtp.sendmail("sender@example.com", rcpts, data)
    finally:
        if smtp.is_connected:
            await smtp.quit()
    return {address: response.code for address, response in errors.items()}


@pytest.fixture
async def sink(request: pytest.FixtureRequest) -> AsyncIterator[SinkServer]:
    engine: Engine = getattr(request, "param", "aiosmtpd")
    async with SinkServer(SINK_HOST, engine=engine) as running:
        yield running


def scripted(script: ReplyScript) -> SinkServer:
    return SinkServer(SINK_HOST, script=script)


@pytest.mark.parametrize("sink", ["aiosmtpd", "fast"], indirect=True)
async def test_message_is_recorded_byte_exact(sink: SinkServer) -> None:
    assert await send(sink, ["rcpt@example.net", "other@example.net"]) == {}
    [message] = await sink.wait_for(1, timeout=10)
    assert message.data == MESSAGE
    assert message.mail_from == "sender@example.com"
    assert message.rcpt_tos == ("rcpt@example.net", "other@example.net")
    assert (message.peer_ip, message.helo, message.tls) == (CLIENT_A, "client.test", False)


@pytest.mark.parametrize("sink", ["aiosmtpd", "fast"], indirect=True)
async def test_empty_and_one_line_messages(sink: SinkServer) -> None:
    reader, writer = await asyncio.open_connection(sink.host, sink.port)
    writer.write(
        b"EHLO raw.test\r\nMAIL FROM:<>\r\nRCPT TO:<a@example.net>\r\nDATA\r\n.\r\n"
        b"MAIL FROM:<b@example.com>\r\nRCPT TO:<c@example.net>\r\nDATA\r\nSubject: x\r\n.\r\n"
        b"QUIT\r\n"
    )  # a pipelining client; aiosmtpd answers in order too
    await writer.drain()
    replies = await reader.read()
    writer.close()
    assert replies.count(b"\r\n250 2.0.0") + replies.startswith(b"250 2.0.0") == 2
    messages = await sink.wait_for(2, timeout=10)
    assert [(m.mail_from, m.data) for m in messages] == [
        ("", b""),
        ("b@example.com", b"Subject: x\r\n"),
    ]


async def test_scripted_550_at_rcpt_refuses_only_that_recipient() -> None:
    bad = "unknown@example.net"
    script = ReplyScript().on_rcpt(bad, f"550 5.1.1 <{bad}>: user unknown")
    async with scripted(script) as sink:
        assert await send(sink, ["rcpt@example.net", bad.upper()]) == {bad.upper(): 550}
        [message] = await sink.wait_for(1, timeout=10)
        assert message.rcpt_tos == ("rcpt@example.net",)


async def test_regex_rule_limited_to_n_times() -> None:
    script = ReplyScript().on_rcpt(re.compile(r"@grey\.example$"), "450 4.2.0 greylisted", times=1)
    async with scripted(script) as sink:
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused):
            await send(sink, ["a@grey.example"])
        assert await send(sink, ["a@grey.example"]) == {}
        assert sink.messages_total == 1


async def test_first_n_messages_get_451_then_250() -> None:
    async with scripted(ReplyScript().first(2, "451 4.3.0 try later")) as sink:
        codes = []
        for _ in range(3):
            try:
                await send(sink, ["rcpt@example.net"])
                codes.append(250)
            except aiosmtplib.SMTPDataError as error:
                codes.append(error.code)
        assert codes == [451, 451, 250]
        assert len(sink.messages) == 1


async def test_data_reply_can_match_one_recipient() -> None:
    script = ReplyScript().on_data("554 5.7.1 rejected as spam", match="spam@example.net")
    async with scripted(script) as sink:
        with pytest.raises(aiosmtplib.SMTPDataError) as caught:
            await send(sink, ["ok@example.net", "spam@example.net"])
        assert caught.value.code == 554
        assert await send(sink, ["ok@example.net"]) == {}
        assert sink.messages_total == 1


@pytest.mark.parametrize("stage", ["rcpt", "data"])
async def test_disconnect_drops_the_connection_without_reply(stage: str) -> None:
    script = ReplyScript().disconnect("rcpt" if stage == "rcpt" else "data", times=1)
    async with scripted(script) as sink:
        with pytest.raises(aiosmtplib.SMTPServerDisconnected):
            await send(sink, ["rcpt@example.net"])
        await eventually(lambda: sink.current_connections == 0)
        assert sink.messages_total == 0
        assert await send(sink, ["rcpt@example.net"]) == {}
        assert sink.messages_total == 1


async def test_delay_before_data_reply_still_accepts() -> None:
    async with scripted(ReplyScript().delay("data", 0.2)) as sink:
        assert await send(sink, ["rcpt@example.net"]) == {}
        assert len(sink.messages) == 1


async def test_long_lines_are_refused_by_the_strict_engine(sink: SinkServer) -> None:
    with pytest.raises(aiosmtplib.SMTPDataError) as caught:
        await send(sink, ["rcpt@example.net"], b"Subject: x\r\n\r\n" + b"x" * 1200 + b"\r\n")
    assert caught.value.code == 500
    assert sink.messages_total == 0


@pytest.mark.parametrize("sink", ["aiosmtpd", "fast"], indirect=True)
async def test_connection_counters_per_peer(sink: SinkServer) -> None:
    clients = [client(sink, CLIENT_A) for _ in range(3)] + [
        client(sink, CLIENT_B) for _ in range(2)
    ]
    await asyncio.gather(*(smtp.connect() for smtp in clients))
    assert sink.current_connections == 5
    await asyncio.gather(*(smtp.quit() for smtp in clients))
    await eventually(lambda: sink.current_connections == 0)
    await send(sink, ["rcpt@example.net"])
    assert sink.connections_total == 6
    assert sink.max_concurrent_connections == 5
    assert sink.max_concurrent_by_peer == {CLIENT_A: 3, CLIENT_B: 2}


async def test_wait_for_returns_when_enough_arrived(sink: SinkServer) -> None:
    waiter = asyncio.create_task(sink.wait_for(3, timeout=30))
    for _ in range(3):
        await send(sink, ["rcpt@example.net"])
    assert len(await waiter) == 3


async def test_wait_for_times_out(sink: SinkServer) -> None:
    with pytest.raises(TimeoutError, match="0 of 1"):
        await sink.wait_for(1, timeout=0.05)


async def test_keep_messages_false_only_counts() -> None:
    async with SinkServer(SINK_HOST, keep_messages=False) as sink:
        await send(sink, ["rcpt@example.net"])
        await sink.wait_for(1, timeout=10)
        assert (sink.messages_total, sink.messages) == (1, [])


@pytest.mark.parametrize("sink", ["aiosmtpd", "fast"], indirect=True)
async def test_stop_closes_idle_sessions(sink: SinkServer) -> None:
    smtp = client(sink)
    await smtp.connect()
    await sink.stop()
    assert sink.current_connections == 0
    smtp.close()


def test_script_decisions_and_validation() -> None:
    script = ReplyScript().delay("data", 1.5).first(1, "451 4.3.0 later")
    assert script.decide("data", ["a@b"]) == Action("451 4.3.0 later", False, 1.5)
    assert script.decide("data", ["a@b"]) == Action(None, False, 1.5)
    assert script.decide("rcpt", ["a@b"]) == Action()
    with pytest.raises(ValueError, match="bad SMTP reply"):
        ReplyScript().on_rcpt("a@b", "user unknown")
    with pytest.raises(ValueError, match="fast engine"):
        SinkServer(SINK_HOST, engine="fast", script=ReplyScript())


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sink.localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    directory = tmp_path_factory.mktemp("tls")
    cert_file, key_file = directory / "sink.crt", directory / "sink.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


async def test_starttls_is_offered_and_recorded(tls_files: tuple[Path, Path]) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*tls_files)
    async with SinkServer(SINK_HOST, tls_context=context) as sink:
        smtp = client(sink, tls=True)
        await smtp.connect()
        await smtp.sendmail("sender@example.com", ["rcpt@example.net"], MESSAGE)
        await smtp.quit()
        [message] = await sink.wait_for(1, timeout=10)
        assert (message.tls, message.data, message.helo) == (True, MESSAGE, "client.test")
        assert sink.connections_total == 1
        await eventually(lambda: sink.current_connections == 0)


@pytest.mark.slow
async def test_cli_writes_files_and_prints_counters(tmp_path: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.sandbox.sink",
        "--listen", f"{SINK_HOST}:0", "--out", str(tmp_path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None and process.stderr is not None
    try:
        line = (await asyncio.wait_for(process.stderr.readline(), 30)).decode()
        port = int(line.rsplit(":", 1)[1])
        target = SinkServer(SINK_HOST, port)  # only used for its address in send()
        assert await send(target, ["rcpt@example.net"]) == {}
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0
    counters = json.loads(output.decode().strip().splitlines()[-1])
    assert (counters["messages"], counters["connections_total"]) == (1, 1)
    assert (tmp_path / "1.eml").read_bytes() == MESSAGE
    envelope = json.loads((tmp_path / "1.json").read_text())
    assert envelope["rcpt_tos"] == ["rcpt@example.net"]
    assert envelope["peer_ip"] == CLIENT_A


def test_the_command_line_scripts_refusals_per_address() -> None:
    from gateway.sandbox.sink import _script_from

    script = _script_from(["gone@example.net=550 5.1.1 user unknown"])
    assert script is not None
    assert script.decide("rcpt", ["Gone@Example.net"]).reply == "550 5.1.1 user unknown"
    assert script.decide("rcpt", ["alive@example.net"]).reply is None
    assert _script_from([]) is None
    with pytest.raises(ValueError, match="expected ADDRESS=REPLY"):
        _script_from(["550 5.1.1 no address"])
    with pytest.raises(ValueError, match="bad SMTP reply"):
        _script_from(["gone@example.net=user unknown"])
