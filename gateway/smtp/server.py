"""Listening sockets for intake: plain (with STARTTLS), implicit TLS, trusted-local.

Each accepted connection gets an :class:`IntakeSMTP`, aiosmtpd's protocol with
three additions: connection admission per client IP, every reply passed through
the reply table, and AUTH allowed without TLS only where the listener says so.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import ssl
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, AnyStr

from aiosmtpd.smtp import SMTP, syntax

from gateway import metrics
from gateway.config.schema import SmtpSettings
from gateway.config.units import HostPort
from gateway.smtp import replies
from gateway.smtp.handler import IntakeHandler
from gateway.smtp.limits import ConnectionCounter
from gateway.smtp.replies import translate

log = logging.getLogger(__name__)

IDENT = "ESMTP smtp-gateway"
READ_CHUNK = 64 * 1024  # StreamReader limit: the most one read may hold (a command line too)
OVERRUN_MARGIN = 64 * 1024  # past max_message_size + this, stop reading and close


async def receive_data(protocol: SMTP, arg: str, max_size: int,
                       on_progress: Callable[[], None] = lambda: None) -> bytes | None:
    """DATA up to the content: preconditions, the 354, the read. None when a reply was sent.

    Past ``max_size`` (plus a margin) the rest of the message is unread, so the session
    cannot be resynchronised: 552, drop what is buffered (aiosmtpd does the same at
    STARTTLS) so none of it is read as commands, and close.
    """
    if await protocol.check_helo_needed() or await protocol.check_auth_needed("DATA"):
        return None
    assert protocol.envelope is not None
    if not protocol.envelope.rcpt_tos:
        await protocol.push(str(replies.NEED_RCPT))
        return None
    if arg:
        await protocol.push(str(replies.SYNTAX_ERROR))
        return None
    await protocol.push(str(replies.START_DATA))
    reader = protocol._reader
    try:
        return await read_message_data(reader, max_size, on_progress)
    except MessageTooBig:
        await protocol.push(str(replies.MESSAGE_TOO_BIG))
        reader._buffer.clear()  # type: ignore[attr-defined]
        if protocol.transport is not None:
            protocol.transport.close()
        return None


class MessageTooBig(Exception):
    """DATA ran past the size limit; the rest is unread, so the session cannot go on."""


async def read_message_data(reader: asyncio.StreamReader, max_size: int,
                            on_progress: Callable[[], None] = lambda: None) -> bytes:
    """Read DATA to the lone "." line and undo dot-stuffing (RFC 5321 4.5.2).

    Only CRLF "." CRLF ends the message: "\n.\n" and other bare-ending variants stay in
    the content, where intake refuses them. The buffer starts with CRLF so that the first
    line, and an empty message, look like every other line start. Memory is bounded by
    ``max_size`` plus a margin, checked after every chunk.
    """
    buffer = bytearray(b"\r\n")
    while not buffer.endswith(b"\r\n.\r\n"):
        try:
            buffer += await reader.readuntil(b".\r\n")
        except asyncio.LimitOverrunError as overrun:
            # No ".<CRLF>" in a full chunk: take what cannot be part of one, read on.
            buffer += await reader.readexactly(overrun.consumed)
        on_progress()
        if len(buffer) > max_size + OVERRUN_MARGIN:
            raise MessageTooBig
    return bytes(buffer[:-3]).replace(b"\r\n.", b"\r\n")[2:]

_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
# "<dot-atom@host.name>" and what follows: the form nearly every mailer sends, for which
# aiosmtpd's parser (email._header_value_parser) would give the same answer much slower.
# Parameters after it are handed on with leading blanks removed, as the parser does;
# anything with a comment "(...)" takes the slow path.
SIMPLE_PATH = re.compile(rf"^<({_ATOM}(?:\.{_ATOM})*@{_LABEL}(?:\.{_LABEL})*)>[ \t]*([^(\s][^(]*)?$")


class IntakeSMTP(SMTP):
    """aiosmtpd's protocol, reading DATA in large pieces instead of line by line.

    aiosmtpd awaits one ``readuntil`` per line (about 140 for a 10 KB message), the largest
    CPU cost of intake. Here DATA is read up to each ".<CRLF>" in chunks of up to 64 KiB;
    command lines are still checked against 512 octets.
    """

    def __init__(self, handler: IntakeHandler, *, connections: ConnectionCounter,
                 **kwargs: Any) -> None:
        self.line_length_limit = READ_CHUNK  # read by super().__init__ for the StreamReader
        super().__init__(handler, **kwargs)
        self._connections = connections
        self._admitted: bool | None = None
        self._last_progress = 0.0
        self._client_ip = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._admitted is None:  # the first call; STARTTLS calls again with the TLS transport
            peer = transport.get_extra_info("peername")
            self._client_ip = str(peer[0]) if peer else "unknown"
            refusal = self._connections.open(self._client_ip)
            self._admitted = refusal is None
            if refusal is not None:
                metrics.SMTP_CONNECTIONS.labels(
                    "refused_total" if refusal.status == "4.3.2" else "refused_per_ip").inc()
                assert isinstance(transport, asyncio.WriteTransport)
                transport.write(f"{refusal}\r\n".encode("ascii"))
                transport.close()
                return
            metrics.SMTP_CONNECTIONS.labels("accepted").inc()
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if not self._admitted:
            return
        self._admitted = False
        self._connections.close(self._client_ip)
        super().connection_lost(error)

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """Parse MAIL/RCPT paths; the everyday form skips the email package's slow parser."""
        simple = SIMPLE_PATH.match(arg)
        if simple is not None:
            return simple.group(1), simple.group(2) or ""
        address, rest = super()._getaddr(arg)
        return address, rest

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        content = await receive_data(self, arg, self.data_size_limit or sys.maxsize,
                                     self._still_active)
        if content is None:
            return
        assert self.envelope is not None
        if self.data_size_limit and len(content) > self.data_size_limit:
            status = str(replies.MESSAGE_TOO_BIG)
        else:
            self.envelope.content = self.envelope.original_content = content
            status = await self._call_handler_hook("DATA")
        self.envelope = self._create_envelope()  # what aiosmtpd does after DATA
        await self.push(status)

    def _still_active(self) -> None:
        """Data is arriving: a long DATA transfer is not an idle session.

        Rescheduling the timer costs a timer handle; once a second is plenty.
        """
        now = self.loop.time()
        if now - self._last_progress >= 1.0:
            self._last_progress = now
            self._reset_timeout()

    def _timeout_cb(self) -> None:
        """Say why before closing an idle session (RFC 5321 4.5.3.2); aiosmtpd just closes."""
        if isinstance(self.transport, asyncio.WriteTransport) and not self.transport.is_closing():
            self.transport.write(f"{replies.IDLE_TIMEOUT}\r\n".encode("ascii"))
        super()._timeout_cb()  # type: ignore[no-untyped-call]

    async def push(self, status: AnyStr) -> None:
        if isinstance(status, str):
            status = translate(status)
        await super().push(status)


