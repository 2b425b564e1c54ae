"""Routing one delivery: provider, pool, source IP; and reacting to what the provider said.

``Router`` ties the pure pieces to a ``ThrottleStore``: it names the provider of a domain
(from its MX hosts), the pool that sends its mail (provider binding, then stream, then
"default"), picks a source IP by weighted round robin among the IPs that are neither
suspended for this provider nor at today's warm-up cap, and applies automation rules and
warm-up health to replies. It never opens a socket; the clock is injected.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from gateway import metrics
from gateway.config.policy import Policy, ProviderProfile
from gateway.shaping.automation import AutomationRule, first_match
from gateway.shaping.matching import DEFAULT
from gateway.shaping.store import ThrottleStore
from gateway.shaping.warmup import assess, counts_as_deferral, day_index, held_after
from gateway.shaping.wrr import SmoothWrr

log = logging.getLogger(__name__)

Clock = Callable[[], float]


@dataclass(frozen=True)
class SourceIp:
    address: str | None  # None: the operating system chooses (no pool configured)
    helo: str
    weight: int = 1
    warmup_start: date | None = None

    @property
    def key(self) -> str:
        return self.address or ""


@dataclass(frozen=True)
class PoolSpec:
    name: str
    ips: tuple[SourceIp, ...]
    streams: tuple[str, ...] = ()


@dataclass(frozen=True)
class Route:
    provider: str
    pool: PoolSpec
    profile: ProviderProfile
    explain: Callable[[], str] = field(default=lambda: "", compare=False, repr=False)

    @property
    def reason(self) -> str:
        """Why this provider (for `gateway policy test`): built only when asked for."""
        return self.explain()


PROVIDER_PAUSE_SITES = 2
"""Distinct failing sites of one provider, within ``provider_pause``, that pause it as a whole."""


@dataclass
class SiteFailures:
    """Recent whole-site failures of one provider (pure): site -> (time, source IP)."""

    seen: dict[str, tuple[float, str]] = field(default_factory=dict)

    def add(self, site: str, ip: str, now: float, window: float) -> int:
        """Record a failure; returns how many distinct sites failed within ``window``."""
        self.seen[site] = (now, ip)
        for old in [key for key, (at, _) in self.seen.items() if at <= now - window]:
            del self.seen[old]
        return len(self.seen)


@dataclass(frozen=True)
class Postpone:
    """No IP may send this now; try again at ``until`` (epoch seconds) without using an attempt."""

    until: float
    reason: str


@dataclass(frozen=True)
class Reaction:
    """What a reply changed: the rule that matched (if any) and whether to bounce."""

    rule: AutomationRule | None = None

    @property
    def bounce(self) -> bool:
        return self.rule is not None and self.rule.action == "bounce"

    @property
    def suspended(self) -> bool:
        return self.rule is not None and self.rule.action == "suspend"


def utc_day(now: float) -> date:
    return datetime.fromtimestamp(now, UTC).date()


def next_utc_midnight(now: float) -> float:
    day = utc_day(now) + timedelta(days=1)
    return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()


@dataclass
class Router:
    policy: Policy
    pools: Mapping[str, PoolSpec]
    store: ThrottleStore
    clock: Clock
    _wrr: dict[tuple[str, str], SmoothWrr] = field(default_factory=dict)
    _rules: dict[str, tuple[AutomationRule, ...]] = field(default_factory=dict)
    _failures: dict[str, SiteFailures] = field(default_factory=dict)
    _why_suspended: dict[tuple[str, str], str] = field(default_factory=dict)

    def update_policy(self, policy: Policy) -> None:
        self.policy = policy
        self._rules = {}

    def rules(self, provider: str) -> tuple[AutomationRule, ...]:
        """The provider's compiled automation rules, built once per policy (not per reply)."""
        found = self._rules.get(provider)
        if found is None:
            found = self._rules[provider] = self.policy.profile(provider).automation
        return found

    def route(self, domain: str, mx_hosts: Sequence[str], stream: str) -> Route:
        provider = self.policy.matcher.match(domain, mx_hosts)
        profile = self.policy.profile(provider)
        matcher = self.policy.matcher
        return Route(provider, self.pool_for(profile, stream), profile,
                     lambda: matcher.reason(domain, mx_hosts))

    def pool_for(self, profile: ProviderProfile, stream: str) -> PoolSpec:
        if profile.pool is not None and profile.pool in self.pools:
            return self.pools[profile.pool]
        for pool in self.pools.values():
            if stream in pool.streams:
                return pool
        return self.pools.get("default") or next(iter(self.pools.values()))

    async def choose(self, route: Route) -> SourceIp | Postpone:
        """A source IP for one message to ``route``'s provider, or when to try again."""
        now = self.clock()
        by_key = {ip.key: ip for ip in route.pool.ips if ip.weight > 0}
        eligible, resume = set(by_key), None
        for key in list(eligible):
            until = await self.store.suspended_until(route.provider, key, now)
            if until is not None:
                eligible.discard(key)
                resume = until if resume is None else min(resume, until)
        wrr = self._wrr.setdefault((route.pool.name, route.provider),
                                   SmoothWrr({ip.key: ip.weight for ip in by_key.values()}))
        capped = False
        while eligible:
            picked = wrr.pick(eligible)
            if picked is None:
                break
            if await self._within_warmup(by_key[picked], route.provider, now):
                return by_key[picked]
            eligible.discard(picked)
            capped = True
        if capped:
            midnight = next_utc_midnight(now)
            return Postpone(min(resume, midnight) if resume else midnight,
                            f"warm-up cap for {route.provider} reached on every usable IP of pool "
                            f"{route.pool.name}")
        return Postpone(resume or now + 60.0, f"every IP of pool {route.pool.name} is suspended "
                                               f"for {route.provider}")

    async def _within_warmup(self, ip: SourceIp, provider: str, now: float) -> bool:
        schedule = self.policy.warmup.schedule(provider)
        if ip.warmup_start is None or schedule is None:
            return True
        today = utc_day(now)
        day = day_index(ip.warmup_start, today, await self.store.held_days(ip.key, provider, today))
        cap = schedule.cap(day)
        metrics.WARMUP_DAY.labels(ip.key, provider).set(day)
        metrics.WARMUP_CAP.labels(ip.key, provider).set(-1 if cap is None else cap)
        return cap is None or await self.store.reserve_warmup(ip.key, provider, today, cap)

    async def observe(self, provider: str, ip: str, reply: str, kind: str) -> Reaction:
        """Apply automation rules and warm-up health to one reply from ``provider``."""
        now = self.clock()
        rule = first_match(self.rules(provider), reply) if kind != "delivered" else None
        if rule is not None:
            await self._act(provider, ip, rule, now)
            if rule.action == "suspend":
                self._why_suspended[(provider, ip)] = f"rule {rule.name}: {reply[:300]}"
        await self._health(provider, ip, deferred=counts_as_deferral(kind, rule.action if rule else None),
                           now=now)
        return Reaction(rule)

    async def _act(self, provider: str, ip: str, rule: AutomationRule, now: float) -> None:
        if rule.action == "suspend":
            await self.store.suspend(provider, ip, now + rule.duration)
            log.warning("suspending %s for %s for %.0fs: rule %r matched", ip or "default source",
                        provider, rule.duration, rule.name)
        elif rule.action == "throttle" and rule.rate is not None:
            await self.store.slow_down(provider, ip, rule.rate, now + rule.duration)
            log.warning("slowing %s for %s to %s for %.0fs: rule %r matched", ip or "default source",
                        provider, rule.rate, rule.duration, rule.name)

    async def _health(self, provider: str, ip: str, *, deferred: bool, now: float) -> None:
        source = self._source(ip)
        if source is None or source.warmup_start is None:
            return
        today = utc_day(now)
        attempts, deferrals = await self.store.record_health(ip, provider, today, deferred)
        health = self.policy.warmup.health_rule
        decision = assess(health, attempts, deferrals)
        if decision == "healthy":
            return
        held = held_after(health, decision, await self.store.held_days(ip, provider))
        if await self.store.hold(ip, provider, today, held):
            metrics.WARMUP_DECISIONS.labels(ip, provider, decision).inc()
            log.warning("warm-up of %s for %s: %s (%d of %d attempts deferred today); %d day(s) held back",
                        ip, provider, decision, deferrals, attempts, held)

    def suspension_reason(self, provider: str, ip: str) -> str:
        """The rule and reply behind the latest suspension of ``ip`` for ``provider`` on this node
        (for `gateway status`; "" when another node suspended it)."""
        return self._why_suspended.get((provider, ip), "")

    def _source(self, ip: str) -> SourceIp | None:
        for pool in self.pools.values():
            for source in pool.ips:
                if source.key == ip:
                    return source
        return None

    async def release(self, ip: SourceIp, provider: str, day: date) -> None:
        """Give back the warm-up send reserved on ``day`` for a message that went back unsent."""
        schedule = self.policy.warmup.schedule(provider)
        if ip.warmup_start is not None and schedule is not None:
            await self.store.release_warmup(ip.key, provider, day)

    async def site_failed(self, provider: str, site: str, ip: str, profile: ProviderProfile) -> float:
        """Every MX host of ``site`` failed from ``ip``: pause that site; pause the whole provider
        only when another of its sites failed too within ``provider_pause`` (a provider-wide
        outage), never for one unreachable Microsoft 365 tenant. Returns the pause end."""
        until = await self.pause(site, profile)
        if provider == DEFAULT:
            return until
        window = self._failures.setdefault(provider, SiteFailures())
        if window.add(site, ip, self.clock(), profile.provider_pause) >= PROVIDER_PAUSE_SITES:
            until = await self.pause(provider, profile)
        return until

    async def pause(self, key: str, profile: ProviderProfile) -> float:
        """Hold a provider's queue (``key``: its name) or one MX site's (``key``: the site)."""
        until = self.clock() + profile.provider_pause
        await self.store.pause_provider(key, until)
        log.warning("%s unreachable: its queue waits until %s", key,
                    datetime.fromtimestamp(until, UTC).isoformat(timespec="seconds"))
        return until
