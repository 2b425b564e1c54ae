"""Outbound SMTP sessions (aiosmtplib), shaped per receiving provider and source IP.

A delivery is routed before it waits for a connection: MX lookup -> provider (shaping
Router) -> pool -> source IP (weighted round robin among IPs not suspended for the
provider and under today's warm-up cap). It then joins a *lane*: the deliveries for one MX
host set ("site") from one source IP, in priority order (transactional first). A lane's
workers each hold one connection slot counted per (provider, source IP) and per provider
in the ThrottleStore, so ``connection_limit`` and ``provider_connection_limit`` hold across
all the sites a provider serves; before each message a worker takes a token from the
(provider, IP) bucket and the provider bucket. Replies go through the automation rules.

Work that cannot go now is *postponed* (no attempt used): over a warm-up cap, every IP
suspended, the provider paused after a provider-wide failure, or a backlog beyond what the
provider's limits can drain soon (so one slow provider never fills the scheduler's slots).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import aiosmtplib

from gateway import metrics
from gateway.config.policy import ProviderProfile
from gateway.delivery import replies
from gateway.dns.errors import PermanentDnsError, TemporaryDnsError
from gateway.dns.resolver import MxResolver, MxTarget
from gateway.records import AttemptResult
from gateway.shaping.matching import DEFAULT
from gateway.shaping.outcomes import postponed, shaped
from gateway.shaping.router import Postpone, Route, Router, SourceIp

log = logging.getLogger(__name__)

PRIORITY = {"transactional": 0, "marketing": 1}
BACKLOG_SECONDS = 5.0
"""A provider's lanes hold at most this many seconds of work at its rate; more is postponed."""
BACKLOG_PER_SLOT = 16
"""Without a rate: jobs waiting per connection slot (per-IP limit x pool IPs) before postponing."""
MIN_BACKLOG = 20


@dataclass(frozen=True)
class Source:
    """A local address to send from and the HELO name that matches its PTR."""

    address: str | None
    helo: str


@dataclass(frozen=True)
class Job:
    mail_from: str
    recipient: str
    head: bytes  # this copy's own header section
    body: bytes | memoryview  # shared by the message's copies; joined only when sent
    smtputf8: bool
    future: asyncio.Future[AttemptResult]


@dataclass(eq=False)  # lanes are compared and hashed by identity
class _Lane:
    site: tuple[str, ...]
    domain: str  # the domain whose MX lookup names the site
    route: Route
    source: SourceIp
    queue: asyncio.PriorityQueue[tuple[int, int, Job]] = field(default_factory=asyncio.PriorityQueue)
    workers: int = 0

    @property
    def key(self) -> tuple[tuple[str, ...], str]:
        return self.site, self.source.key

    @property
    def provider(self) -> str:
        return self.route.provider

    @property
    def profile(self) -> ProviderProfile:
        return self.route.profile

    def drain(self) -> list[Job]:
        jobs = []
        while not self.queue.empty():
            jobs.append(self.queue.get_nowait()[2])
        return jobs


class _Connection:
    def __init__(self, client: aiosmtplib.SMTP, target: MxTarget, source: SourceIp) -> None:
        self.client = client
        self.target = target
        self.source = source
        self.sent = 0
        self.broken = False

    @property
    def remote(self) -> str:
        return f"{self.target.host}[{self.target.address}]:{self.target.port}"


@dataclass(frozen=True)
class _OpenFailure:
    result: AttemptResult
    provider_wide: bool  # every MX host refused or failed: the provider, not the message


def _unverified_tls() -> ssl.SSLContext:
    # Opportunistic TLS (RFC 3207, like Postfix "may"): encrypt, do not authenticate.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def pause_key(route: Route, site: Sequence[str]) -> str:
    """Provider-wide failures pause a named provider; unmatched domains pause per MX site."""
    return route.provider if route.provider != DEFAULT else "mx:" + ",".join(site)


