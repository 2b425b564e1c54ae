"""MX routing for outbound delivery (RFC 5321 section 5.1, RFC 7505).

``MxResolver.targets(domain)`` turns a recipient domain into the ordered list of addresses the
delivery code should try. The pure parts (domain normalisation, MX ordering, address expansion,
the TTL cache) are module-level so they can be unit-tested without sockets or a real clock.

Decisions callers rely on:

* Invalid domains (bad IDN, empty label, address literal ``[1.2.3.4]``) raise
  :class:`~gateway.dns.errors.InvalidDomain`, a ``PermanentDnsError``: the recipient bounces.
* A domain that exists with neither MX nor A/AAAA raises ``NoMailHost`` (permanent).
* MX hosts that resolve to no address at all raise ``TemporaryDnsError``.
* Every DNS question (MX, A, AAAA) is cached on its own by its TTL, capped at one hour;
  NXDOMAIN/NODATA by the SOA negative TTL; temporary failures for ``failure_ttl`` seconds
  (5 s by default) so a burst of deliveries to a broken domain costs one lookup.
  Concurrent identical questions share one in-flight query.
* The shuffle of equal-preference hosts happens on every call, not once per cache entry, so
  load spreads across a provider's MX hosts.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import re
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.resolver

from gateway.dns.errors import (
    InvalidDomain,
    NoMailHost,
    NoSuchDomain,
    NullMx,
    TemporaryDnsError,
)

SMTP_PORT = 25
MAX_CACHE_TTL = 3600.0
DEFAULT_FAILURE_TTL = 5.0
MAX_MX_HOSTS = 10
"""More hosts than this only add timeouts to a delivery attempt; big providers list 5 or fewer."""

EDNS_PAYLOAD = 1232
"""The DNS flag day 2020 size: large enough for most MX sets, small enough to avoid IP fragments."""

_LDH_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)\Z")

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(frozen=True)
class MxTarget:
    """One address to try, in order; ``host`` is the MX name used for TLS and logs."""

    host: str
    address: str
    port: int
    preference: int


@dataclass(frozen=True)
class MxRecord:
    """An MX record with the exchange in lower-case A-label form ("." for a null MX)."""

    preference: int
    exchange: str


@dataclass(frozen=True)
class Lookup:
    """The outcome of one DNS question, in the form the cache keeps.

    ``records`` hold rdata texts ("10 mx.example.net." or an address); ``failure`` is the
    reason of a temporary failure, cached briefly so a broken domain is not hammered.
    """

    records: tuple[str, ...] = ()
    nxdomain: bool = False
    failure: str | None = None


def normalize_domain(domain: str) -> str:
    """Return the lower-case A-label form without the final dot, or raise InvalidDomain.

    Host names are checked against LDH rules after IDNA encoding, because anything else
    (escapes, underscores, spaces) cannot name a mail host and would only produce a confusing
    DNS error later.
    """
    text = domain.removesuffix(".")
    if not text or text.startswith("["):
        raise InvalidDomain(domain, f"{domain!r} is not a routable mail domain")
    try:
        name = dns.name.from_unicode(text, origin=dns.name.root)
    except dns.exception.DNSException as exc:
        raise InvalidDomain(domain, f"{domain!r} is not a valid domain name ({exc})") from None
    ascii_name = name.to_text(omit_final_dot=True).lower()
    if not all(_LDH_LABEL.match(label) for label in ascii_name.split(".")):
        raise InvalidDomain(domain, f"{domain!r} is not a valid host name")
    return ascii_name


def parse_mx(text: str) -> MxRecord:
    """Parse the rdata text of an MX record as produced by dnspython."""
    preference, _, exchange = text.partition(" ")
    host = exchange.strip().lower()
    return MxRecord(int(preference), "." if host == "." else host.removesuffix("."))


def is_null_mx(records: Sequence[MxRecord]) -> bool:
    """RFC 7505: exactly one MX whose exchange is the root; any preference is accepted."""
    return len(records) == 1 and records[0].exchange == "."


def order_mx(records: Iterable[MxRecord], rng: random.Random) -> list[MxRecord]:
    """Sort by preference and shuffle hosts of equal preference (RFC 5321 5.1).

    Duplicate hosts keep their best preference; a root exchange mixed with real hosts is
    ignored. Hosts are sorted before shuffling so an injected ``Random`` gives the same
    order whatever order the DNS server used.
    """
    best: dict[str, MxRecord] = {}
    for record in records:
        seen = best.get(record.exchange)
        if record.exchange != "." and (seen is None or record.preference < seen.preference):
            best[record.exchange] = record
    groups: dict[int, list[MxRecord]] = {}
    for record in sorted(best.values(), key=lambda r: r.exchange):
        groups.setdefault(record.preference, []).append(record)
    ordered: list[MxRecord] = []
    for preference in sorted(groups):
        group = groups[preference]
        rng.shuffle(group)
        ordered.extend(group)
    return ordered[:MAX_MX_HOSTS]


def expand_targets(
    hosts: Iterable[tuple[MxRecord, Sequence[str]]], port: int = SMTP_PORT
) -> list[MxTarget]:
    """Flatten hosts into addresses in order; an address reached twice is tried once."""
    seen: set[str] = set()
    targets: list[MxTarget] = []
    for record, addresses in hosts:
        for address in addresses:
            if address not in seen:
                seen.add(address)
                targets.append(MxTarget(record.exchange, address, port, record.preference))
    return targets


def clamp_ttl(ttl: float, cap: float = MAX_CACHE_TTL) -> float:
    """Keep a TTL inside [0, cap]: huge TTLs would pin stale routes, negatives are bogus."""
    return max(0.0, min(float(ttl), cap))


class TtlCache(Generic[K, V]):
    """A bounded expiring map driven by an injected clock (so tests can move time)."""

    def __init__(self, clock: Callable[[], float], max_entries: int = 10_000) -> None:
        self._clock = clock
        self._max_entries = max_entries
        self._entries: dict[K, tuple[float, V]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires_at, value = entry
        if self._clock() >= expires_at:
            del self._entries[key]
            return None
        return value

    def put(self, key: K, value: V, ttl: float) -> None:
        """Store for ``ttl`` seconds; a TTL of zero means "do not cache"."""
        if ttl <= 0:
            self._entries.pop(key, None)
            return
        if key not in self._entries and len(self._entries) >= self._max_entries:
            self._evict()
        self._entries[key] = (self._clock() + ttl, value)

    def clear(self) -> None:
        self._entries.clear()

    def _evict(self) -> None:
        now = self._clock()
        for key in [k for k, (expires, _) in self._entries.items() if now >= expires]:
            del self._entries[key]
        if len(self._entries) >= self._max_entries:
            del self._entries[next(iter(self._entries))]


def _ip_literal(host: str) -> str | None:
    """Return the canonical text of an IP address, or None when ``host`` is a name."""
    try:
        return str(ipaddress.ip_address(host.removeprefix("[").removesuffix("]")))
    except ValueError:
        return None


def _check_port(port: int, what: str) -> int:
    if not 0 < port < 65536:
        raise ValueError(f"{what}: port {port} out of range")
    return port


def make_resolver(
    nameservers: Sequence[tuple[str, int]], timeout: float
) -> dns.asyncresolver.Resolver:
    """Build dnspython's resolver; with no nameservers it reads the system configuration."""
    return _configured(dns.asyncresolver.Resolver, nameservers, timeout)


