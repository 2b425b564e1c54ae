"""Reply table, content checks, address syntax, passwords and admission limits."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gateway.ingest.addresses import normalize_recipient
from gateway.smtp import replies
from gateway.smtp.content import TraceInfo, content_problem, received_header
from gateway.smtp.limits import AuthLockout, ConnectionCounter
from gateway.smtp.passwords import BadHash, VerifiedCache, hash_password, verify_password


def test_reply_rendering_and_names() -> None:
    assert str(replies.STORAGE_FAILURE) == "451 4.3.0 temporary storage failure, try again"
    assert replies.QUEUED.format(queue_id="X1") == "250 2.0.0 queued as X1"
    assert replies.TOO_MANY_RECIPIENTS.name == "too_many_recipients"


def test_aiosmtpd_replies_are_translated_into_the_table() -> None:
    assert replies.translate("552 Error: Too much mail data") == "552 5.3.4 message too big"
    assert replies.translate("500 Line too long (see RFC5321 4.5.3.1.6)").startswith("500 5.5.2")
    assert replies.translate("500 Error: command \"FOO\" not recognized") == "500 5.5.2 syntax error"
    assert replies.translate("250 OK") == "250 OK"


@pytest.mark.parametrize("payload", [
    b"Subject: x\r\n\r\nhello\n.\nMAIL FROM:<evil@x>\r\n",
    b"Subject: x\r\n\r\nhello\r.\rRCPT TO:<y@z>\r\n",
    b"Subject: x\r\n\r\nhello\n.\r\nDATA\r\n",
    b"Subject: x\r\n\r\nhello\r\n.\rQUIT\r\n",
    b"Subject: x\nbody\r\n",
])
def test_bare_line_endings_are_refused(payload: bytes) -> None:
    assert content_problem(payload) is replies.BARE_LINE_ENDING


def test_nul_and_long_lines_refused_clean_mail_passes() -> None:
    assert content_problem(b"Subject: a\r\n\r\nx\x00y\r\n") is replies.NUL_IN_MESSAGE
    assert content_problem(b"Subject: a\r\n\r\n" + b"a" * 999 + b"\r\n") is replies.LINE_TOO_LONG
    assert content_problem(b"Subject: a\r\n\r\n" + b"a" * 998 + b"\r\n") is None
    assert content_problem("Subject: é\r\n\r\nüñí\r\n".encode()) is None


def test_received_header() -> None:
    info = TraceInfo(helo="client.example (evil)", client_ip="127.0.0.1", hostname="gw.example.com",
                     queue_id="Q1", tls=True, authenticated=True,
                     received_at=datetime(2026, 11, 24, 7, 0, tzinfo=UTC), recipient="a@b.example")
    header = received_header(info).decode()
    assert header.startswith("Received: from client.example evil ([127.0.0.1])\r\n\tby gw.example.com")
    assert "with ESMTPSA id Q1" in header and "for <a@b.example>; Tue, 24 Nov 2026 07:00:00 +0000" in header
    assert content_problem(received_header(info)) is None


@pytest.mark.parametrize(("address", "expected"), [
    ("User@Example.COM", "User@example.com"),
    ("josé@bücher.example", "josé@xn--bcher-kva.example"),
    ("a" * 65 + "@example.com", None),
    ("nodomain", None),
    ("a@localhost", None),
    ("a@bad_domain!.com", None),
    ("@example.com", None),
    ("\udcff@example.com", None),  # an undecodable byte, as aiosmtpd hands it over
])
def test_recipient_syntax(address: str, expected: str | None) -> None:
    assert normalize_recipient(address) == expected


def test_password_hash_round_trip() -> None:
    encoded = hash_password("correct horse", n=2**10)
    assert encoded.startswith("scrypt$1024$8$1$")
    assert verify_password("correct horse", encoded)
    assert not verify_password("wrong horse", encoded)
    with pytest.raises(BadHash):
        verify_password("x", "scrypt$abc")


def test_verified_cache_expires() -> None:
    cache = VerifiedCache(ttl=10)
    cache.remember("h", b"pw", now=100)
    assert cache.known("h", b"pw", now=105)
    assert not cache.known("h", b"other", now=105)
    assert not cache.known("h", b"pw", now=111)


def test_connection_counter_limits_per_ip_and_total() -> None:
    counter = ConnectionCounter(max_total=3, max_per_ip=2)
    assert counter.open("10.0.0.1") is None
    assert counter.open("10.0.0.1") is None
    assert counter.open("10.0.0.1") is replies.TOO_MANY_CONNECTIONS_FROM_IP
    assert counter.open("10.0.0.2") is None
    assert counter.open("10.0.0.3") is replies.TOO_MANY_CONNECTIONS
    counter.close("10.0.0.1")
    assert counter.open("10.0.0.3") is None


def test_auth_lockout_doubles_and_success_clears() -> None:
    lockout = AuthLockout(max_failures=3, base_lockout=60)
    assert not lockout.failure("ip", now=0)
    assert not lockout.failure("ip", now=1)
    assert lockout.failure("ip", now=2)
    assert lockout.locked("ip", now=61) and not lockout.locked("ip", now=62.5)
    for t in (100, 101, 102):
        lockout.failure("ip", now=t)
    assert lockout.locked("ip", now=221) and not lockout.locked("ip", now=223)
    lockout.success("ip")
    assert not lockout.locked("ip", now=103)


@pytest.mark.parametrize("arg", [
    "<alice@example.net>", "<Alice.Smith+tag@mail.example.net> SIZE=1234 BODY=8BITMIME",
    "<o'brien@example.net>", "<a@b>", "<>", "<\"quoted local\"@example.net>", "alice@example.net",
    "<a..b@example.net>", "<a@-bad.example>", "<@route:a@example.net>", "<josé@example.net>",
    "<a@example.net>x", " <a@example.net>",
])
def test_fast_path_parses_like_aiosmtpd(arg: str) -> None:
    from aiosmtpd.smtp import SMTP

    from gateway.smtp.server import SIMPLE_PATH, IntakeSMTP

    class Probe(IntakeSMTP):
        def __init__(self) -> None:  # no protocol set-up needed to parse
            self.local_part_limit = 0

    fast = SIMPLE_PATH.match(arg)
    library = SMTP._getaddr(Probe(), arg)  # type: ignore[arg-type]
    assert Probe()._getaddr(arg) == library
    if fast is not None:
        assert (fast.group(1), fast.group(2) or "") == library


async def _read(stream: bytes) -> tuple[bytes, bytes]:
    import asyncio

    from gateway.smtp.server import read_message_data

    reader = asyncio.StreamReader(limit=1 << 20)
    reader.feed_data(stream)
    reader.feed_eof()
    content = await read_message_data(reader, max_size=1 << 20)
    return content, await reader.read()


@pytest.mark.parametrize(("stream", "content"), [
    (b".\r\n", b""),
    (b"Subject: a\r\n\r\nbody\r\n.\r\n", b"Subject: a\r\n\r\nbody\r\n"),
    (b"..leading dot\r\n...two\r\n.\r\n", b".leading dot\r\n..two\r\n"),
    (b"x\n.\ny\r\n.\r\n", b"x\n.\ny\r\n"),        # bare-LF "end" is content, refused later
    (b"x\r.\ry\r\n.\r\n", b"x\r.\ry\r\n"),
    (b"x\r\n.\rMAIL\r\n.\r\n", b"x\r\n\rMAIL\r\n"),  # unstuffed like any line; bare CR refused later
])
async def test_data_reader_ends_only_at_crlf_dot_crlf(stream: bytes, content: bytes) -> None:
    assert await _read(stream + b"QUIT\r\n") == (content, b"QUIT\r\n")  # pipelined command kept


async def test_data_reader_bounds_memory_and_handles_chunks_without_dots() -> None:
    import asyncio

    from gateway.smtp.server import MessageTooBig, read_message_data

    reader = asyncio.StreamReader(limit=1024)
    body = b"".join(b"%06d" % n + b"y" * 90 + b"\r\n" for n in range(200))  # 19.6 KB, no dot lines
    reader.feed_data(body + b".\r\nQUIT\r\n")
    assert await read_message_data(reader, max_size=1 << 20) == body
    assert await reader.read(6) == b"QUIT\r\n"

    endless = asyncio.StreamReader(limit=1024)
    endless.feed_data(b"x" * 200_000)  # no terminator, far past the limit
    with pytest.raises(MessageTooBig):
        await read_message_data(endless, max_size=10_000)


def test_long_line_found_across_check_windows() -> None:
    from gateway.smtp.content import WINDOW

    lines = b"z" * 100 + b"\r\n"
    filler = lines * (WINDOW // len(lines) + 3)
    assert content_problem(filler) is None
    assert content_problem(filler + b"q" * 999 + b"\r\n" + filler) is replies.LINE_TOO_LONG
    head = lines * ((WINDOW - 400) // len(lines))  # the long line starts ~400 octets before the window ends
    assert len(head) < WINDOW < len(head) + 999
    assert content_problem(head + b"b" * 999 + b"\r\n" + lines) is replies.LINE_TOO_LONG
    assert content_problem(head + b"b" * 998 + b"\r\n" + lines) is None
    assert content_problem(b"c" * (WINDOW + 10) + b"\r\n") is replies.LINE_TOO_LONG
