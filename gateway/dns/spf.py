"""SPF evaluation (RFC 7208) for `gateway dns check`, without sockets.

``check_host`` is the function of RFC 7208 section 4 written as an ``Asks`` generator: it
yields the DNS questions it needs and gets the answers sent back, so the same code runs
against live DNS and against a dictionary in tests. It enforces the limits receivers
enforce: at most 10 terms that cause DNS lookups (include, a, mx, ptr, exists, redirect),
at most 2 void lookups, at most 10 MX or PTR names per term; beyond them the result is
``permerror``, which Gmail and Yahoo treat as no SPF at all.

``lookup_cost`` walks the whole include/redirect tree regardless of any IP, because a
record that stays under the limit only for the gateway's addresses still breaks for the
domain's other senders that match later terms.

Not evaluated: the ``exp=`` explanation (only a receiver's reject text) and the ``%{p}``
macro (validated PTR name; it expands to "unknown", as RFC 7208 7.3 allows).
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from gateway.dns.question import Answer, Asks, Query, mx_exchange

SpfResult = Literal["pass", "fail", "softfail", "neutral", "none", "permerror", "temperror"]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_LOOKUPS = 10
MAX_VOID_LOOKUPS = 2
MAX_NAMES_PER_TERM = 10
QUALIFIERS: dict[str, SpfResult] = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}
LOOKUP_MECHANISMS = frozenset({"include", "a", "mx", "ptr", "exists"})

_MODIFIER = re.compile(r"([a-z][a-z0-9_.-]*)=(.*)\Z", re.IGNORECASE)
_DIRECTIVE = re.compile(
    r"([-+~?]?)(all|include|a|mx|ptr|ip4|ip6|exists)(?::([^/]*))?(?:/(\d{1,3}))?(?://(\d{1,3}))?\Z",
    re.IGNORECASE,
)
_MACRO = re.compile(r"%(?:\{([a-z])(\d*)(r?)([-.+,/_=]*)\}|(.)|\Z)", re.IGNORECASE)


class SpfSyntaxError(ValueError):
    """The record cannot be parsed: receivers return permerror."""


@dataclass(frozen=True)
class Directive:
    qualifier: str
    mechanism: str
    argument: str | None
    cidr4: int | None = None
    cidr6: int | None = None
    text: str = ""


@dataclass(frozen=True)
class SpfRecord:
    text: str
    directives: tuple[Directive, ...]
    redirect: str | None = None


@dataclass(frozen=True)
class SpfOutcome:
    result: SpfResult
    reason: str
    lookups: int = 0
    voids: int = 0
    matched: str | None = None  # the term that decided, e.g. "include:_spf.example.net"


@dataclass(frozen=True)
class LookupCost:
    """DNS-lookup terms in the whole tree, and each top-level term's share of them."""

    total: int
    terms: tuple[tuple[str, int], ...] = ()
    problem: str | None = None


@dataclass(frozen=True)
class Identity:
    """What macros may refer to: the envelope sender and the HELO name of the session."""

    sender: str
    helo: str


def spf_records(texts: Sequence[str]) -> list[str]:
    """The TXT records that are SPF records: "v=spf1" alone or followed by a space."""
    return [t for t in texts if t[:6].lower() == "v=spf1" and (len(t) == 6 or t[6] == " ")]


def parse_record(text: str) -> SpfRecord:
    directives: list[Directive] = []
    redirect: str | None = None
    seen_modifiers: set[str] = set()
    for term in text.split()[1:]:
        modifier = _MODIFIER.match(term)
        if modifier:
            name = modifier.group(1).lower()
            if name in seen_modifiers and name in ("redirect", "exp"):
                raise SpfSyntaxError(f"{name}= appears twice")
            seen_modifiers.add(name)
            if name == "redirect":
                redirect = _domain_spec(modifier.group(2), term)
            continue
        directives.append(parse_directive(term))
    return SpfRecord(text, tuple(directives), redirect)