def make_blocking_resolver(
    nameservers: Sequence[tuple[str, int]], timeout: float
) -> dns.resolver.Resolver:
    """The same for code that must block (dkimpy's DNS callback, run in a thread)."""
    return _configured(dns.resolver.Resolver, nameservers, timeout)


ResolverT = TypeVar("ResolverT", bound=dns.resolver.BaseResolver)


def _configured(kind: type[ResolverT], nameservers: Sequence[tuple[str, int]],
                timeout: float) -> ResolverT:
    if not nameservers:
        resolver = kind()
    else:
        resolver = kind(configure=False)
        servers: list[str | dns.nameserver.Nameserver] = []
        for host, port in nameservers:
            address = _ip_literal(host)
            if address is None:
                raise ValueError(f"nameserver {host!r} must be an IP address")
            servers.append(dns.nameserver.Do53Nameserver(address, _check_port(port, host)))
        resolver.nameservers = servers
    resolver.lifetime = timeout
    resolver.timeout = min(2.0, timeout)
    resolver.cache = None
    resolver.use_edns(0, 0, EDNS_PAYLOAD)
    return resolver


def _negative_ttl(exc: dns.resolver.NXDOMAIN) -> float:
    """The SOA-derived negative TTL of an NXDOMAIN answer (dnspython's default without SOA)."""
    responses: dict[dns.name.Name, dns.message.QueryMessage] = exc.kwargs.get("responses", {})
    try:
        ttls = [response.resolve_chaining().minimum_ttl for response in responses.values()]
    except dns.exception.DNSException:
        return 0.0
    return min(ttls, default=0.0)


def _answer_texts(answer: dns.resolver.Answer) -> tuple[str, ...]:
    return () if answer.rrset is None else tuple(rdata.to_text() for rdata in answer.rrset)


