"""Which provider receives a domain's mail: MX host suffix first, recipient domain second.

MX matching is what rolls every Google Workspace or Microsoft 365 domain up to its provider:
``example.org`` with ``MX aspmx.l.google.com`` is Google's mail whatever the domain. The
recipient domain is the fallback for when MX hosts are unknown or match nothing (a provider
that hosts its own MX under an unlisted name). The longest matching suffix wins, so a
specific profile beats a broad one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

DEFAULT = "default"


def _suffix_match(name: str, suffix: str) -> bool:
    name, suffix = name.lower().rstrip("."), suffix.lower().rstrip(".").lstrip(".")
    return name == suffix or name.endswith("." + suffix)


@dataclass(frozen=True)
class ProviderMatcher:
    """``mx`` and ``domains``: provider name -> suffixes (a suffix matches itself and below)."""

    mx: Mapping[str, Sequence[str]]
    domains: Mapping[str, Sequence[str]]

    def match(self, domain: str, mx_hosts: Iterable[str] = ()) -> str:
        for host in mx_hosts:
            found = _longest(self.mx, host)
            if found is not None:
                return found
        return _longest(self.domains, domain) or DEFAULT

    def reason(self, domain: str, mx_hosts: Iterable[str] = ()) -> str:
        """A human explanation of ``match`` for `gateway policy test`."""
        for host in mx_hosts:
            found = _longest(self.mx, host)
            if found is not None:
                return f"MX host {host} matches provider {found}"
        found = _longest(self.domains, domain)
        if found is not None:
            return f"recipient domain {domain} matches provider {found}"
        return "no MX host or domain suffix matches: default profile"


def _longest(table: Mapping[str, Sequence[str]], name: str) -> str | None:
    best: tuple[int, str] | None = None
    for provider, suffixes in table.items():
        for suffix in suffixes:
            if _suffix_match(name, suffix) and (best is None or len(suffix) > best[0]):
                best = (len(suffix), provider)
    return best[1] if best else None
