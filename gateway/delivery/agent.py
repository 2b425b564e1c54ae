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
import collections
import itertools
import logging
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date

import aiosmtplib

from gateway import metrics
from gateway.config.policy import ProviderProfile
from gateway.delivery import replies
from gateway.dns.errors import PermanentDnsError, TemporaryDnsError
from gateway.dns.resolver import MxResolver, MxTarget
from gateway.records import AttemptResult
from gateway.shaping.matching import DEFAULT
from gateway.shaping.outcomes import POSTPONED, postponed, shaped
from gateway.shaping.router import Postpone, Route, Router, SourceIp, utc_day

log = logging.getLogger(__name__)

PRIORITY = {"transactional": 0, "marketing": 1}
BACKLOG_SECONDS = 10.0
"""A provider's lanes hold at most this many seconds of work at its rate; more is postponed."""
BACKLOG_PER_SLOT = 16
"""Without a rate: jobs waiting per connection slot (per-IP limit x pool IPs) before postponing."""
SLOT_RATE = float(BACKLOG_PER_SLOT)
"""Without a rate, until sends were seen: the messages per second one slot is assumed to
drain (generous: mail offered too early is put back at the end of the line, not lost)."""
THROUGHPUT_WINDOW = 5.0
MIN_BACKLOG = 20
BACKLOG_SHARE_OF_IN_FLIGHT = 3
"""One backlog (a provider, or an MX site of unmatched domains) holds at most this fraction
(1/3) of the scheduler's in-flight deliveries, so one slow site never takes every slot."""


@dataclass(frozen=True)
class Source:
    """A local address to send from and the HELO name that matches its PTR."""

    address: str | None
    helo: str


def _never() -> bool:
    return False


@dataclass(frozen=True)
class Job:
    mail_from: str
    recipient: str
    head: bytes  # this copy's own header section
    body: bytes | memoryview  # shared by the message's copies; joined only when sent
    smtputf8: bool
    future: asyncio.Future[AttemptResult]
    day: date | None = None  # the UTC day a warm-up send was reserved for it (routing time)
    # True once the copy must not go any more (its campaign was paused while it waited in a
    # lane): asked when a worker takes it, so it goes back to the queue unsent.
    withdrawn: Callable[[], bool] = _never


@dataclass(eq=False)  # lanes are compared and hashed by identity
class _Lane:
    site: tuple[str, ...]
    domain: str  # the domain whose MX lookup names the site
    route: Route
    source: SourceIp
    queue: asyncio.PriorityQueue[tuple[int, int, Job]] = field(default_factory=asyncio.PriorityQueue)
    workers: int = 0
    urgent: int = 0  # transactional jobs in the queue: such lanes are woken first

    @property
    def key(self) -> LaneKey:
        return self.route.provider, self.site, self.source.key

    def put(self, priority: int, order: int, job: Job) -> None:
        self.urgent += priority == 0
        self.queue.put_nowait((priority, order, job))

    def taken(self, priority: int) -> None:
        self.urgent -= priority == 0

    @property
    def provider(self) -> str:
        return self.route.provider

    @property
    def profile(self) -> ProviderProfile:
        return self.route.profile

    def drain(self) -> list[Job]:
        jobs = []
        while not self.queue.empty():
            priority, _, job = self.queue.get_nowait()
            self.taken(priority)
            jobs.append(job)
        return jobs


LaneKey = tuple[str, tuple[str, ...], str]  # provider, MX site, source IP


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


def site_key(site: Sequence[str]) -> str:
    return "mx:" + ",".join(site)


def pause_key(route: Route, site: Sequence[str]) -> str:
    """What shares a backlog (and a pause): a named provider, or one MX site of unmatched
    domains (the default profile is not one provider)."""
    return route.provider if route.provider != DEFAULT else site_key(site)


@dataclass
class Stagger:
    """Due times for postponed work, one per message at the pace the limits drain it (pure).

    Mail put back all at the same time would come back all at once and be put back again
    (one database write each round); spacing each message by its real position makes it
    return when it can actually go. ``tail`` per key is when the last one was placed."""

    tails: dict[str, float] = field(default_factory=dict)

    def place(self, key: str, earliest: float, spacing: float) -> float:
        at = max(self.tails.get(key, 0.0), earliest)
        self.tails[key] = at + spacing
        return at

    def forget_before(self, now: float) -> None:
        for key in [key for key, tail in self.tails.items() if tail < now]:
            del self.tails[key]