def parse_directive(term: str) -> Directive:
    match = _DIRECTIVE.match(term)
    if match is None:
        raise SpfSyntaxError(f"unknown or malformed term {term!r}")
    qualifier, name, argument, cidr4_text, cidr6_text = match.groups()
    mechanism = name.lower()
    cidr4 = int(cidr4_text) if cidr4_text is not None else None
    cidr6 = int(cidr6_text) if cidr6_text is not None else None
    if mechanism == "all" and (argument is not None or cidr4 is not None or cidr6 is not None):
        raise SpfSyntaxError(f"{term!r}: all takes no argument")
    if mechanism in ("include", "exists", "ip4", "ip6") and not argument:
        raise SpfSyntaxError(f"{term!r}: {mechanism} needs ':' and a value")
    if mechanism in ("ip4", "ip6"):
        _ip_network(mechanism, argument or "", cidr4, cidr6, term)
    elif cidr4 is not None or cidr6 is not None:
        if mechanism not in ("a", "mx"):
            raise SpfSyntaxError(f"{term!r}: {mechanism} takes no prefix length")
        if (cidr4 or 0) > 32 or (cidr6 or 0) > 128:
            raise SpfSyntaxError(f"{term!r}: prefix length out of range")
    if argument is not None and mechanism not in ("ip4", "ip6"):
        _domain_spec(argument, term)
    return Directive(qualifier or "+", mechanism, argument, cidr4, cidr6, term)


def _ip_network(
    mechanism: str, argument: str, cidr4: int | None, cidr6: int | None, term: str
) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if cidr6 is not None:
        raise SpfSyntaxError(f"{term!r}: '//' prefix lengths belong to a and mx only")
    try:
        address = ipaddress.ip_address(argument)
    except ValueError:
        raise SpfSyntaxError(f"{term!r}: {argument!r} is not an IP address") from None
    if (mechanism == "ip4") != (address.version == 4):
        raise SpfSyntaxError(f"{term!r}: {argument} is not an IPv{mechanism[-1]} address")
    prefix = cidr4 if cidr4 is not None else address.max_prefixlen
    if prefix > address.max_prefixlen:
        raise SpfSyntaxError(f"{term!r}: prefix length out of range")
    return ipaddress.ip_network(f"{address}/{prefix}", strict=False)


def _domain_spec(spec: str, term: str) -> str:
    if not spec or any(c.isspace() for c in spec):
        raise SpfSyntaxError(f"{term!r}: empty or malformed domain")
    for macro in _MACRO.finditer(spec):
        letter, _, _, _, escape = macro.groups()
        if escape is not None and escape not in "%_-":
            raise SpfSyntaxError(f"{term!r}: bad macro '%{escape}'")
        if letter is None and escape is None:
            raise SpfSyntaxError(f"{term!r}: '%' at the end of a domain")
        if letter is not None and letter.lower() not in "slodiphv":
            raise SpfSyntaxError(f"{term!r}: macro %{{{letter}}} is not allowed here")
    return spec


# -- macros (RFC 7208 section 7) ---------------------------------------------------------------


@dataclass(frozen=True)
class _MacroContext:
    ip: IPAddress
    domain: str
    identity: Identity


def expand(spec: str, context: _MacroContext) -> str:
    def replace(macro: re.Match[str]) -> str:
        letter, digits, reverse, delimiters, escape = macro.groups()
        if letter is None:
            return {"%": "%", "_": " ", "-": "%20"}[escape]
        value = _macro_value(letter.lower(), context)
        parts = re.split("[" + re.escape(delimiters or ".") + "]", value)
        if reverse:
            parts.reverse()
        if digits:
            if int(digits) == 0:
                raise SpfSyntaxError(f"macro %{{{letter}0}} keeps no labels")
            parts = parts[-int(digits):]
        text = ".".join(parts)
        return urllib.parse.quote(text, safe="") if letter.isupper() else text

    expanded = _MACRO.sub(replace, spec)
    while len(expanded) > 253 and "." in expanded:
        expanded = expanded.split(".", 1)[1]  # RFC 7208 7.3: drop labels from the left
    return expanded


