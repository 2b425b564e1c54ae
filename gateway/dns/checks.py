"""What `gateway dns check DOMAIN` checks, and the fix for each failure, without sockets.

``run_checks(plan)`` is an ``Asks`` generator (see ``gateway.dns.question``): it asks DNS
questions and returns one :class:`CheckResult` per item of the checklist. Which items are
*required* follows the Gmail and Yahoo bulk-sender rules (February 2024):

* SPF passes for every sending IP on the envelope (VERP) domain, the bounce domain;
* the From domain's mail is DKIM-signed, i.e. every signing selector's published key is the
  configured one;
* a DMARC record exists (``p=none`` is enough) and DKIM or SPF is aligned with the From domain;
* every sending IP has forward-confirmed reverse DNS.

Recommended only (a warning, never a non-zero exit): SPF of the From domain itself when the
bounce domain differs, SPF of each HELO name (RFC 7208 2.3: receivers check it for null-sender
mail and some score it), selectors prepared for rotation (``sign = false``), DMARC ``rua``, the
bounce domain's MX pointing at the gateway. MTA-STS and TLS-RPT are reported for information.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from dataclasses import dataclass
from typing import Literal

from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_der_public_key

from gateway.dns.question import Asks, Query, mx_exchange
from gateway.dns.spf import (
    MAX_LOOKUPS,
    Identity,
    IPAddress,
    LookupCost,
    SpfSyntaxError,
    check_host,
    lookup_cost,
    parse_record,
    spf_records,
)

Status = Literal["pass", "warn", "fail", "info"]

# Second-level labels under which registrations happen in many country-code TLDs
# ("example.co.uk"). A stand-in for the Public Suffix List, which is not a dependency here.
_SECOND_LEVEL_SUFFIXES = frozenset({"co", "com", "net", "org", "gov", "ac", "edu", "or", "ne", "go"})


@dataclass(frozen=True)
class SendingIp:
    address: IPAddress
    helo: str


@dataclass(frozen=True)
class DkimExpectation:
    """A configured selector: the key it should publish and the record to paste if not."""

    selector: str
    domain: str  # d= of the signature
    algorithm: str
    public_key: str  # base64 p= value
    signing: bool
    record: str  # zone-file line with the right TXT record


@dataclass(frozen=True)
class CheckPlan:
    domain: str  # the From domain being checked
    bounce_domain: str  # envelope sender domain (VERP)
    gateway_hostname: str
    gateway_ips: frozenset[IPAddress]
    sending_ips: tuple[SendingIp, ...]
    dkim: tuple[DkimExpectation, ...]


@dataclass(frozen=True)
class CheckResult:
    check: str  # "SPF", "DKIM", "DMARC", ...
    subject: str  # the DNS name or IP the line is about
    status: Status
    required: bool  # required by the Gmail/Yahoo bulk-sender rules
    detail: str
    fix: str | None = None

    @property
    def blocks(self) -> bool:
        """A failed requirement: the exit status is 1."""
        return self.required and self.status == "fail"


def run_checks(plan: CheckPlan) -> Asks[list[CheckResult]]:
    results: list[CheckResult] = []
    results += yield from check_spf(plan, plan.bounce_domain, required=True)
    if plan.domain != plan.bounce_domain:
        results += yield from check_spf(plan, plan.domain, required=False)
    results += yield from check_dkim(plan)
    results += yield from check_dmarc(plan)
    for sending in plan.sending_ips:
        results.append((yield from check_reverse_dns(sending)))
    results += yield from check_helo_spf(plan.sending_ips)
    results.append((yield from check_bounce_mx(plan)))
    results += yield from check_transport_policies(plan.domain)
    return results


# -- SPF ------------------------------------------------------------------------------------


def check_spf(plan: CheckPlan, domain: str, *, required: bool) -> Asks[list[CheckResult]]:
    role = "envelope (bounce) domain" if domain == plan.bounce_domain else "From domain"
    if not plan.sending_ips:
        return [CheckResult("SPF", domain, "warn", False,
                            "no [[pools]] configured: the sending IPs are unknown, SPF not evaluated",
                            "list the gateway's outgoing addresses in [[pools]] ips")]
    by_outcome: dict[str, list[str]] = {}  # same result for several IPs: one sentence
    uncovered: list[IPAddress] = []
    for sending in plan.sending_ips:
        outcome = yield from check_host(sending.address, domain,
                                        Identity(f"postmaster@{domain}", sending.helo))
        if outcome.result != "pass":
            by_outcome.setdefault(f"{outcome.result} ({outcome.reason})", []).append(str(sending.address))
            uncovered.append(sending.address)
    problems = [f"{', '.join(ips)}: {outcome}" for outcome, ips in by_outcome.items()]
    cost = yield from lookup_cost(domain)
    failed_status: Status = "fail" if required else "warn"
    if problems:
        dedicated = domain == plan.bounce_domain != plan.domain  # nobody else sends with it
        fix = yield from _spf_fix(domain, uncovered, cost, dedicated=dedicated)
        return [CheckResult("SPF", domain, failed_status, required,
                            f"{role}: " + "; ".join(problems), fix)]
    ips = ", ".join(str(s.address) for s in plan.sending_ips)
    if cost.problem is not None:
        return [CheckResult("SPF", domain, "warn", required,
                            f"{role}: pass for {ips}, but {cost.problem}: other senders get permerror",
                            "remove the include or redirect that leads back or fails")]
    if cost.total > MAX_LOOKUPS:
        return [CheckResult("SPF", domain, "warn", required,
                            f"{role}: pass for {ips}, but the whole record needs {cost.total} DNS "
                            f"lookups (limit {MAX_LOOKUPS}): other senders matched late get permerror",
                            _flatten_advice(cost))]
    return [CheckResult("SPF", domain, "pass", required,
                        f"{role}: pass for {ips} ({cost.total} of {MAX_LOOKUPS} lookups in the record)")]


def check_helo_spf(sending_ips: tuple[SendingIp, ...]) -> Asks[list[CheckResult]]:
    """One line per HELO name: does its SPF record authorize the IPs that announce it?"""
    by_helo: dict[str, list[IPAddress]] = {}
    for sending in sending_ips:
        by_helo.setdefault(sending.helo, []).append(sending.address)
    results: list[CheckResult] = []
    for helo, ips in by_helo.items():
        failing: list[str] = []
        for ip in ips:
            outcome = yield from check_host(ip, helo, Identity(f"postmaster@{helo}", helo))
            if outcome.result != "pass":
                failing.append(f"{ip}: {outcome.result} ({outcome.reason})")
        if failing:
            terms = " ".join(f"ip{ip.version}:{ip}" for ip in ips)
            results.append(CheckResult("HELO SPF", helo, "warn", False, "; ".join(failing),
                                       f'publish {helo}. IN TXT "v=spf1 {terms} -all"'))
        else:
            results.append(CheckResult("HELO SPF", helo, "pass", False,
                                       f"pass for {', '.join(str(ip) for ip in ips)}"))
    return results


def _spf_fix(domain: str, uncovered: list[IPAddress], cost: LookupCost, *,
             dedicated: bool) -> Asks[str]:
    """The record to publish: the current one with the missing addresses first."""
    answer = yield Query(domain, "TXT")
    if answer.failure is not None:
        return f"make the nameservers of {domain} answer, then run the check again"
    current = spf_records(answer.records)
    added = " ".join(f"ip{ip.version}:{ip}" for ip in uncovered)
    if not current:
        ending = "-all" if dedicated else "~all"
        return f'publish {domain}. IN TXT "v=spf1 {added} {ending}"'
    if len(current) > 1:
        merged = " ".join(term for text in current for term in text.split()[1:])
        return (f"merge the {len(current)} SPF records into one: {domain}. IN TXT "
                f'"v=spf1 {added} {merged}" (then remove duplicate terms and keep one all)')
    try:
        parse_record(current[0])
    except SpfSyntaxError as exc:
        return f"correct the SPF record of {domain} ({exc}) and add {added} to it"
    rest = current[0].split(None, 1)[1] if " " in current[0] else "~all"
    fix = f'replace the SPF record with {domain}. IN TXT "v=spf1 {added} {rest}"'
    if cost.total > MAX_LOOKUPS:
        fix += "; " + _flatten_advice(cost)
    return fix


def _flatten_advice(cost: LookupCost) -> str:
    parts = [f"{term}: {n}" for term, n in sorted(cost.terms, key=lambda t: -t[1]) if n > 1]
    singles = sum(1 for _, n in cost.terms if n == 1)
    parts += [f"{singles} term(s) with 1 each"] if singles else []
    return (f"cut DNS lookups to {MAX_LOOKUPS} or fewer: the record needs {cost.total} ({', '.join(parts)}); "
            "remove includes of services you no longer use or replace them with their ip4:/ip6: ranges")


# -- DKIM -----------------------------------------------------------------------------------


def check_dkim(plan: CheckPlan) -> Asks[list[CheckResult]]:
    if not any(expected.signing for expected in plan.dkim):
        return [CheckResult("DKIM", plan.domain, "fail", True,
                            f"no signing DKIM key is configured for {plan.domain}",
                            f"run `gateway dkim keygen {plan.domain} --selector s1`, add the key to "
                            f"[[domains]] for {plan.domain} and publish the record it prints")]
    results: list[CheckResult] = []
    for expected in plan.dkim:
        results.append((yield from _check_selector(expected)))
    return results


def _check_selector(expected: DkimExpectation) -> Asks[CheckResult]:
    name = f"{expected.selector}._domainkey.{expected.domain}"
    answer = yield Query(name, "TXT")
    required = expected.signing
    state = "" if expected.signing else "; selector not signing yet (sign = false)"
    failed: Status = "fail" if required else "warn"
    fix = f"publish {expected.record}"
    if answer.failure is not None:
        return CheckResult("DKIM", name, failed, required, f"lookup failed: {answer.failure}", None)
    if not answer.records:
        return CheckResult("DKIM", name, failed, required, f"no TXT record{state}", fix)
    if len(answer.records) > 1:
        return CheckResult("DKIM", name, failed, required,
                           f"{len(answer.records)} TXT records; verifiers may pick either",
                           f"keep only one: {expected.record}")
    problem = dkim_key_problem(answer.records[0], expected)
    if problem is not None:
        return CheckResult("DKIM", name, failed, required, problem, f"replace it with {expected.record}")
    if "y" in parse_tags(answer.records[0]).get("t", "").replace(" ", "").split(":"):
        return CheckResult("DKIM", name, "warn", required,
                           f"key matches but t=y (testing): verifiers may ignore failures{state}",
                           "remove t=y from the record once signing works")
    return CheckResult("DKIM", name, "pass", required,
                       f"published key matches ({expected.algorithm}){state}")


def parse_tags(text: str) -> dict[str, str]:
    """Tag=value lists (RFC 6376 3.2, also DMARC): later duplicates are ignored, names lower case."""
    tags: dict[str, str] = {}
    for part in text.split(";"):
        if part.strip():
            name, separator, value = part.partition("=")
            if not separator:
                raise ValueError(f"{part.strip()!r} is not a tag=value pair")
            tags.setdefault(name.strip().lower(), value.strip())
    return tags


def dkim_key_problem(text: str, expected: DkimExpectation) -> str | None:
    """Why the published key record is not the configured key, or None when it is."""
    try:
        tags = parse_tags(text)
    except ValueError as exc:
        return f"malformed record: {exc}"
    if tags.get("v", "DKIM1") != "DKIM1" or ("v" in tags and not text.strip().startswith("v")):
        return "v= must be DKIM1 and come first"
    published_kind = tags.get("k", "rsa").lower()
    if published_kind != expected.algorithm:
        return f"k={published_kind}, but the configured key is {expected.algorithm}"
    if "p" not in tags:
        return "the record has no p= (public key)"
    published = "".join(tags["p"].split())
    if not published:
        return "p= is empty: the key is revoked"
    if not _same_key(published, expected.public_key, expected.algorithm):
        return "published p= is a different key than the configured key file"
    return None


def _same_key(published: str, configured: str, algorithm: str) -> bool:
    try:
        raw = base64.b64decode(published, validate=True)
    except (binascii.Error, ValueError):
        return False
    wanted = base64.b64decode(configured)
    if raw == wanted or algorithm != "rsa":
        return raw == wanted
    try:  # the same RSA key written as PKCS#1 instead of SubjectPublicKeyInfo still verifies
        ours, theirs = load_der_public_key(wanted), load_der_public_key(raw)
    except (ValueError, TypeError):
        return False
    if not (isinstance(ours, rsa.RSAPublicKey) and isinstance(theirs, rsa.RSAPublicKey)):
        return False
    return ours.public_numbers() == theirs.public_numbers()


# -- DMARC ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DmarcRecord:
    policy: str
    subdomain_policy: str | None
    adkim: str
    aspf: str
    pct: int
    rua: tuple[str, ...]


def organizational_domain(domain: str) -> str:
    """The registered domain: two labels, three under a common second-level suffix (co.uk)."""
    labels = domain.lower().rstrip(".").split(".")
    if len(labels) >= 3 and len(labels[-1]) == 2 and labels[-2] in _SECOND_LEVEL_SUFFIXES:
        return ".".join(labels[-3:])
    return ".".join(labels[-2:])


def aligned(identifier: str, from_domain: str, mode: str) -> bool:
    """DMARC identifier alignment (RFC 7489 3.1): strict is equality, relaxed same organization."""
    if mode == "s":
        return identifier.lower() == from_domain.lower()
    return organizational_domain(identifier) == organizational_domain(from_domain)


def parse_dmarc(text: str) -> DmarcRecord:
    tags = parse_tags(text)
    if not text.strip().startswith("v=DMARC1") or tags.get("v") != "DMARC1":
        raise ValueError("must start with v=DMARC1")
    policy = tags.get("p", "").lower()
    if policy not in ("none", "quarantine", "reject"):
        raise ValueError(f"p={policy or '(missing)'}: expected none, quarantine or reject")
    subdomain = tags.get("sp")
    if subdomain is not None and subdomain.lower() not in ("none", "quarantine", "reject"):
        raise ValueError(f"sp={subdomain}: expected none, quarantine or reject")
    modes = {name: tags.get(name, "r").lower() for name in ("adkim", "aspf")}
    for name, mode in modes.items():
        if mode not in ("r", "s"):
            raise ValueError(f"{name}={mode}: expected r or s")
    pct_text = tags.get("pct", "100")
    if not pct_text.isdigit() or int(pct_text) > 100:
        raise ValueError(f"pct={pct_text}: expected 0 to 100")
    rua = tuple(uri.strip() for uri in tags.get("rua", "").split(",") if uri.strip())
    return DmarcRecord(policy, subdomain.lower() if subdomain else None, modes["adkim"], modes["aspf"],
                       int(pct_text), rua)


def check_dmarc(plan: CheckPlan) -> Asks[list[CheckResult]]:
    domain = plan.domain
    owner, texts, failure = yield from _find_dmarc(domain)
    suggested = (f'publish _dmarc.{domain}. IN TXT "v=DMARC1; p=none; '
                 f'rua=mailto:dmarc-reports@{domain}"')
    subject = f"_dmarc.{owner}"
    if failure is not None:
        return [CheckResult("DMARC", subject, "fail", True, f"lookup failed: {failure}")]
    if not texts:
        return [CheckResult("DMARC", f"_dmarc.{domain}", "fail", True,
                            "no DMARC record (Gmail and Yahoo require one; p=none is enough)", suggested)]
    if len(texts) > 1:
        return [CheckResult("DMARC", subject, "fail", True,
                            f"{len(texts)} DMARC records: receivers ignore all of them",
                            "keep exactly one v=DMARC1 record")]
    try:
        record = parse_dmarc(texts[0])
    except ValueError as exc:
        return [CheckResult("DMARC", subject, "fail", True, f"invalid record: {exc}", suggested)]
    policy = record.policy if owner == domain else (record.subdomain_policy or record.policy)
    where = "" if owner == domain else f" (inherited from {owner})"
    results = [CheckResult("DMARC", subject, "pass", True, f"p={policy}{where}, pct={record.pct}")]
    results.append(_alignment(plan, record))
    if not record.rua:
        results.append(CheckResult("DMARC reports", subject, "warn", False,
                                   "no rua=: you will not receive aggregate reports",
                                   f"add rua=mailto:dmarc-reports@{domain} to the record"))
    for uri in record.rua:
        results += yield from _report_authorization(owner, uri)
    return results


def _report_authorization(owner: str, uri: str) -> Asks[list[CheckResult]]:
    """Reports to another organization need its consent in DNS (RFC 7489 7.1)."""
    target = uri.removeprefix("mailto:").split("!")[0].rpartition("@")[2].lower()
    if not target or organizational_domain(target) == organizational_domain(owner):
        return []
    name = f"{owner}._report._dmarc.{target}"
    answer = yield Query(name, "TXT")
    if any(text.strip().startswith("v=DMARC1") for text in answer.records):
        return []
    return [CheckResult("DMARC reports", name, "warn", False,
                        f"rua={uri} is outside {organizational_domain(owner)} and {target} does not "
                        f"accept reports for {owner}: receivers will not send them",
                        f'ask the operator of {target} to publish {name}. IN TXT "v=DMARC1", '
                        f"or send reports to an address under {owner}")]


def _find_dmarc(domain: str) -> Asks[tuple[str, list[str], str | None]]:
    """The record at _dmarc.DOMAIN, else at the organizational domain (RFC 7489 6.6.3)."""
    owners = [domain]
    if organizational_domain(domain) != domain:
        owners.append(organizational_domain(domain))
    for owner in owners:
        answer = yield Query(f"_dmarc.{owner}", "TXT")
        if answer.failure is not None:
            return owner, [], answer.failure
        texts = [t for t in answer.records if t.strip().startswith("v=DMARC1")]
        if texts:
            return owner, texts, None
    return domain, [], None


def _alignment(plan: CheckPlan, record: DmarcRecord) -> CheckResult:
    signing_domains = sorted({e.domain for e in plan.dkim if e.signing})
    dkim_ok = [d for d in signing_domains if aligned(d, plan.domain, record.adkim)]
    spf_ok = aligned(plan.bounce_domain, plan.domain, record.aspf)
    parts = [f"DKIM d={', '.join(signing_domains) or '(none)'} {'aligned' if dkim_ok else 'not aligned'} "
             f"(adkim={record.adkim})",
             f"SPF {plan.bounce_domain} {'aligned' if spf_ok else 'not aligned'} (aspf={record.aspf})"]
    detail = "; ".join(parts)
    if not dkim_ok and not spf_ok:
        fix = (f"sign with a key in [[domains]] name = \"{plan.domain}\" (d={plan.domain}), "
               f"or set [bounce] domain to a subdomain of {organizational_domain(plan.domain)}")
        if record.adkim == "s" or record.aspf == "s":
            fix += ", or relax the record to adkim=r; aspf=r"
        return CheckResult("DMARC alignment", plan.domain, "fail", True, detail, fix)
    if not dkim_ok or not spf_ok:
        return CheckResult("DMARC alignment", plan.domain, "pass", True,
                           detail + ": one aligned identifier is enough")
    return CheckResult("DMARC alignment", plan.domain, "pass", True, detail)


# -- reverse DNS ----------------------------------------------------------------------------


def check_reverse_dns(sending: SendingIp) -> Asks[CheckResult]:
    """PTR of the IP names a host that resolves back to the IP, ideally the HELO name."""
    ip, helo = sending.address, sending.helo
    reverse = ip.reverse_pointer
    forward_type = "A" if ip.version == 4 else "AAAA"
    set_ptr = (f"ask the holder of {ip} (hosting provider or ISP) to set {reverse}. IN PTR {helo}. "
               f"and publish {helo}. IN {forward_type} {ip}")
    answer = yield Query(reverse, "PTR")
    if answer.failure is not None:
        return CheckResult("PTR", str(ip), "fail", True, f"PTR lookup failed: {answer.failure}", set_ptr)
    names = [r.rstrip(".").lower() for r in answer.records]
    if not names:
        return CheckResult("PTR", str(ip), "fail", True, f"no PTR record for {ip}", set_ptr)
    forward: dict[str, tuple[str, ...]] = {}
    for name in names[:10]:
        forward[name] = (yield Query(name, forward_type)).records
    confirmed = [name for name, found in forward.items() if any(ipaddress.ip_address(a) == ip for a in found)]
    if not confirmed:
        seen = ", ".join(f"{name} -> {', '.join(found) or 'no address'}" for name, found in forward.items())
        fix = set_ptr
        if helo in forward:
            fix = (f"make {helo}. IN {forward_type} {ip} (now {', '.join(forward[helo]) or 'none'}); "
                   "the PTR already names the HELO host")
        return CheckResult("PTR", str(ip), "fail", True,
                           f"PTR {seen}: not forward-confirmed (needs {ip})", fix)
    if helo not in confirmed:
        return CheckResult("PTR", str(ip), "warn", True,
                           f"forward-confirmed as {confirmed[0]}, but HELO is {helo}",
                           f'set helo = "{confirmed[0]}" for {ip} in [[pools]], or {set_ptr}')
    return CheckResult("PTR", str(ip), "pass", True, f"{ip} -> {helo} -> {ip}")


# -- bounce domain MX -----------------------------------------------------------------------


def check_bounce_mx(plan: CheckPlan) -> Asks[CheckResult]:
    """Bounces and complaints come back only if the bounce domain's MX is the gateway."""
    domain = plan.bounce_domain
    fix = f"publish {domain}. IN MX 10 {plan.gateway_hostname}."
    answer = yield Query(domain, "MX")
    if answer.failure is not None:
        return CheckResult("bounce MX", domain, "warn", False, f"MX lookup failed: {answer.failure}", fix)
    exchanges = [mx_exchange(r) for r in answer.records]
    if exchanges == [""]:
        return CheckResult("bounce MX", domain, "warn", False, "null MX: bounces cannot come back", fix)
    hosts = exchanges or [domain]  # no MX: the domain's own address (RFC 5321 5.1)
    if plan.gateway_hostname in hosts:
        return CheckResult("bounce MX", domain, "pass", False, f"MX {plan.gateway_hostname} is the gateway")
    for host in hosts[:10]:
        for rdtype in ("A", "AAAA"):
            addresses = (yield Query(host, rdtype)).records
            if any(ipaddress.ip_address(a) in plan.gateway_ips for a in addresses):
                return CheckResult("bounce MX", domain, "pass", False,
                                   f"MX {host} resolves to a gateway address")
    found = f"MX {', '.join(exchanges)}" if exchanges else "no MX record"
    return CheckResult("bounce MX", domain, "warn", False,
                       f"{found}: not the gateway ({plan.gateway_hostname}); DSNs and complaints "
                       "will not reach it", fix)


# -- MTA-STS and TLS-RPT --------------------------------------------------------------------


def check_transport_policies(domain: str) -> Asks[list[CheckResult]]:
    """Informational: these protect mail *to* the domain, not its reputation as a sender."""
    results: list[CheckResult] = []
    for check, name, version in (("MTA-STS", f"_mta-sts.{domain}", "STSv1"),
                                 ("TLS-RPT", f"_smtp._tls.{domain}", "TLSRPTv1")):
        answer = yield Query(name, "TXT")
        texts = [t for t in answer.records if t.replace(" ", "").startswith(f"v={version}")]
        if answer.failure is not None:
            results.append(CheckResult(check, name, "info", False, f"lookup failed: {answer.failure}"))
        elif not texts:
            results.append(CheckResult(check, name, "info", False, "not published (optional)"))
        elif len(texts) > 1:
            results.append(CheckResult(check, name, "warn", False, f"{len(texts)} records; publish one"))
        else:
            results.append(CheckResult(check, name, "info", False, f"published: {texts[0]}"))
    return results
