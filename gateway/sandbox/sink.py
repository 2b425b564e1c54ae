"""A fake receiving MX for tests, benchmarks and the demo.

``SinkServer`` listens on a loopback address, records what it accepts byte for byte and counts
connections (overall and per client IP, to check per-IP connection limits of the delivery
code). A ``ReplyScript`` makes it behave like a difficult ISP: per-recipient 4xx/5xx at RCPT or
DATA, dropped connections, slow DATA replies, "the first N messages get 451".

Two engines:

* ``"aiosmtpd"`` (default): aiosmtpd's SMTP with scripting and optional STARTTLS. Its DATA
  reading is replaced (aiosmtpd reads line by line, ~1 ms of CPU per 10 KB message) and plain
  ``<addr>`` paths skip the email header parser. Lines over 1000 octets are refused with 500
  (RFC 5321 4.5.3.1.6), as a strict receiver would.
* ``"fast"``: a small accept-everything protocol (PIPELINING, no script, no TLS, no line-length
  check) costing a fraction of the CPU, so a benchmark measures the gateway, not the sink.

CLI: ``python -m gateway.sandbox.sink --listen HOST:PORT [--out DIR] [--stats-interval S]``
(fast engine unless ``--engine aiosmtpd``) accepts everything, optionally writes ``<n>.eml``
plus an envelope sidecar ``<n>.json`` per message, and prints one JSON line of counters on
SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import ssl
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Protocol, cast

from aiosmtpd.smtp import SMTP, Envelope, Session, syntax

from gateway.config.units import parse_host_port
from gateway.smtp.server import receive_data

Stage = Literal["rcpt", "data"]
Engine = Literal["aiosmtpd", "fast"]
Matcher = str | re.Pattern[str] | None

MAX_DATA_BYTES = 64 * 1024 * 1024
NULL_PATH = "<>"
MAX_COMMAND = 4096
MAX_LINE = 998
"""RFC 5321 4.5.3.1.6: 1000 octets per line including the CRLF."""

_SIMPLE_PATH = re.compile(r'\s*<([^\s<>()\[\]\\":;,]*)>(.*)\Z', re.DOTALL)
_REPLY_RE = re.compile(r"[245]\d\d(?:[ -]|\Z)")


@dataclass(frozen=True)
class ReceivedMessage:
    """One accepted message; ``data`` is exactly what the client sent, dot-unstuffed."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    peer_ip: str
    helo: str
    received_at: float
    tls: bool


@dataclass(frozen=True)
class Action:
    """What the script decided for one RCPT or DATA: a reply (None = default), drop, delay."""

    reply: str | None = None
    disconnect: bool = False
    delay: float = 0.0


@dataclass
class _Rule:
    stage: Stage
    kind: Literal["reply", "disconnect", "delay"]
    match: Matcher
    remaining: int | None
    reply: str | None = None
    seconds: float = 0.0

    def applies(self, addresses: Sequence[str]) -> bool:
        if self.remaining is not None and self.remaining <= 0:
            return False
        return self.match is None or any(self._matches(address) for address in addresses)

    def _matches(self, address: str) -> bool:
        if isinstance(self.match, re.Pattern):
            return self.match.search(address) is not None
        return address.casefold() == str(self.match).casefold()

    def consume(self) -> None:
        if self.remaining is not None:
            self.remaining -= 1