@dataclass
class Throughput:
    """Messages answered per key over the last ``window`` seconds (pure): how fast a backlog
    without a configured rate really drains."""

    window: float = THROUGHPUT_WINDOW
    seen: dict[str, collections.deque[float]] = field(default_factory=dict)

    def record(self, key: str, now: float) -> None:
        times = self.seen.setdefault(key, collections.deque())
        times.append(now)
        while times[0] < now - self.window:
            times.popleft()

    def per_second(self, key: str, now: float) -> float | None:
        """None until enough was seen to tell (a few messages, a second of sending)."""
        times = self.seen.get(key)
        recent = [at for at in times or () if at >= now - self.window]
        if len(recent) < 10 or now - recent[0] < 1.0:
            return None
        return len(recent) / (now - recent[0])

    def forget_before(self, now: float) -> None:
        for key in [key for key, times in self.seen.items() if times[-1] < now - self.window]:
            del self.seen[key]


class DeliveryAgent:
    def __init__(self, resolver: MxResolver, router: Router, *,
                 clock: Callable[[], float] = time.time, max_in_flight: int = 500) -> None:
        self.resolver = resolver
        self.router = router
        self.clock = clock
        self.max_backlog = max(MIN_BACKLOG, max_in_flight // BACKLOG_SHARE_OF_IN_FLIGHT)
        self._lanes: dict[LaneKey, _Lane] = {}
        self._waiting: dict[str, set[_Lane]] = {}  # provider -> lanes waiting for a connection slot
        self._backlog: dict[str, int] = {}  # pause_key -> jobs in its lanes
        self._stagger = Stagger()
        self._throughput = Throughput()
        self._order = itertools.count()
        self._workers: set[asyncio.Task[None]] = set()
        self._reporter: asyncio.Task[None] | None = None
        self._tls = _unverified_tls()
        self._closing = False

    async def deliver(self, mail_from: str, recipient: str, domain: str, head: bytes,
                      body: bytes | memoryview = b"", *, smtputf8: bool = False,
                      stream: str = "transactional",
                      withdrawn: Callable[[], bool] | None = None) -> AttemptResult:
        """Send ``head + body``; ``smtputf8`` asks for SMTPUTF8 even with an ASCII envelope.
        ``withdrawn`` is asked when the copy's turn comes: True puts it back unsent."""
        self._start_reporter()
        routed = await self._route(domain, stream)
        if isinstance(routed, AttemptResult):
            return routed
        route, site = routed
        lane_or_result = await self._lane_for(route, site, domain, PRIORITY.get(stream, 1))
        if isinstance(lane_or_result, AttemptResult):
            self._count(route, None, lane_or_result)
            return lane_or_result
        lane = lane_or_result
        future: asyncio.Future[AttemptResult] = asyncio.get_running_loop().create_future()
        job = Job(mail_from, recipient, head, body, smtputf8, future, utc_day(self.clock()),
                  withdrawn or _never)
        lane.put(PRIORITY.get(stream, 1), next(self._order), job)
        key = pause_key(route, site)
        self._backlog[key] = self._backlog.get(key, 0) + 1
        self._staff(lane)
        try:
            result = await future
        finally:
            self._backlog[key] -= 1
            if not self._backlog[key]:
                del self._backlog[key]
        if result.kind != POSTPONED:
            self._throughput.record(key, self.clock())
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

    async def _lane_for(self, route: Route, site: tuple[str, ...], domain: str,
                        priority: int) -> _Lane | AttemptResult:
        now, key = self.clock(), pause_key(route, site)
        line = key if priority else key + " transactional"  # its own line: not behind a campaign
        paused = await self._paused_until(route, site, now)
        if paused is not None:
            return self._postpone(route, line, paused, f"{route.provider} ({key}) paused after failures "
                                                       "on every MX host")
        backlog, limit = self._backlog.get(key, 0), self._backlog_limit(route)
        if backlog >= limit + (0 if priority else limit // 2):  # transactional mail may go past
            # Due when the lanes are half drained, one after the other at the drain rate.
            return self._postpone(route, line, now + (backlog - limit / 2) / self._drain_rate(route, key),
                                  f"{key}: {backlog} messages already waiting for its limits")
        choice = await self.router.choose(route)
        if isinstance(choice, Postpone):
            return self._postpone(route, line, choice.until, choice.reason)
        lane = self._lanes.get((route.provider, site, choice.key))
        if lane is None:
            lane = _Lane(site, domain, route, choice)
            self._lanes[lane.key] = lane
        lane.route = route  # the newest policy
        return lane

    async def _paused_until(self, route: Route, site: tuple[str, ...], now: float) -> float | None:
        store = self.router.store
        paused = await store.provider_paused_until(site_key(site), now)
        if paused is None and route.provider != DEFAULT:
            paused = await store.provider_paused_until(route.provider, now)
        return paused

    def _postpone(self, route: Route, line: str, earliest: float, reason: str) -> AttemptResult:
        until = self._stagger.place(line, earliest, 1.0 / self._drain_rate(route, line.split(" ")[0]))
        return postponed(route.provider, until, reason)

    def _backlog_limit(self, route: Route) -> int:
        limit = self._slots(route) * BACKLOG_PER_SLOT
        rate = self._rate_per_second(route)
        if rate is not None:
            limit = min(limit, int(rate * BACKLOG_SECONDS))
        return min(self.max_backlog, max(MIN_BACKLOG, limit))

    def _drain_rate(self, route: Route, key: str) -> float:
        """Messages per second the backlog drains: the configured rate, else as measured."""
        return (self._rate_per_second(route) or self._throughput.per_second(key, self.clock())
                or self._slots(route) * SLOT_RATE)

    @staticmethod
    def _slots(route: Route) -> int:
        slots = route.profile.connection_limit * max(1, len(route.pool.ips))
        pool_limit = route.profile.provider_connection_limit
        return min(slots, pool_limit) if pool_limit is not None else slots

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
        """Offer freed slots to the waiting lanes, those holding transactional mail first."""
        lanes = sorted(self._waiting.pop(provider, set()), key=lambda lane: lane.urgent == 0)
        for lane in lanes:
            if not lane.queue.empty():
                self._staff(lane)

    def _others_waiting(self, lane: _Lane) -> bool:
        return any(other is not lane and not other.queue.empty()
                   for other in self._waiting.get(lane.provider, ()))

    async def _serve(self, lane: _Lane) -> None:
        conn: _Connection | None = None
        try:
            while True:
                try:  # not asyncio.wait_for: see gateway/wakeups.py
                    async with asyncio.timeout(lane.profile.idle_close):
                        priority, _, job = await lane.queue.get()
                except TimeoutError:
                    return
                lane.taken(priority)
                if job.future.done():
                    continue
                try:
                    conn, stop = await self._serve_job(lane, job, conn)
                except Exception as exc:  # a bug must defer one delivery, never hang its future
                    log.exception("serving %s via %s failed unexpectedly", job.recipient, lane.provider)
                    _settle(job, shaped(replies.transient(f"internal error: {type(exc).__name__}"),
                                        lane.provider))
                    _discard(conn)
                    conn, stop = None, False
                if stop:
                    return
                if conn is None and self._others_waiting(lane):
                    return  # reconnect time: let a waiting lane of the provider have the slot
        finally:
            if conn is not None:
                await _quit(conn)

    async def _serve_job(self, lane: _Lane, job: Job,
                         conn: _Connection | None) -> tuple[_Connection | None, bool]:
        """Send one job; returns the connection to keep (None: closed) and whether to stop."""
        if job.withdrawn():
            await self._put_back(lane, [job], self.clock(), "withdrawn before sending: campaign paused")
            return conn, False
        if await self._reroute_if_suspended(lane, job):
            return conn, True
        conn = await self._wait_for_rate(lane, conn)
        if conn is None:
            opened = await self._open_safely(lane)
            if isinstance(opened, _OpenFailure):
                await self._fail_lane(lane, job, opened)
                return None, True
            conn = opened
        result = await self._send_safely(conn, job)
        reaction = await self.router.observe(lane.provider, lane.source.key, result.reply, result.kind)
        if reaction.bounce:
            result = replies.permanent(f"{result.reply} (policy rule {reaction.rule.name!r}: bounce)"
                                       if reaction.rule else result.reply, remote=conn.remote)
        _settle(job, shaped(result, lane.provider))
        conn.sent += 1
        if reaction.suspended:
            conn.broken = True
        if conn.broken or conn.sent >= lane.profile.max_deliveries_per_connection:
            await _quit(conn)
            return None, False
        return conn, False

    async def _reroute_if_suspended(self, lane: _Lane, job: Job) -> bool:
        """A suspended IP sends nothing more to the provider: its waiting jobs go back to be
        routed again (postponed to now: another IP of the pool takes them)."""
        now = self.clock()
        until = await self.router.store.suspended_until(lane.provider, lane.source.key, now)
        if until is None:
            return False
        metrics.SUSPENSIONS_ACTIVE.labels(lane.provider, lane.source.key).set(1)
        reason = f"source IP {lane.source.key} suspended for {lane.provider}"
        await self._put_back(lane, [job, *lane.drain()], now, reason)
        return True

    async def _put_back(self, lane: _Lane, jobs: list[Job], earliest: float, reason: str) -> None:
        """Postpone unsent jobs (no attempt), staggered, giving back their warm-up sends."""
        key = pause_key(lane.route, lane.site)
        for job in jobs:
            if job.future.done():
                continue
            if job.day is not None:
                await self.router.release(lane.source, lane.provider, job.day)
            until = self._stagger.place(key, earliest, 1.0 / self._drain_rate(lane.route, key))
            _settle(job, postponed(lane.provider, until, reason, lane.source.address))

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
                if wait and rate is not None:  # both or neither: the IP's token is not spent
                    await store.refund_token(f"ip:{provider}:{ip}", rate, now)
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
        """The site is unreachable: the first job is deferred, those waiting behind it postponed.
        When every MX host of the site failed, the site's queue pauses (and the provider's, once
        several of its sites failed: Router.site_failed)."""
        _settle(job, shaped(failure.result, lane.provider))
        until = self.clock() + 1.0
        waiting = lane.drain()
        try:
            reaction = await self.router.observe(lane.provider, lane.source.key, failure.result.reply,
                                                 "transient")
            if failure.provider_wide and not reaction.suspended:
                until = await self.router.site_failed(lane.provider, site_key(lane.site),
                                                      lane.source.key, lane.profile)
        finally:
            await self._put_back(lane, waiting, until, failure.result.reply)

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
        """Connect, then STARTTLS per ``profile.tls``. Opportunistic TLS falls back to plain
        text only when STARTTLS itself failed: a refused or timed-out connection is not retried."""
        where = f"{target.host}[{target.address}]:{target.port}"
        opened = await self._greeted(target, source, profile, where)
        if isinstance(opened, str) or profile.tls == "disabled":
            return _logged(opened)
        client = opened.client
        if not client.supports_extension("starttls"):
            if profile.tls == "required":
                client.close()
                return _logged(f"{where} does not offer STARTTLS (tls = required)")
            return opened
        try:
            await client.starttls(tls_context=self._tls, validate_certs=False,
                                  timeout=profile.connect_timeout)
            return opened
        except (aiosmtplib.SMTPException, OSError, ssl.SSLError) as exc:
            client.close()
            if profile.tls == "required":
                return _logged(f"STARTTLS with {where} failed: {exc}")
            log.info("STARTTLS with %s failed (%s); sending without TLS", where, exc)
        return _logged(await self._greeted(target, source, profile, where))

    async def _greeted(self, target: MxTarget, source: SourceIp, profile: ProviderProfile,
                       where: str) -> _Connection | str:
        """A plain connection past the greeting and EHLO, or why there is none."""
        client = aiosmtplib.SMTP(
            hostname=target.address, port=target.port, local_hostname=source.helo,
            source_address=(source.address, 0) if source.address else None,
            timeout=profile.command_timeout, start_tls=False, validate_certs=False)
        try:
            await client.connect(timeout=profile.connect_timeout)
            await client.ehlo(timeout=profile.connect_timeout)
            return _Connection(client, target, source)
        except aiosmtplib.SMTPResponseException as exc:
            client.close()
            return f"{where} greeted with {exc.code} {exc.message}"
        except (aiosmtplib.SMTPException, OSError) as exc:
            client.close()
            return f"connect to {where} failed: {exc}"

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
            self._stagger.forget_before(self.clock())
            self._throughput.forget_before(self.clock())
            await asyncio.sleep(interval)


def _logged(opened: _Connection | str) -> _Connection | str:
    if isinstance(opened, str):
        log.info("%s", opened)
    return opened


def _settle(job: Job, result: AttemptResult) -> None:
    """Answer a job unless it already has an answer (or was cancelled at shutdown)."""
    if not job.future.done():
        job.future.set_result(result)


def _discard(conn: _Connection | None) -> None:
    if conn is not None:
        conn.client.close()


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

