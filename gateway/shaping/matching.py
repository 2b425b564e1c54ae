"""Which provider receives a domain's mail: MX host suffix first, recipient domain second.

MX matching is what rolls every Google Workspace or Microsoft 365 domain up to its provider:
``example.org`` with ``MX aspmx.l.google.com`` is Google's mail whatever the domain. The
recipient domain is the fallback for when MX hosts are unknown or match nothing (a provider
that hosts its own MX under an unlisted name). The longest matching suffix wins, so a
specific profile beats a broad one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

DEFAULT = "default"


def _normal(name: str) -> str:
    return name.lower().rstrip(".").lstrip(".")


def _suffix_map(table: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """suffix -> provider; when two profiles list the same suffix the first one listed keeps it."""
    found: dict[str, str] = {}
    for provider, suffixes in table.items():
        for suffix in suffixes:
            found.setdefault(_normal(suffix), provider)
    return found


@dataclass(frozen=True)
class ProviderMatcher:
    """``mx`` and ``domains``: provider name -> suffixes (a suffix matches itself and below).

    The suffix lists are turned into dictionaries once, so matching a name costs one lookup
    per label of the name, whatever the number of profiles (it runs for every delivery)."""

    mx: Mapping[str, Sequence[str]]
    domains: Mapping[str, Sequence[str]]
    _mx: dict[str, str] = field(init=False, repr=False, compare=False)
    _domains: dict[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_mx", _suffix_map(self.mx))
        object.__setattr__(self, "_domains", _suffix_map(self.domains))

    def match(self, domain: str, mx_hosts: Iterable[str] = ()) -> str:
        for host in mx_hosts:
            found = _longest(self._mx, host)
            if found is not None:
                return found
        return _longest(self._domains, domain) or DEFAULT

    def reason(self, domain: str, mx_hosts: Iterable[str] = ()) -> str:
        """A human explanation of ``match`` for `gateway policy test` (not built per delivery)."""
        for host in mx_hosts:
            found = _longest(self._mx, host)
            if found is not None:
                return f"MX host {host} matches provider {found}"
        found = _longest(self._domains, domain)
        if found is not None:
            return f"recipient domain {domain} matches provider {found}"
        return "no MX host or domain suffix matches: default profile"


def _longest(table: Mapping[str, str], name: str) -> str | None:
    """The provider of the longest suffix of ``name`` in ``table``: the name itself first,
    then without its first label, and so on."""
    labels = _normal(name).split(".")
    for start in range(len(labels)):
        found = table.get(".".join(labels[start:]))
        if found is not None:
            return found
    return None