class MxResolver:
    """Resolves recipient domains to ordered delivery targets, with caching.

    Construct it once at start-up (with no nameservers it reads /etc/resolv.conf) and share it:
    the cache and the in-flight de-duplication only help when shared.
    """

    def __init__(
        self,
        nameservers: Sequence[tuple[str, int]] = (),
        overrides: Mapping[str, Sequence[tuple[str, int]]] | None = None,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        *,
        rng: random.Random | None = None,
        failure_ttl: float = DEFAULT_FAILURE_TTL,
        max_cache_ttl: float = MAX_CACHE_TTL,
        mx_port: int = SMTP_PORT,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self._resolver = make_resolver(nameservers, timeout)
        self._overrides = {
            normalize_domain(domain): [(host, _check_port(port, domain)) for host, port in hosts]
            for domain, hosts in (overrides or {}).items()
        }
        self._timeout = timeout
        # Port for hosts found via MX or A lookups; overrides carry their own.
        self._mx_port = _check_port(mx_port, "mx_port")
        self._rng = rng or random.Random()
        self._failure_ttl = failure_ttl
        self._max_cache_ttl = max_cache_ttl
        self._cache: TtlCache[tuple[str, str], Lookup] = TtlCache(clock)
        self._inflight: dict[tuple[str, str], asyncio.Task[Lookup]] = {}

    def clear_cache(self) -> None:
        self._cache.clear()

    async def targets(self, domain: str) -> list[MxTarget]:
        """Ordered targets for ``domain``; raises a ``DnsError`` subclass when there are none."""
        name = normalize_domain(domain)
        override = self._overrides.get(name)
        if override is not None:
            return await self._override_targets(name, override)
        lookup = await self._query(name, "MX")
        if lookup.failure is not None:
            raise TemporaryDnsError(name, lookup.failure)
        if lookup.nxdomain:
            raise NoSuchDomain(name)
        records = [parse_mx(text) for text in lookup.records]
        if not records:
            return await self._implicit_mx(name)
        if is_null_mx(records):
            raise NullMx(name)
        return await self._expand(name, order_mx(records, self._rng))

    async def _implicit_mx(self, name: str) -> list[MxTarget]:
        addresses, failure = await self._addresses(name)
        if addresses:
            return expand_targets([(MxRecord(0, name), addresses)], self._mx_port)
        if failure is not None:
            raise TemporaryDnsError(name, failure)
        raise NoMailHost(name)

    async def _expand(self, name: str, records: Sequence[MxRecord]) -> list[MxTarget]:
        results = await asyncio.gather(*(self._addresses(r.exchange) for r in records))
        targets = expand_targets(
            ((record, addresses) for record, (addresses, _) in zip(records, results, strict=True)),
            self._mx_port,
        )
        if targets:
            return targets
        failures = [failure for _, failure in results if failure is not None]
        hosts = ", ".join(record.exchange for record in records)
        reason = failures[0] if failures else f"MX hosts of {name} have no address ({hosts})"
        raise TemporaryDnsError(name, reason)

    async def _override_targets(
        self, name: str, entries: Sequence[tuple[str, int]]
    ) -> list[MxTarget]:
        """Overrides keep their configured order; names in them still go through DNS."""
        found: list[MxTarget] = []
        failures: list[str] = []
        for preference, (host, port) in enumerate(entries):
            address = _ip_literal(host)
            if address is not None:
                found.append(MxTarget(address, address, port, preference))
                continue
            host_name = normalize_domain(host)
            addresses, failure = await self._addresses(host_name)
            found += expand_targets([(MxRecord(preference, host_name), addresses)], port)
            failures += [failure] if failure is not None else []
        if found:
            return found
        reason = failures[0] if failures else f"override hosts of {name} have no address"
        raise TemporaryDnsError(name, reason)

    async def _addresses(self, host: str) -> tuple[list[str], str | None]:
        """IPv4 then IPv6 addresses of ``host`` and the reason of a temporary failure, if any."""
        v4, v6 = await asyncio.gather(self._query(host, "A"), self._query(host, "AAAA"))
        failure = v4.failure if v4.failure is not None else v6.failure
        return [*v4.records, *v6.records], failure

    async def _query(self, name: str, rdtype: str) -> Lookup:
        """Answer from the cache, or join/start the single in-flight query for this question."""
        key = (name, rdtype)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._fetch(name, rdtype))
            self._inflight[key] = task
            task.add_done_callback(lambda _: self._inflight.pop(key, None))
        # Shield: one cancelled delivery must not cancel the lookup other deliveries wait for.
        return await asyncio.shield(task)

    async def _fetch(self, name: str, rdtype: str) -> Lookup:
        lookup, ttl = await self._ask(name, rdtype)
        if lookup.failure is None:
            ttl = clamp_ttl(ttl, self._max_cache_ttl)
        self._cache.put((name, rdtype), lookup, ttl)
        return lookup

    async def _ask(self, name: str, rdtype: str) -> tuple[Lookup, float]:
        """One question to DNS, mapped to a cacheable outcome and its TTL."""
        try:
            answer = await self._resolver.resolve(
                name + ".", rdtype, raise_on_no_answer=False, lifetime=self._timeout, search=False
            )
        except dns.resolver.NXDOMAIN as exc:
            return Lookup(nxdomain=True), _negative_ttl(exc)
        except dns.resolver.LifetimeTimeout:
            reason = f"DNS {rdtype} query for {name} timed out after {self._timeout:g}s"
        except dns.resolver.NoNameservers:
            reason = f"no DNS server answered the {rdtype} query for {name} (SERVFAIL/REFUSED)"
        except (dns.exception.DNSException, OSError) as exc:
            reason = f"DNS {rdtype} query for {name} failed: {exc}"
        else:
            return Lookup(records=_answer_texts(answer)), answer.chaining_result.minimum_ttl
        return Lookup(failure=reason), self._failure_ttl