def _macro_value(letter: str, context: _MacroContext) -> str:
    sender = context.identity.sender
    local, _, sender_domain = sender.rpartition("@")
    if letter == "i":
        if context.ip.version == 4:
            return str(context.ip)
        return ".".join(context.ip.exploded.replace(":", ""))
    values = {"s": sender, "l": local or "postmaster", "o": sender_domain, "d": context.domain,
              "p": "unknown", "v": "in-addr" if context.ip.version == 4 else "ip6",
              "h": context.identity.helo}
    return values[letter]


# -- evaluation (RFC 7208 section 4) ----------------------------------------------------------


class _PermError(Exception):
    pass


class _TempError(Exception):
    pass


@dataclass
class _Budget:
    lookups: int = 0
    voids: int = 0
    trail: list[str] = field(default_factory=list)

    def spend(self, term: str) -> None:
        self.lookups += 1
        if self.lookups > MAX_LOOKUPS:
            raise _PermError(f"more than {MAX_LOOKUPS} DNS lookups: the 11th is {term!r}")

    def count(self, answer: Answer, name: str) -> Answer:
        if answer.failure is not None:
            raise _TempError(answer.failure)
        if answer.void:
            self.voids += 1
            if self.voids > MAX_VOID_LOOKUPS:
                raise _PermError(f"more than {MAX_VOID_LOOKUPS} void lookups: the last is {name}")
        return answer


def check_host(ip: IPAddress, domain: str, identity: Identity) -> Asks[SpfOutcome]:
    """The SPF result receivers compute for mail from ``ip`` with this envelope domain."""
    budget = _Budget()
    try:
        result, reason, matched = yield from _check(ip, domain, identity, budget)
    except _PermError as exc:
        return SpfOutcome("permerror", str(exc), budget.lookups, budget.voids)
    except _TempError as exc:
        return SpfOutcome("temperror", str(exc), budget.lookups, budget.voids)
    return SpfOutcome(result, reason, budget.lookups, budget.voids, matched)


def fetch_record(domain: str) -> Asks[tuple[SpfRecord | None, str]]:
    """The domain's one SPF record, or None and why; raises _PermError/_TempError."""
    answer = yield Query(domain, "TXT")
    if answer.failure is not None:
        raise _TempError(answer.failure)
    found = spf_records(answer.records)
    if not found:
        return None, f"{domain} has no SPF record" + (" (NXDOMAIN)" if answer.nxdomain else "")
    if len(found) > 1:
        raise _PermError(f"{domain} has {len(found)} SPF records; receivers need exactly one")
    try:
        return parse_record(found[0]), ""
    except SpfSyntaxError as exc:
        raise _PermError(f"{domain}: {exc}") from None


def _check(ip: IPAddress, domain: str, identity: Identity,
           budget: _Budget) -> Asks[tuple[SpfResult, str, str | None]]:
    record, why = yield from fetch_record(domain)
    if record is None:
        return "none", why, None
    context = _MacroContext(ip, domain, identity)
    for directive in record.directives:
        if (yield from _matches(directive, ip, context, budget)):
            return QUALIFIERS[directive.qualifier], f"{domain}: matched {directive.text}", directive.text
    if record.redirect is not None:
        budget.spend(f"redirect={record.redirect}")
        target = expand(record.redirect, context)
        result, reason, matched = yield from _check(ip, target, identity, budget)
        if result == "none":
            raise _PermError(f"redirect={target}: {reason}")
        return result, reason, matched
    return "neutral", f"{domain}: no term matched and there is no 'all'", None


def _matches(directive: Directive, ip: IPAddress, context: _MacroContext,
             budget: _Budget) -> Asks[bool]:
    mechanism = directive.mechanism
    if mechanism == "all":
        return True
    if mechanism in ("ip4", "ip6"):
        network = _ip_network(mechanism, directive.argument or "", directive.cidr4, None, directive.text)
        return ip.version == network.version and ip in network
    budget.spend(directive.text)
    target = expand(directive.argument, context) if directive.argument else context.domain
    if mechanism == "include":
        result, reason, _ = yield from _check(ip, target, context.identity, budget)
        if result in ("none", "permerror"):
            raise _PermError(f"include:{target}: {reason}")
        if result == "temperror":
            raise _TempError(reason)
        return result == "pass"
    if mechanism == "exists":
        answer = budget.count((yield Query(target, "A")), target)
        return bool(answer.records)
    if mechanism == "a":
        addresses = yield from _addresses(target, ip, budget, count_void=True)
        return _in_any(ip, addresses, directive)
    if mechanism == "mx":
        return (yield from _mx_matches(target, ip, directive, budget))
    return (yield from _ptr_matches(target, ip, budget))


