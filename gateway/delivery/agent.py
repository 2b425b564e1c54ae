"""Outbound SMTP sessions (aiosmtplib): one lane per destination domain.

A lane holds a queue of waiting deliveries and at most ``connection_limit``
workers; each worker keeps one connection to the domain's best reachable MX host
and sends deliveries over it one SMTP transaction at a time, up to
``max_deliveries_per_connection``, closing it after ``idle_close`` seconds idle.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import ssl
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import aiosmtplib

from gateway import metrics
from gateway.delivery import replies
from gateway.dns.errors import PermanentDnsError, TemporaryDnsError
from gateway.dns.resolver import MxResolver, MxTarget
from gateway.records import AttemptResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    """A local address to send from and the HELO name that matches its PTR."""

    address: str | None
    helo: str


@dataclass(frozen=True)
class SessionLimits:
    """Per-destination-domain limits; per source IP per provider arrives with shaping."""

    connection_limit: int = 10
    max_deliveries_per_connection: int = 100
    connect_timeout: float = 30.0
    command_timeout: float = 300.0
    idle_close: float = 5.0
    tls: str = "opportunistic"  # opportunistic | required | disabled


@dataclass(frozen=True)
class Job:
    mail_from: str
    recipient: str
    head: bytes  # this copy's own header section
    body: bytes | memoryview  # shared by the message's copies; joined only when sent
    smtputf8: bool
    future: asyncio.Future[AttemptResult]


@dataclass
class _Lane:
    domain: str
    queue: asyncio.Queue[Job] = field(default_factory=asyncio.Queue)
    workers: int = 0


class _Connection:
    def __init__(self, client: aiosmtplib.SMTP, target: MxTarget, source: Source) -> None:
        self.client = client
        self.target = target
        self.source = source
        self.sent = 0
        self.broken = False

    @property
    def remote(self) -> str:
        return f"{self.target.host}[{self.target.address}]:{self.target.port}"


def _unverified_tls() -> ssl.SSLContext:
    # Opportunistic TLS (RFC 3207, like Postfix "may"): encrypt, do not authenticate.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class DeliveryAgent:
    def __init__(self, resolver: MxResolver, sources: Sequence[Source],
                 limits: SessionLimits) -> None:
        if not sources:
            raise ValueError("at least one source is required")
        self.resolver = resolver
        self.limits = limits
        self._sources: Iterator[Source] = itertools.cycle(sources)
        self._lanes: dict[str, _Lane] = {}
        self._workers: set[asyncio.Task[None]] = set()
        self._tls = _unverified_tls()
        self._closing = False

    def update_limits(self, limits: SessionLimits) -> None:
        """New policy; open connections finish under the old one."""
        self.limits = limits

    async def deliver(self, mail_from: str, recipient: str, domain: str, head: bytes,
                      body: bytes | memoryview = b"", *, smtputf8: bool = False) -> AttemptResult:
        """Send ``head + body``; ``smtputf8`` asks for SMTPUTF8 even with an ASCII envelope."""
        future: asyncio.Future[AttemptResult] = asyncio.get_running_loop().create_future()
        lane = self._lanes.setdefault(domain, _Lane(domain))
        lane.queue.put_nowait(Job(mail_from, recipient, head, body, smtputf8, future))
        self._staff(lane)
        return await future

    def _staff(self, lane: _Lane) -> None:
        """Start a worker when jobs outnumber workers, within the connection limit."""
        if self._closing:
            return
        if lane.workers < min(self.limits.connection_limit, lane.queue.qsize()):
            lane.workers += 1
            task = asyncio.create_task(self._work(lane), name=f"lane-{lane.domain}")
            self._workers.add(task)
            task.add_done_callback(self._workers.discard)

    async def close(self) -> None:
        self._closing = True
        for task in list(self._workers):
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)

    async def _work(self, lane: _Lane) -> None:
        conn: _Connection | None = None
        try:
            while True:
                try:
                    job = await asyncio.wait_for(lane.queue.get(), self.limits.idle_close)
                except TimeoutError:
                    return
                if job.future.cancelled():
                    continue
                if conn is None:
                    opened = await self._open_safely(lane.domain)
                    if isinstance(opened, AttemptResult):
                        self._fail_lane(lane, job, opened)
                        continue
                    conn = opened
                job.future.set_result(await self._send_safely(conn, job))
                conn.sent += 1
                if conn.broken or conn.sent >= self.limits.max_deliveries_per_connection:
                    await _quit(conn)
                    conn = None
        finally:
            lane.workers -= 1
            if conn is not None:
                await _quit(conn)
            if lane.workers == 0 and lane.queue.empty():
                self._lanes.pop(lane.domain, None)
            elif not lane.queue.empty():
                # A job can arrive just as an idle worker times out; never leave it unserved.
                self._staff(lane)

    def _fail_lane(self, lane: _Lane, job: Job, result: AttemptResult) -> None:
        """The destination is unreachable now: every job waiting for it gets the same answer."""
        if not job.future.done():
            job.future.set_result(result)
        while not lane.queue.empty():
            waiting = lane.queue.get_nowait()
            if not waiting.future.done():
                waiting.future.set_result(result)

    async def _open_safely(self, domain: str) -> _Connection | AttemptResult:
        try:
            return await self._open(domain)
        except Exception as exc:  # reported as a transient result
            log.exception("opening a connection for %s failed unexpectedly", domain)
            return replies.transient(f"internal error: {type(exc).__name__}")

    async def _open(self, domain: str) -> _Connection | AttemptResult:
        try:
            targets = await self.resolver.targets(domain)
        except PermanentDnsError as exc:
            return replies.permanent(str(exc))
        except TemporaryDnsError as exc:
            return replies.transient(str(exc))
        source = next(self._sources)
        failures: list[str] = []
        for target in targets:
            opened = await self._connect(target, source)
            if isinstance(opened, _Connection):
                return opened
            failures.append(opened)
        return replies.transient("; ".join(failures[-3:]) or f"no MX host for {domain}",
                                 source_ip=source.address)

    async def _connect(self, target: MxTarget, source: Source) -> _Connection | str:
        where = f"{target.host}[{target.address}]:{target.port}"
        # None = STARTTLS when offered; opportunistic falls back to plain text if TLS fails.
        modes: dict[str, list[bool | None]] = {
            "opportunistic": [None, False], "required": [True], "disabled": [False]}
        error = "no connection attempted"
        for start_tls in modes[self.limits.tls]:
            client = aiosmtplib.SMTP(
                hostname=target.address, port=target.port, local_hostname=source.helo,
                source_address=(source.address, 0) if source.address else None,
                timeout=self.limits.command_timeout, start_tls=start_tls,
                validate_certs=False, tls_context=self._tls if start_tls is not False else None)
            try:
                await client.connect(timeout=self.limits.connect_timeout)
                return _Connection(client, target, source)
            except aiosmtplib.SMTPResponseException as exc:
                error = f"{where} greeted with {exc.code} {exc.message}"
                break  # a refusing server does not accept us without TLS either
            except (aiosmtplib.SMTPException, OSError, ssl.SSLError) as exc:
                error = f"connect to {where} failed: {exc}"
                client.close()
        log.info("%s", error)
        return error

    async def _send_safely(self, conn: _Connection, job: Job) -> AttemptResult:
        """Every job gets an answer: a bug here must defer one delivery, not hang a slot."""
        try:
            return await self._send(conn, job)
        except Exception as exc:  # reported as a transient result
            log.exception("delivery to %s failed unexpectedly", job.recipient)
            conn.broken = True
            return replies.transient(f"internal error: {type(exc).__name__}", remote=conn.remote)

    async def _send(self, conn: _Connection, job: Job) -> AttemptResult:
        started = time.perf_counter()
        result = await self._transaction(conn, job)
        metrics.DELIVERY_SECONDS.labels(result.kind).observe(time.perf_counter() - started)
        return result

    async def _transaction(self, conn: _Connection, job: Job) -> AttemptResult:
        client, remote, source_ip = conn.client, conn.remote, conn.source.address
        data = job.head + job.body
        options = []
        if _has_8bit(data) and client.supports_extension("8bitmime"):
            options.append("BODY=8BITMIME")
        encoding = "ascii"
        if job.smtputf8 or not (job.mail_from + job.recipient).isascii():
            if not client.supports_extension("smtputf8"):
                return replies.permanent(  # RFC 6531 3.4; Postfix does the same
                    "5.6.7 remote server does not support SMTPUTF8, needed for this address",
                    remote=remote)
            options.append("SMTPUTF8")
            encoding = "utf-8"
        try:
            await client.mail(job.mail_from, options=options, encoding=encoding)
            await client.rcpt(job.recipient, encoding=encoding)
            response = await client.data(data)
        except aiosmtplib.SMTPResponseException as exc:
            await _reset(conn)
            return replies.from_reply(exc.code, exc.message, remote=remote, source_ip=source_ip)
        except (aiosmtplib.SMTPException, OSError) as exc:
            conn.broken = True
            return replies.transient(f"lost connection with {remote}: {exc}", remote=remote,
                                     source_ip=source_ip)
        return replies.from_reply(response.code, response.message, remote=remote,
                                  source_ip=source_ip)


def _has_8bit(body: bytes) -> bool:
    return not body.isascii()


async def _reset(conn: _Connection) -> None:
    try:
        await conn.client.rset()
    except (aiosmtplib.SMTPException, OSError):
        conn.broken = True


async def _quit(conn: _Connection) -> None:
    try:
        await asyncio.wait_for(conn.client.quit(), 5)
    except (aiosmtplib.SMTPException, OSError, TimeoutError):
        conn.client.close()
