"""Which keys sign a message, chosen by its From domain (DMARC alignment).

A configured domain signs mail from itself; with ``subdomains = true`` it also signs
mail from any name below it (d=example.com for From: news.example.com, which DMARC's
relaxed alignment accepts). A domain may have several selectors: the ones with
``sign = true`` sign (at most one per algorithm, so RSA + Ed25519 is dual signing),
the others are published and waiting (rotation) or retired.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from gateway.config.schema import SendingDomain
from gateway.signing.keys import KeyProblem, SigningKey, load_private_key


@dataclass(frozen=True)
class DomainKeys:
    domain: str
    keys: tuple[SigningKey, ...]
    subdomains: bool = False


class KeyRing:
    def __init__(self, domains: Iterable[DomainKeys]) -> None:
        self._domains: Mapping[str, DomainKeys] = {entry.domain: entry for entry in domains}

    @classmethod
    def load(cls, domains: Sequence[SendingDomain]) -> KeyRing:
        """Read every signing key file; all problems reported together (KeyProblem)."""
        problems: list[str] = []
        loaded: list[DomainKeys] = []
        for domain in domains:
            keys: list[SigningKey] = []
            for entry in domain.dkim:
                if not entry.sign:
                    continue
                where = f"domain {domain.name}, selector {entry.selector}"
                if not entry.key_file.exists():
                    problems.append(f"{where}: {entry.key_file}: file not found; create it with "
                                    f"`gateway dkim keygen {domain.name} --selector {entry.selector} "
                                    f"--algorithm {entry.algorithm} --key-file {entry.key_file}`")
                    continue
                try:
                    private = load_private_key(entry.key_file, entry.algorithm)
                except KeyProblem as exc:
                    problems.append(f"{where}: {exc}")
                    continue
                keys.append(SigningKey(domain.name, entry.selector, private))
            loaded.append(DomainKeys(domain.name, tuple(keys), domain.subdomains))
        if problems:
            raise KeyProblem("\n".join(problems))
        return cls(loaded)

    def keys_for(self, author_domain: str) -> tuple[SigningKey, ...]:
        """The keys aligned with ``author_domain``; empty when none is configured.

        A domain listed without a signing key does not hide a parent that signs for its
        subdomains."""
        exact = self._domains.get(author_domain)
        if exact is not None and exact.keys:
            return exact.keys
        labels = author_domain.split(".")
        for start in range(1, len(labels) - 1):
            parent = self._domains.get(".".join(labels[start:]))
            if parent is not None and parent.subdomains and parent.keys:
                return parent.keys
        return ()

    def describe(self) -> list[str]:
        """One line per signing domain, for the start-up log."""
        return [f"{entry.domain}{' and subdomains' if entry.subdomains else ''}: "
                + ", ".join(f"{key.selector} ({key.algorithm})" for key in entry.keys)
                for entry in self._domains.values() if entry.keys]
