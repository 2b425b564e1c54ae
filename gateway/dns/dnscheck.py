"""Run the DNS checks of ``gateway.dns.checks`` against real DNS (dnspython, async).

``plan_from_settings`` reads what the checks compare against from the configuration (pool
IPs and HELO names, DKIM key files, bounce domain, SMTP host name). ``run_dns_check``
answers the checks' questions with the configured nameservers (``[dns] nameservers``, or the
system resolver when empty), each question once. A timeout or SERVFAIL becomes an answer
with ``failure`` set, which the checks report as a failed line with the reason.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Sequence

import dns.asyncresolver
import dns.exception
import dns.rdtypes.ANY.TXT
import dns.resolver

from gateway.config.schema import DkimKey, SendingDomain, Settings
from gateway.dns.checks import CheckPlan, CheckResult, DkimExpectation, SendingIp, run_checks
from gateway.dns.question import Answer, Asks, Query, T
from gateway.dns.resolver import make_resolver
from gateway.dns.spf import IPAddress
from gateway.signing import keys

Fetch = Callable[[Query], Awaitable[Answer]]


def plan_from_settings(settings: Settings, domain: str) -> CheckPlan:
    """What DNS should say about ``domain`` given this configuration; reads the key files."""
    entry = _signing_entry(settings.domains, domain)
    expectations = [] if entry is None else [_expectation(entry.name, key) for key in entry.dkim]
    sending: dict[IPAddress, SendingIp] = {}
    for pool in settings.pools:
        for ip in pool.ips:
            sending.setdefault(ip.address, SendingIp(ip.address, ip.helo.lower()))
    return CheckPlan(domain, settings.bounce.domain, settings.smtp.hostname.lower(),
                     frozenset([*sending, *_listen_addresses(settings)]), tuple(sending.values()),
                     tuple(expectations))


def _expectation(signing_domain: str, entry: DkimKey) -> DkimExpectation:
    try:
        private = keys.load_private_key(entry.key_file, entry.algorithm)
    except keys.KeyProblem as exc:
        raise keys.KeyProblem(f"domain {signing_domain}, selector {entry.selector}: {exc} "
                              "(the check compares DNS with this key)") from None
    return DkimExpectation(entry.selector, signing_domain, entry.algorithm, keys.public_key_text(private),
                           entry.sign, keys.zone_record(entry.selector, signing_domain, private))


def _signing_entry(domains: Sequence[SendingDomain], domain: str) -> SendingDomain | None:
    """The [[domains]] entry whose keys sign mail from ``domain`` (as the KeyRing picks it)."""
    for entry in domains:
        if entry.name == domain and entry.dkim:
            return entry
    for entry in domains:
        if entry.subdomains and entry.dkim and domain.endswith("." + entry.name):
            return entry
    return None


def _listen_addresses(settings: Settings) -> list[IPAddress]:
    found: list[IPAddress] = []
    for endpoint in [*settings.smtp.listen, *settings.smtp.listen_tls]:
        try:
            address = ipaddress.ip_address(endpoint.host)
        except ValueError:
            continue
        if not address.is_unspecified:
            found.append(address)
    return found


async def run_dns_check(plan: CheckPlan, nameservers: Sequence[tuple[str, int]],
                        lifetime: float) -> list[CheckResult]:
    """``lifetime``: seconds one question may take, all retries included ([dns] timeout)."""
    resolver = make_resolver(nameservers, lifetime)
    return await drive(run_checks(plan), _cached(lambda query: ask(resolver, query)))


async def drive(check: Asks[T], fetch: Fetch) -> T:
    """Answer a check's questions one after the other until it returns its result."""
    try:
        query = next(check)
        while True:
            query = check.send(await fetch(query))
    except StopIteration as done:
        result: T = done.value
        return result


def _cached(fetch: Fetch) -> Fetch:
    answers: dict[Query, Answer] = {}

    async def cached(query: Query) -> Answer:
        if query not in answers:
            answers[query] = await fetch(query)
        return answers[query]

    return cached


async def ask(resolver: dns.asyncresolver.Resolver, query: Query) -> Answer:
    """One question; every DNS problem becomes an Answer, never an exception."""
    try:
        answer = await resolver.resolve(query.name + ".", query.rdtype, raise_on_no_answer=False,
                                        search=False)
    except dns.resolver.NXDOMAIN:
        return Answer(nxdomain=True)
    except dns.resolver.LifetimeTimeout:
        return Answer(failure=f"{query.rdtype} {query.name}: no answer within {resolver.lifetime:g}s")
    except dns.resolver.NoNameservers:
        return Answer(failure=f"{query.rdtype} {query.name}: SERVFAIL or REFUSED from every nameserver")
    except (dns.exception.DNSException, OSError) as exc:
        return Answer(failure=f"{query.rdtype} {query.name}: {exc}")
    if answer.rrset is None:
        return Answer()
    return Answer(tuple(_record_text(rdata) for rdata in answer.rrset))


def _record_text(rdata: object) -> str:
    """TXT: its character-strings joined; everything else in lower-case zone-file form."""
    if isinstance(rdata, dns.rdtypes.ANY.TXT.TXT):
        return b"".join(rdata.strings).decode("utf-8", "replace")
    return str(rdata).lower()