def _addresses(name: str, ip: IPAddress, budget: _Budget, *, count_void: bool) -> Asks[tuple[str, ...]]:
    answer = yield Query(name, "A" if ip.version == 4 else "AAAA")
    if count_void:
        budget.count(answer, name)
    elif answer.failure is not None:
        raise _TempError(answer.failure)
    return answer.records


def _in_any(ip: IPAddress, addresses: Sequence[str], directive: Directive) -> bool:
    prefix = directive.cidr4 if ip.version == 4 else directive.cidr6
    for text in addresses:
        network = ipaddress.ip_network(f"{text}/{prefix if prefix is not None else ip.max_prefixlen}",
                                       strict=False)
        if ip in network:
            return True
    return False


def _mx_matches(target: str, ip: IPAddress, directive: Directive, budget: _Budget) -> Asks[bool]:
    answer = budget.count((yield Query(target, "MX")), target)
    exchanges = [mx_exchange(record) for record in answer.records]
    if len(exchanges) > MAX_NAMES_PER_TERM:
        raise _PermError(f"{directive.text}: {target} has {len(exchanges)} MX hosts (limit 10)")
    for exchange in exchanges:
        if exchange and _in_any(ip, (yield from _addresses(exchange, ip, budget, count_void=False)),
                                directive):
            return True
    return False


def _ptr_matches(target: str, ip: IPAddress, budget: _Budget) -> Asks[bool]:
    answer = budget.count((yield Query(ip.reverse_pointer, "PTR")), ip.reverse_pointer)
    for name in [r.rstrip(".").lower() for r in answer.records][:MAX_NAMES_PER_TERM]:
        if name == target or name.endswith("." + target):
            forward = yield from _addresses(name, ip, budget, count_void=False)
            if any(ipaddress.ip_address(a) == ip for a in forward):
                return True
    return False


# -- cost of the whole tree -------------------------------------------------------------------

MAX_WALK_DEPTH = 10


def lookup_cost(domain: str) -> Asks[LookupCost]:
    """Count lookup terms through every include and redirect, whichever IP is asking."""
    try:
        total, terms = yield from _walk(domain, [domain])
    except (_PermError, _TempError) as exc:
        return LookupCost(0, (), str(exc))
    return LookupCost(total, tuple(terms))


def _walk(domain: str, path: list[str]) -> Asks[tuple[int, list[tuple[str, int]]]]:
    record, _ = yield from fetch_record(domain)
    if record is None:
        return 0, []
    terms: list[tuple[str, int]] = []
    for directive in record.directives:
        if directive.mechanism in LOOKUP_MECHANISMS:
            cost = 1
            if directive.mechanism == "include" and directive.argument and "%" not in directive.argument:
                cost += (yield from _walk_into(directive.argument, path))
            terms.append((directive.text, cost))
    has_all = any(directive.mechanism == "all" for directive in record.directives)
    if record.redirect is not None and "%" not in record.redirect and not has_all:  # RFC 7208 6.1
        terms.append((f"redirect={record.redirect}", 1 + (yield from _walk_into(record.redirect, path))))
    return sum(cost for _, cost in terms), terms


def _walk_into(target: str, path: list[str]) -> Asks[int]:
    name = target.lower().rstrip(".")
    if name in path:
        raise _PermError(f"SPF loop: {' -> '.join([*path, name])}")
    if len(path) >= MAX_WALK_DEPTH:
        raise _PermError(f"includes nested deeper than {MAX_WALK_DEPTH} levels at {name}")
    total, _ = yield from _walk(name, [*path, name])
    return total