class ReplyScript:
    """Scripted replies, checked in the order they were added; the first match wins.

    A ``match`` is an exact address (case-insensitive), a compiled regex (``search``) or None
    for any recipient; at DATA a rule matches when any recipient of the message matches.
    ``times`` limits a rule to its first N matching events (then it no longer applies), which is
    how "the first N messages get 451, then 250" is written. Counting is shared by all
    connections. Methods return the script so calls can be chained.
    """

    def __init__(self) -> None:
        self._rules: list[_Rule] = []

    def on_rcpt(self, match: Matcher, reply: str, *, times: int | None = None) -> ReplyScript:
        """Answer RCPT TO for matching recipients with ``reply`` (a 2xx reply accepts it)."""
        return self._add(_Rule("rcpt", "reply", match, times, reply=_checked(reply)))

    def on_data(
        self, reply: str, *, match: Matcher = None, times: int | None = None
    ) -> ReplyScript:
        """Answer the end of DATA with ``reply``; a non-2xx reply means nothing is recorded."""
        return self._add(_Rule("data", "reply", match, times, reply=_checked(reply)))

    def first(self, count: int, reply: str, *, match: Matcher = None) -> ReplyScript:
        """The first ``count`` messages get ``reply`` at DATA, later ones the normal 250."""
        return self.on_data(reply, match=match, times=count)

    def disconnect(
        self, stage: Stage, *, match: Matcher = None, times: int | None = None
    ) -> ReplyScript:
        """Close the connection without any reply at RCPT or at the end of DATA."""
        return self._add(_Rule(stage, "disconnect", match, times))

    def delay(
        self, stage: Stage, seconds: float, *, match: Matcher = None, times: int | None = None
    ) -> ReplyScript:
        """Wait before replying; combines with a later reply or disconnect rule."""
        return self._add(_Rule(stage, "delay", match, times, seconds=seconds))

    def decide(self, stage: Stage, addresses: Sequence[str]) -> Action:
        delay = 0.0
        for rule in self._rules:
            if rule.stage != stage or not rule.applies(addresses):
                continue
            rule.consume()
            if rule.kind == "delay":
                delay = delay or rule.seconds
                continue
            return Action(rule.reply, rule.kind == "disconnect", delay)
        return Action(delay=delay)

    def _add(self, rule: _Rule) -> ReplyScript:
        self._rules.append(rule)
        return self


def _checked(reply: str) -> str:
    if not _REPLY_RE.match(reply):
        raise ValueError(f"bad SMTP reply {reply!r}: expected e.g. '451 4.3.0 try later'")
    return reply


class _Handler:
    """aiosmtpd hooks; the default path (no script) is kept minimal for benchmarks."""

    def __init__(self, sink: SinkServer) -> None:
        self._sink = sink

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        action = self._sink.decide("rcpt", (address,))
        reply = await self._sink.act(action, server)
        if reply is None or reply.startswith("2"):
            envelope.rcpt_tos.append(address)
        return reply or "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        action = self._sink.decide("data", envelope.rcpt_tos)
        reply = await self._sink.act(action, server)
        if reply is None or reply.startswith("2"):
            wanted = self._sink.wants_messages
            self._sink.accept(_from_aiosmtpd(session, envelope) if wanted else None)
        return reply or "250 2.0.0 OK"


def _from_aiosmtpd(session: Session, envelope: Envelope) -> ReceivedMessage:
    return ReceivedMessage(
        mail_from="" if envelope.mail_from == NULL_PATH else envelope.mail_from or "",
        rcpt_tos=tuple(envelope.rcpt_tos),
        data=envelope.original_content or b"",
        peer_ip=str(session.peer[0]) if session.peer else "",
        helo=session.host_name or "",
        received_at=time.time(),
        tls=session.ssl is not None,
    )