class DeliveryAgent:
    def __init__(self, resolver: MxResolver, router: Router, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.resolver = resolver
        self.router = router
        self.clock = clock
        self._lanes: dict[tuple[tuple[str, ...], str], _Lane] = {}
        self._waiting: dict[str, set[_Lane]] = {}  # provider -> lanes waiting for a connection slot
        self._backlog: dict[str, int] = {}  # provider -> jobs in its lanes
        self._order = itertools.count()
        self._workers: set[asyncio.Task[None]] = set()
        self._reporter: asyncio.Task[None] | None = None
        self._tls = _unverified_tls()
        self._closing = False

    async def deliver(self, mail_from: str, recipient: str, domain: str, head: bytes,
                      body: bytes | memoryview = b"", *, smtputf8: bool = False,
                      stream: str = "transactional") -> AttemptResult:
        """Send ``head + body``; ``smtputf8`` asks for SMTPUTF8 even with an ASCII envelope."""
        self._start_reporter()
        routed = await self._route(domain, stream)
        if isinstance(routed, AttemptResult):
            return routed
        route, site = routed
        lane_or_result = await self._lane_for(route, site, domain)
        if isinstance(lane_or_result, AttemptResult):
            self._count(route, None, lane_or_result)
            return lane_or_result
        lane = lane_or_result
        future: asyncio.Future[AttemptResult] = asyncio.get_running_loop().create_future()
        job = Job(mail_from, recipient, head, body, smtputf8, future)
        lane.queue.put_nowait((PRIORITY.get(stream, 1), next(self._order), job))
        provider = lane.provider
        self._backlog[provider] = self._backlog.get(provider, 0) + 1
        self._staff(lane)
        try:
            result = await future
        finally:
            self._backlog[provider] -= 1
        self._count(route, lane.source.address, result)
        return result

    async def _route(self, domain: str, stream: str) -> tuple[Route, tuple[str, ...]] | AttemptResult:
        try:
            targets = await self.resolver.targets(domain)
        except PermanentDnsError as exc:
            return shaped(replies.permanent(str(exc)), self.router.route(domain, (), stream).provider)
        except TemporaryDnsError as exc:
            return shaped(replies.transient(str(exc)), self.router.route(domain, (), stream).provider)
        site = tuple(dict.fromkeys(f"{t.host}:{t.port}" for t in targets))
        return self.router.route(domain, [t.host for t in targets], stream), site

    async def _lane_for(self, route: Route, site: tuple[str, ...], domain: str) -> _Lane | AttemptResult:
        now = self.clock()
        paused = await self.router.store.provider_paused_until(pause_key(route, site), now)
        if paused is not None:
            return postponed(route.provider, paused, f"{route.provider} paused after a provider-wide failure")
        backlog, limit = self._backlog.get(route.provider, 0), self._backlog_limit(route)
        if backlog >= limit:
            return postponed(route.provider, now + self._drain_seconds(route, backlog),
                             f"{route.provider}: {backlog} messages already waiting for its limits")
        choice = await self.router.choose(route)
        if isinstance(choice, Postpone):
            return postponed(route.provider, choice.until, choice.reason)
        lane = self._lanes.get((site, choice.key))
        if lane is None:
            lane = self._lanes[(site, choice.key)] = _Lane(site, domain, route, choice)
        lane.route = route  # the newest policy
        return lane

    def _backlog_limit(self, route: Route) -> int:
        ips = max(1, len(route.pool.ips))
        limit = route.profile.connection_limit * ips * BACKLOG_PER_SLOT
        rate = self._rate_per_second(route)
        if rate is not None:
            limit = min(limit, int(rate * BACKLOG_SECONDS))
        return max(MIN_BACKLOG, limit)

    def _drain_seconds(self, route: Route, backlog: int) -> float:
        """When to offer postponed mail again: half-way through draining the backlog, so the
        lanes are refilled before they run dry (claims may come late behind other mail)."""
        rate = self._rate_per_second(route)
        return max(1.0, backlog / rate / 2) if rate else 1.0

    @staticmethod
    def _rate_per_second(route: Route) -> float | None:
        profile, ips = route.profile, max(1, len(route.pool.ips))
        rates = [r.per_second * ips for r in (profile.max_message_rate,) if r is not None]
        rates += [r.per_second for r in (profile.provider_max_message_rate,) if r is not None]
        return min(rates) if rates else None

    def _count(self, route: Route, source_ip: str | None, result: AttemptResult) -> None:
        metrics.DELIVERIES_BY_PROVIDER.labels(route.provider, route.pool.name, source_ip or "",
                                              result.kind).inc()

    # -- workers ----------------------------------------------------------------------------

    def _staff(self, lane: _Lane) -> None:
        """Start a worker when jobs outnumber workers, within the per-IP connection limit."""
        if self._closing:
            return
        if lane.workers < min(lane.profile.connection_limit, lane.queue.qsize()):
            lane.workers += 1
            task = asyncio.create_task(self._work(lane), name=f"lane-{lane.provider}-{lane.source.key}")
            self._workers.add(task)
            task.add_done_callback(self._workers.discard)

    async def close(self) -> None:
        self._closing = True
        if self._reporter is not None:
            self._reporter.cancel()
        for task in list(self._workers):
            task.cancel()
        await asyncio.gather(*self._workers, *(t for t in [self._reporter] if t), return_exceptions=True)

    async def _work(self, lane: _Lane) -> None:
        store, provider, ip = self.router.store, lane.provider, lane.source.key
        profile = lane.profile
        slot = await store.open_connection(provider, ip, profile.connection_limit,
                                           profile.provider_connection_limit)
        try:
            if not slot:
                self._waiting.setdefault(provider, set()).add(lane)
                return
            metrics.PROVIDER_CONNECTIONS.labels(provider, ip).inc()
            await self._serve(lane)
        finally:
            lane.workers -= 1
            if slot:
                await store.close_connection(provider, ip)
                metrics.PROVIDER_CONNECTIONS.labels(provider, ip).dec()
                self._restaff_waiting(provider)
            self._after_worker(lane)

    def _after_worker(self, lane: _Lane) -> None:
        if lane.queue.empty():
            if lane.workers == 0 and self._lanes.get(lane.key) is lane:
                del self._lanes[lane.key]
        elif lane.workers == 0 and lane not in self._waiting.get(lane.provider, set()):
            # A job can arrive just as an idle worker times out; never leave it unserved.
            self._staff(lane)

    def _restaff_waiting(self, provider: str) -> None:
        lanes = self._waiting.pop(provider, set())
        for lane in lanes:
            if not lane.queue.empty():
                self._staff(lane)

    async def _serve(self, lane: _Lane) -> None:
        conn: _Connection | None = None
        try:
            while True:
                try:
                    _, _, job = await asyncio.wait_for(lane.queue.get(), lane.profile.idle_close)
                except TimeoutError:
                    return
                if job.future.done():
                    continue
                if await self._reroute_if_suspended(lane, job):
                    return
                conn = await self._wait_for_rate(lane, conn)
                if conn is None:
                    opened = await self._open_safely(lane)
                    if isinstance(opened, _OpenFailure):
                        await self._fail_lane(lane, job, opened)
                        return
                    conn = opened
                result = await self._send_safely(conn, job)
                reaction = await self.router.observe(lane.provider, lane.source.key, result.reply,
                                                     result.kind)
                if reaction.bounce:
                    result = replies.permanent(f"{result.reply} (policy rule {reaction.rule.name!r}: bounce)"
                                               if reaction.rule else result.reply, remote=conn.remote)
                if not job.future.done():  # cancelled meanwhile (shutdown): nothing to report
                    job.future.set_result(shaped(result, lane.provider))
                conn.sent += 1
                if reaction.suspended:
                    conn.broken = True
                if conn.broken or conn.sent >= lane.profile.max_deliveries_per_connection:
                    await _quit(conn)
                    conn = None
        finally:
            if conn is not None:
                await _quit(conn)

    async def _reroute_if_suspended(self, lane: _Lane, job: Job) -> bool:
        """A suspended IP sends nothing more to the provider: its waiting jobs go back to be
        routed again (postponed to now: another IP of the pool takes them)."""
        now = self.clock()
        until = await self.router.store.suspended_until(lane.provider, lane.source.key, now)
        if until is None:
            return False
        metrics.SUSPENSIONS_ACTIVE.labels(lane.provider, lane.source.key).set(1)
        reason = f"source IP {lane.source.key} suspended for {lane.provider}"
        for waiting in [job, *lane.drain()]:
            if not waiting.future.done():
                waiting.future.set_result(postponed(lane.provider, now, reason, lane.source.address))
        return True

    async def _wait_for_rate(self, lane: _Lane, conn: _Connection | None) -> _Connection | None:
        """Wait for the (provider, IP) and provider tokens; a connection that would sit idle
        longer than ``idle_close`` meanwhile is closed (the slot stays with this worker)."""
        store, provider, ip = self.router.store, lane.provider, lane.source.key
        waited = False
        while True:
            now = self.clock()
            slow = await store.slowdown(provider, ip, now)
            rate = slow.rate if slow is not None else lane.profile.max_message_rate
            wait = 0.0
            if rate is not None:
                wait = await store.take_token(f"ip:{provider}:{ip}", rate, now)
            pool_rate = lane.profile.provider_max_message_rate
            if wait == 0.0 and pool_rate is not None:
                wait = await store.take_token(f"provider:{provider}", pool_rate, now)
            if wait == 0.0:
                if waited:
                    metrics.THROTTLE_WAITS.labels(provider).inc()
                return conn
            waited = True
            if conn is not None and wait > lane.profile.idle_close:
                await _quit(conn)
                conn = None
            await asyncio.sleep(wait)

    async def _fail_lane(self, lane: _Lane, job: Job, failure: _OpenFailure) -> None:
        """The site is unreachable: the first job is deferred, those waiting behind it postponed;
        a provider-wide failure also pauses the provider's queue."""
        if not job.future.done():
            job.future.set_result(shaped(failure.result, lane.provider))
        until = self.clock() + 1.0
        reaction = await self.router.observe(lane.provider, lane.source.key, failure.result.reply,
                                             "transient")
        if failure.provider_wide and not reaction.suspended:
            until = await self.router.pause(pause_key(lane.route, lane.site), lane.profile)
        for waiting in lane.drain():
            if not waiting.future.done():
                waiting.future.set_result(postponed(lane.provider, until, failure.result.reply,
                                                    lane.source.address))

    # -- connections --------------------------------------------------------------------------

    async def _open_safely(self, lane: _Lane) -> _Connection | _OpenFailure:
        try:
            return await self._open(lane)
        except Exception as exc:  # reported as a transient result
            log.exception("opening a connection for %s failed unexpectedly", lane.domain)
            return _OpenFailure(replies.transient(f"internal error: {type(exc).__name__}"), False)

    async def _open(self, lane: _Lane) -> _Connection | _OpenFailure:
        try:
            targets = await self.resolver.targets(lane.domain)
        except PermanentDnsError as exc:
            return _OpenFailure(replies.permanent(str(exc)), False)
        except TemporaryDnsError as exc:
            return _OpenFailure(replies.transient(str(exc)), False)
        failures: list[str] = []
        for target in targets:
            opened = await self._connect(target, lane.source, lane.profile)
            if isinstance(opened, _Connection):
                return opened
            failures.append(opened)
        reason = "; ".join(failures[-3:]) or f"no MX host for {lane.domain}"
        return _OpenFailure(replies.transient(reason, source_ip=lane.source.address), bool(failures))

    async def _connect(self, target: MxTarget, source: SourceIp,
                       profile: ProviderProfile) -> _Connection | str:
        where = f"{target.host}[{target.address}]:{target.port}"
        # None = STARTTLS when offered; opportunistic falls back to plain text if TLS fails.
        modes: dict[str, list[bool | None]] = {
            "opportunistic": [None, False], "required": [True], "disabled": [False]}
        error = "no connection attempted"
        for start_tls in modes[profile.tls]:
            client = aiosmtplib.SMTP(
                hostname=target.address, port=target.port, local_hostname=source.helo,
                source_address=(source.address, 0) if source.address else None,
                timeout=profile.command_timeout, start_tls=start_tls,
                validate_certs=False, tls_context=self._tls if start_tls is not False else None)
            try:
                await client.connect(timeout=profile.connect_timeout)
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

    # -- gauges -------------------------------------------------------------------------------

    def _start_reporter(self) -> None:
        if self._reporter is None and not self._closing:
            self._reporter = asyncio.create_task(self._report_suspensions(), name="shaping-gauges")

    async def _report_suspensions(self, interval: float = 5.0) -> None:
        shown: set[tuple[str, str]] = set()
        while True:
            active = set(await self.router.store.suspensions(self.clock()))
            for provider, ip in shown - active:
                metrics.SUSPENSIONS_ACTIVE.labels(provider, ip).set(0)
            for provider, ip in active:
                metrics.SUSPENSIONS_ACTIVE.labels(provider, ip).set(1)
            shown = active
            for provider in list(self._waiting):  # a slot freed on another node, or a missed wake-up
                self._restaff_waiting(provider)
            await asyncio.sleep(interval)


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