@dataclass
class Listener:
    endpoint: HostPort
    kind: str  # "plain" | "tls" | "trusted-local"
    server: asyncio.Server

    @property
    def port(self) -> int:
        sockname = self.server.sockets[0].getsockname()
        return int(sockname[1])


def tls_context(settings: SmtpSettings) -> ssl.SSLContext | None:
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(settings.tls_cert), str(settings.tls_key))
    return context


async def start_listeners(settings: SmtpSettings, handler: IntakeHandler,
                          connections: ConnectionCounter, *,
                          reuse_port: bool = False) -> list[Listener]:
    """Bind every configured endpoint; raise OSError naming the one that failed."""
    context = tls_context(settings)
    plan = ([(e, "plain") for e in settings.listen] + [(e, "tls") for e in settings.listen_tls]
            + [(e, "trusted-local") for e in settings.listen_trusted_local])
    listeners: list[Listener] = []
    loop = asyncio.get_running_loop()
    for endpoint, kind in plan:
        def factory(kind: str = kind) -> IntakeSMTP:
            return IntakeSMTP(
                handler, connections=connections, hostname=settings.hostname, ident=IDENT,
                data_size_limit=settings.max_message_size, enable_SMTPUTF8=True,
                decode_data=False, timeout=settings.idle_timeout,
                tls_context=context if kind == "plain" else None,
                # Implicit TLS is already encrypted; trusted-local is loopback by validation.
                auth_require_tls=kind == "plain", loop=loop)
        try:
            server = await loop.create_server(
                factory, host=endpoint.host, port=endpoint.port, reuse_address=True,
                reuse_port=reuse_port, ssl=context if kind == "tls" else None,
                family=socket.AF_INET6 if ":" in endpoint.host else socket.AF_INET)
        except OSError as exc:
            for listener in listeners:
                listener.server.close()
            raise OSError(exc.errno, f"cannot listen on {endpoint} ({kind}): {exc.strerror}") from exc
        listeners.append(Listener(endpoint, kind, server))
        log.info("SMTP listening on %s (%s)", endpoint, kind)
    return listeners