class _SinkSMTP(SMTP):
    """Counts each TCP connection once and reads DATA in large pieces.

    aiosmtpd reads DATA line by line (about 1 ms of CPU for a 10 KB message), which would make
    the sink the bottleneck of every benchmark; ``smtp_DATA`` here reads up to each ".<CRLF>"
    instead. The StreamReader limit (``line_length_limit``) is raised for that; over-long lines
    are still refused, after the whole message was read.
    """

    line_length_limit = MAX_DATA_BYTES

    def __init__(self, sink: SinkServer, handler: _Handler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._sink = sink
        self._peer_ip: str | None = None
        self._in_mail = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self._peer_ip is None:
            peer = transport.get_extra_info("peername")
            self._peer_ip = str(peer[0]) if peer else "?"
            self._sink.opened(self, self._peer_ip)

    def connection_lost(self, error: Exception | None) -> None:
        super().connection_lost(error)
        if self._peer_ip is not None:
            self._sink.closed(self, self._peer_ip)
            self._peer_ip = None

    def shutdown(self) -> asyncio.Task[None] | None:
        if self.transport is not None:
            self.transport.close()
        return self._handler_coroutine

    @syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_MAIL(self, arg: str | None) -> None:
        self._in_mail = True
        try:
            await super().smtp_MAIL(arg)
        finally:
            self._in_mail = False

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """Plain ``<local@domain>`` without the email header parser (most of MAIL/RCPT's CPU).

        aiosmtpd refuses the null reverse-path that every MX must accept (RFC 5321 4.5.5) and
        treats an empty ``mail_from`` as "no MAIL yet", so MAIL FROM:<> is stored as "<>".
        """
        simple = _SIMPLE_PATH.match(arg)
        if simple is None:
            return super()._getaddr(arg)
        address = simple.group(1) or (NULL_PATH if self._in_mail else "")
        return address, simple.group(2)

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        content = await receive_data(self, arg, self.data_size_limit or MAX_DATA_BYTES)
        if content is None:
            return
        assert self.envelope is not None
        status = _content_problem(content, self.data_size_limit)
        if status is None:
            self.envelope.content = self.envelope.original_content = content
            status = await self._call_handler_hook("DATA")
        self.envelope = self._create_envelope()
        await self.push(status)


def _content_problem(content: bytes, size_limit: int | None) -> str | None:
    if size_limit and len(content) > size_limit:
        return "552 5.3.4 message too big"
    if len(content) > MAX_LINE and max(map(len, content.split(b"\n"))) > MAX_LINE + 1:
        return "500 5.5.6 line too long (RFC 5321 4.5.3.1.6)"
    return None


class _Connection(Protocol):
    def shutdown(self) -> asyncio.Task[None] | None:
        """Close the connection; return the task to wait for, if the engine has one."""


class _FastSmtp(asyncio.Protocol):
    """Accept-everything SMTP as a plain protocol: no task, no StreamReader, batched replies."""

    def __init__(self, sink: SinkServer, hostname: str) -> None:
        self._sink = sink
        self._hostname = hostname
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._peer_ip = "?"
        self._helo = ""
        self._mail_from: str | None = None
        self._rcpts: list[str] = []
        self._in_data = False
        self._scan_from = 0
        self._quit = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self._peer_ip = str(peer[0]) if peer else "?"
        self._sink.opened(self, self._peer_ip)
        self._transport.write(f"220 {self._hostname} ESMTP sink\r\n".encode())

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._sink.closed(self, self._peer_ip)

    def shutdown(self) -> asyncio.Task[None] | None:
        if self._transport is not None:
            self._transport.close()
        return None

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        replies: list[bytes] = []
        while not self._quit and (reply := self._step()) is not None:
            replies.append(reply)
        if self._transport is not None:
            self._transport.write(b"".join(replies))
            if self._quit:
                self._transport.close()

    def _step(self) -> bytes | None:
        """Consume one command or one whole message from the buffer; None when incomplete."""
        if self._in_data:
            return self._data_step()
        end = self._buffer.find(b"\n")
        if end < 0:
            if len(self._buffer) <= MAX_COMMAND:
                return None
            self._buffer.clear()
            return b"500 5.5.2 line too long\r\n"
        line = bytes(self._buffer[:end]).rstrip(b"\r").decode("utf-8", "surrogateescape")
        del self._buffer[: end + 1]
        return self._command(line).encode("utf-8", "surrogateescape") + b"\r\n"

    def _data_step(self) -> bytes | None:
        buffer = self._buffer
        if buffer.startswith(b".\r\n"):
            end, skip = 0, 3
        else:
            found = buffer.find(b"\r\n.\r\n", self._scan_from)
            if found < 0:
                self._scan_from = max(0, len(buffer) - 4)
                if len(buffer) <= MAX_DATA_BYTES:
                    return None
                self._quit = True
                return b"552 5.3.4 message too big\r\n"
            end, skip = found + 2, found + 5
        content = bytes(buffer[:end])
        del buffer[:skip]
        self._in_data, self._scan_from = False, 0
        self._sink.accept(self._message(content) if self._sink.wants_messages else None)
        self._mail_from, self._rcpts = None, []
        return b"250 2.0.0 OK\r\n"

    def _message(self, content: bytes) -> ReceivedMessage:
        data = (b"\r\n" + content).replace(b"\r\n.", b"\r\n")[2:]
        rcpts = tuple(self._rcpts)
        return ReceivedMessage(
            self._mail_from or "", rcpts, data, self._peer_ip, self._helo, time.time(), False
        )

    def _command(self, line: str) -> str:
        verb, _, arg = line.partition(" ")
        match verb.upper():
            case "EHLO" | "HELO" as command:
                self._helo, self._mail_from, self._rcpts = arg.strip(), None, []
                return self._greet(command)
            case "MAIL":
                return self._mail(_path(arg, "FROM:"))
            case "RCPT":
                return self._rcpt(_path(arg, "TO:"))
            case "DATA":
                self._in_data = bool(self._rcpts)
                return "354 End data with <CR><LF>.<CR><LF>" if self._in_data else _NEED_RCPT
            case "RSET":
                self._mail_from, self._rcpts = None, []
                return "250 2.0.0 OK"
            case "NOOP":
                return "250 2.0.0 OK"
            case "QUIT":
                self._quit = True
                return "221 2.0.0 Bye"
        return "502 5.5.2 command not recognized"

    def _greet(self, command: str) -> str:
        if command == "HELO":
            return f"250 {self._hostname}"
        extensions = ("PIPELINING", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES")
        lines = [self._hostname, *extensions, f"SIZE {MAX_DATA_BYTES}"]
        return "\r\n".join(f"250-{text}" for text in lines[:-1]) + f"\r\n250 {lines[-1]}"

    def _mail(self, path: str | None) -> str:
        if path is None:
            return "501 5.5.4 Syntax: MAIL FROM:<address>"
        self._mail_from, self._rcpts = path, []
        return "250 2.1.0 OK"

    def _rcpt(self, path: str | None) -> str:
        if self._mail_from is None:
            return "503 5.5.1 need MAIL command"
        if not path:
            return "501 5.5.4 Syntax: RCPT TO:<address>"
        self._rcpts.append(path)
        return "250 2.1.5 OK"


_NEED_RCPT = "503 5.5.1 need RCPT command"


def _path(arg: str, keyword: str) -> str | None:
    """The address of "FROM:<a@b> PARAMS" (brackets optional); None when malformed."""
    if arg[: len(keyword)].upper() != keyword:
        return None
    rest = arg[len(keyword) :].strip()
    if not rest.startswith("<"):
        return rest.split(" ", 1)[0] or None
    end = rest.find(">")
    return rest[1:end] if end > 0 else None


class SinkServer:
    """An SMTP server that accepts (or, scripted, refuses) mail and remembers what it got."""

    def __init__(
        self,
        host: str,
        port: int = 0,
        *,
        script: ReplyScript | None = None,
        keep_messages: bool = True,
        tls_context: ssl.SSLContext | None = None,
        hostname: str = "sink.localhost",
        data_size_limit: int | None = None,
        on_message: Callable[[ReceivedMessage], None] | None = None,
        engine: Engine = "aiosmtpd",
    ) -> None:
        if engine == "fast" and (script is not None or tls_context is not None):
            raise ValueError("the fast engine supports neither a reply script nor TLS")
        self.host = host
        self.port = port
        self.script = script
        self.keep_messages = keep_messages
        self.on_message = on_message
        self.messages: list[ReceivedMessage] = []
        self.messages_total = 0
        self.connections_total = 0
        self.current_connections = 0
        self.max_concurrent_connections = 0
        self.max_concurrent_by_peer: dict[str, int] = {}
        self._by_peer: dict[str, int] = {}
        self._live: set[_Connection] = set()
        self._engine = engine
        self._hostname = hostname
        self._arrival = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._smtp_options: dict[str, Any] = {
            "hostname": hostname,
            "tls_context": tls_context,
            "data_size_limit": data_size_limit,
            "enable_SMTPUTF8": True,
            "decode_data": False,
        }

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("sink already started")
        self._server = await asyncio.get_running_loop().create_server(
            self._protocol_factory(), self.host, self.port, reuse_address=True
        )
        self.port = int(self._server.sockets[0].getsockname()[1])

    def _protocol_factory(self) -> Callable[[], asyncio.BaseProtocol]:
        if self._engine == "fast":
            return lambda: _FastSmtp(self, self._hostname)
        loop = asyncio.get_running_loop()
        handler = _Handler(self)
        return lambda: _SinkSMTP(self, handler, loop=loop, **self._smtp_options)

    async def stop(self) -> None:
        """Stop listening and drop open sessions; returns when their tasks have finished."""
        if self._server is None:
            return
        self._server.close()
        tasks = [task for conn in list(self._live) if (task := conn.shutdown()) is not None]
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(0)  # closed transports report connection_lost on the next turn
        await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> SinkServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def wait_for(
        self,
        count: int,
        timeout: float,  # noqa: ASYNC109 - part of the agreed test API
    ) -> list[ReceivedMessage]:
        """Wait until ``count`` messages in total were accepted; TimeoutError otherwise."""
        try:
            async with asyncio.timeout(timeout):
                while self.messages_total < count:
                    await self._arrival.wait()
        except TimeoutError:
            got = self.messages_total
            raise TimeoutError(f"sink got {got} of {count} messages in {timeout}s") from None
        return list(self.messages)

    def counters(self) -> dict[str, Any]:
        return {
            "messages": self.messages_total,
            "connections_total": self.connections_total,
            "current_connections": self.current_connections,
            "max_concurrent_connections": self.max_concurrent_connections,
            "max_concurrent_by_peer": dict(self.max_concurrent_by_peer),
        }

    # -- called by the protocol and the handler -------------------------------------------------

    def decide(self, stage: Stage, addresses: Sequence[str]) -> Action:
        return Action() if self.script is None else self.script.decide(stage, addresses)

    async def act(self, action: Action, smtp: SMTP) -> str | None:
        """Apply delay and disconnect; returns the scripted reply (None for the default)."""
        if action.delay > 0:
            await asyncio.sleep(action.delay)
        if action.disconnect:
            if isinstance(smtp.transport, asyncio.Transport):
                smtp.transport.abort()
            # Ends aiosmtpd's session task the way a lost connection does, with no reply.
            raise asyncio.CancelledError
        return action.reply

    @property
    def wants_messages(self) -> bool:
        """Whether engines should build ReceivedMessage objects at all (benchmarks say no)."""
        return self.keep_messages or self.on_message is not None

    def accept(self, message: ReceivedMessage | None) -> None:
        self.messages_total += 1
        if message is not None:
            if self.keep_messages:
                self.messages.append(message)
            if self.on_message is not None:
                self.on_message(message)
        self._arrival.set()
        self._arrival = asyncio.Event()

    def opened(self, conn: _Connection, peer_ip: str) -> None:
        self._live.add(conn)
        self.connections_total += 1
        self.current_connections += 1
        self.max_concurrent_connections = max(
            self.max_concurrent_connections, self.current_connections
        )
        count = self._by_peer.get(peer_ip, 0) + 1
        self._by_peer[peer_ip] = count
        best = self.max_concurrent_by_peer.get(peer_ip, 0)
        self.max_concurrent_by_peer[peer_ip] = max(best, count)

    def closed(self, conn: _Connection, peer_ip: str) -> None:
        self._live.discard(conn)
        self.current_connections -= 1
        self._by_peer[peer_ip] -= 1


# -- command line ------------------------------------------------------------------------------


class InboxWriter:
    """Writes ``<n>.eml`` and ``<n>.json``; plain synchronous writes, good enough for a fake
    (the CLI's ``--out`` and the demo's inboxes)."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._directory = directory
        self._count = 0

    def __call__(self, message: ReceivedMessage) -> None:
        self._count += 1
        base = self._directory / str(self._count)
        base.with_suffix(".eml").write_bytes(message.data)
        envelope = {k: v for k, v in asdict(message).items() if k != "data"}
        envelope["size"] = len(message.data)
        base.with_suffix(".json").write_text(json.dumps(envelope) + "\n")


async def _report(sink: SinkServer, interval: float, started: float) -> None:
    while True:
        await asyncio.sleep(interval)
        _print_counters(sink, started)


def _print_counters(sink: SinkServer, started: float) -> None:
    elapsed = time.monotonic() - started
    line = {**sink.counters(), "elapsed": round(elapsed, 3)}
    print(json.dumps(line), flush=True)


async def _serve(sink: SinkServer, stats_interval: float | None) -> None:
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopped.set)
    async with sink:
        started = time.monotonic()
        print(f"sink listening on {sink.host}:{sink.port}", file=sys.stderr, flush=True)
        reporter = None
        if stats_interval:
            reporter = loop.create_task(_report(sink, stats_interval, started))
        await stopped.wait()
        if reporter is not None:
            reporter.cancel()
        _print_counters(sink, started)


def _script_from(replies: Sequence[str]) -> ReplyScript | None:
    """``ADDRESS=REPLY`` pairs from the command line as a reply script (None: accept all)."""
    if not replies:
        return None
    script = ReplyScript()
    for pair in replies:
        address, equals, reply = pair.partition("=")
        if not equals or "@" not in address:
            raise ValueError(f"--reply {pair!r}: expected ADDRESS=REPLY, e.g. "
                             "'gone@example.net=550 5.1.1 user unknown'")
        script.on_rcpt(address.strip(), reply.strip())
    return script


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="SMTP sink that accepts every message.")
    parser.add_argument("--listen", default="127.0.1.1:2526", help="HOST:PORT (%(default)s)")
    parser.add_argument("--out", type=Path, help="write <n>.eml and <n>.json here")
    parser.add_argument("--stats-interval", type=float, help="print counters every N seconds")
    parser.add_argument("--engine", choices=["fast", "aiosmtpd"], default="fast")
    parser.add_argument("--reply", action="append", default=[], metavar="ADDRESS=REPLY",
                        help="answer RCPT TO:<ADDRESS> with REPLY, e.g. "
                             "'gone@example.net=550 5.1.1 user unknown' (repeatable; "
                             "uses the aiosmtpd engine)")
    args = parser.parse_args(argv)
    try:
        endpoint = parse_host_port(args.listen)
        writer = InboxWriter(args.out) if args.out else None
        script = _script_from(args.reply)
    except (OSError, ValueError) as exc:
        print(f"sink: {exc}", file=sys.stderr)
        return 2
    sink = SinkServer(
        endpoint.host, endpoint.port, keep_messages=False, on_message=writer, script=script,
        engine="aiosmtpd" if script is not None else args.engine,
    )
    try:
        asyncio.run(_serve(sink, args.stats_interval))
    except OSError as exc:
        print(f"sink: cannot listen on {args.listen}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
