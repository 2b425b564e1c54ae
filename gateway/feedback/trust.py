"""Whether a complaint report may change anything: DKIM for a configured domain, or a
configured source network.

Anyone can mail an ARF report to the bounce domain naming any address; acting on it
unchecked would let a stranger unsubscribe people. A report counts only when a DKIM
signature on it verifies with a d= that is one of ``[complaints] dkim_domains`` (the
provider's feedback-loop domain) and the report's From domain is at or below that d=, or
when it came from one of ``[complaints] trusted_networks``. Signatures with ``l=`` are
refused; a key lookup that fails for now is reported as such, so the report is judged
again later instead of being distrusted for a DNS hiccup. The outcome is written down as an
Authentication-Results header (RFC 8601) and kept with the complaint's evidence.

dkimpy verifies synchronously and asks DNS through the function it is given: here a
dnspython resolver pointed at the gateway's own ``[dns] nameservers``, run in a thread.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import authres
import dkim
import dns.exception
import dns.resolver
from dkim.util import parse_tag_value

from gateway.dns.resolver import make_blocking_resolver

log = logging.getLogger(__name__)
TxtLookup = Callable[..., bytes | None]
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_SIGNATURES = 5  # a report with more DKIM-Signature fields than this has only these checked


@dataclass(frozen=True)
class Trust:
    trusted: bool
    why: str  # for the record: which domain or network, or what was missing
    auth_results: str  # the Authentication-Results header, "name: value"
    temporary: bool = False  # not trusted because DNS failed for now: worth asking again later


class TemporaryDnsFailure(Exception):
    """A key lookup failed for a reason that may pass (timeout, SERVFAIL): not a verdict."""


PERMANENT_DNS = (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer)


def txt_lookup(nameservers: Sequence[tuple[str, int]], timeout: float) -> TxtLookup:
    """dkimpy's ``dnsfunc``: TXT text for a name, through our nameservers (system's if none).
    No such name or no TXT record: None (the signature fails); anything else raises
    TemporaryDnsFailure so that the report is judged again later rather than distrusted."""
    resolver = make_blocking_resolver(nameservers, timeout)

    def lookup(name: bytes, timeout: float = timeout) -> bytes | None:
        try:
            answer = resolver.resolve(name.decode("ascii").rstrip("."), "TXT", lifetime=timeout)
        except UnicodeDecodeError:
            return None
        except PERMANENT_DNS:
            return None
        except dns.exception.DNSException as exc:
            raise TemporaryDnsFailure(f"{type(exc).__name__}: {exc}") from None
        for rdata in answer:
            return b"".join(rdata.strings)
        return None

    return lookup


def verified_dkim_domains(raw: bytes, lookup: TxtLookup, timeout: float = 5.0) -> list[tuple[str, str]]:
    """(d= domain, result) for each DKIM signature on ``raw`` (blocking: run it in a thread).

    result is ``pass``, ``fail``, ``temperror`` (DNS failed for now) or ``policy`` (a
    signature with ``l=``: it covers only part of the body, so anything could be appended
    to a genuinely signed report - refused whatever it verifies to).
    """
    results: list[tuple[str, str]] = []
    try:
        checker = dkim.DKIM(raw, timeout=timeout)
        signatures = [value for name, value in checker.headers if name.lower() == b"dkim-signature"]
    except Exception as exc:  # dkimpy raises several unrelated types for malformed mail
        log.info("complaint report not checkable for DKIM: %s", exc)
        return results
    for index, value in enumerate(signatures[:MAX_SIGNATURES]):
        tags = _tags(value)
        domain = tags.get(b"d", b"").decode("ascii", "replace").strip().lower()
        if b"l" in tags:
            results.append((domain, "policy"))
            continue
        results.append((domain, _verify_one(checker, index, lookup)))
    return results


def _tags(value: bytes) -> dict[bytes, bytes]:
    try:
        return {bytes(k): bytes(v) for k, v in parse_tag_value(value).items()}
    except Exception:  # an unparsable signature has no usable tags
        return {}


def _verify_one(checker: dkim.DKIM, index: int, lookup: TxtLookup) -> str:
    try:
        return "pass" if checker.verify(idx=index, dnsfunc=lookup) else "fail"
    except TemporaryDnsFailure as exc:
        log.info("DKIM signature %d of a complaint report: key lookup failed for now (%s)", index, exc)
        return "temperror"
    except Exception as exc:
        log.info("DKIM signature %d of a complaint report fails: %s", index, exc)
        return "fail"


def judge(signatures: Sequence[tuple[str, str]], client_ip: str, *, dkim_domains: Sequence[str],
          networks: Sequence[IPNetwork], authserv_id: str, from_domain: str = "") -> Trust:
    """Trusted or not, and the Authentication-Results header saying why (pure).

    A signature counts when it passes, its d= is one of ``dkim_domains`` exactly, and the
    report's From domain is that domain or below it (a provider's key signing a report
    that claims to come from someone else proves nothing about that someone)."""
    results = [authres.DKIMAuthenticationResult(result=result, header_d=domain or None)
               for domain, result in signatures] or [authres.NoneAuthenticationResult()]
    header = str(authres.AuthenticationResultsHeader(authserv_id=authserv_id, results=results))
    wanted = {domain.lower() for domain in dkim_domains}
    sender = from_domain.lower().rstrip(".")
    for domain, result in signatures:
        if result == "pass" and domain in wanted and _under(sender, [domain]):
            return Trust(True, f"DKIM pass for {domain}", header)
    network = _network_of(client_ip, networks)
    if network is not None:
        return Trust(True, f"sent from trusted network {network}", header)
    why = f"{_dkim_problem(signatures, wanted, sender)}, and {client_ip or 'the sender'} is not in a " \
          "trusted network"
    temporary = any(result == "temperror" and domain in wanted for domain, result in signatures)
    return Trust(False, why, header, temporary=temporary)


def _dkim_problem(signatures: Sequence[tuple[str, str]], wanted: set[str], sender: str) -> str:
    passed = [domain for domain, result in signatures if result == "pass"]
    if any(domain in wanted for domain in passed):
        return f"DKIM passes for an FBL domain, but the From domain {sender or '(none)'} is not under it"
    if passed:
        return f"DKIM passes only for {', '.join(passed)}, not a configured FBL domain"
    if any(result == "policy" for _, result in signatures):
        return "DKIM signature with l= (partial body) refused"
    if any(result == "temperror" for _, result in signatures):
        return "DKIM key lookup failed for now"
    return "no passing DKIM signature"


def _under(domain: str, parents: Sequence[str]) -> bool:
    return any(domain == parent or domain.endswith("." + parent) for parent in parents)


def _network_of(client_ip: str, networks: Sequence[IPNetwork]) -> IPNetwork | None:
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return None
    return next((network for network in networks if address in network), None)
