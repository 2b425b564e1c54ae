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
from dataclasses import dataclass
from typing import Any, AnyStr

from aiosmtpd.smtp import SMTP

from gateway import metrics
from gateway.config.schema import SmtpSettings
from gateway.config.units import HostPort
from gateway.smtp.handler import IntakeHandler
from gateway.smtp.limits import ConnectionCounter
from gateway.smtp.replies import translate

log = logging.getLogger(__name__)

IDENT = "ESMTP smtp-gateway"

_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
# "<dot-atom@host.name>" and what follows: the form nearly every mailer sends, for which
# aiosmtpd's parser (email._header_value_parser) would give the same answer much slower.
# Parameters after it are handed on with leading blanks removed, as the parser does;
# anything with a comment "(...)" takes the slow path.
SIMPLE_PATH = re.compile(rf"^<({_ATOM}(?:\.{_ATOM})*@{_LABEL}(?:\.{_LABEL})*)>[ \t]*([^(\s][^(]*)?$")


class IntakeSMTP(SMTP):
    def __init__(self, handler: IntakeHandler, *, connections: ConnectionCounter,
                 **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._connections = connections
        self._admitted: bool | None = None
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
