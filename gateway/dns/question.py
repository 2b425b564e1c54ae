"""DNS questions and answers as plain values, so checks can be written without sockets.

A check is a generator that yields :class:`Query` values and receives an :class:`Answer` for
each one (``Asks[T]``). The live driver in ``gateway.dns.dnscheck`` answers them with
dnspython; tests answer them from a dictionary with :func:`answer_from`. The checks
themselves never know which.

Record texts are normalized by whoever answers: TXT records are the concatenation of their
character-strings (RFC 7208 3.3, RFC 6376 3.6.2.2), names are lower case without the final
dot, MX records are "PREFERENCE EXCHANGE", addresses are in canonical form.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Query:
    name: str
    rdtype: str  # "TXT", "A", "AAAA", "MX", "PTR"


@dataclass(frozen=True)
class Answer:
    """``failure`` is set when DNS gave no usable answer (timeout, SERVFAIL): not a "no"."""

    records: tuple[str, ...] = ()
    nxdomain: bool = False
    failure: str | None = None

    @property
    def void(self) -> bool:
        """NXDOMAIN or an empty answer (RFC 7208 4.6.4 calls both "void lookups")."""
        return self.failure is None and not self.records


Asks = Generator[Query, Answer, T]


def mx_exchange(record: str) -> str:
    """The host of an MX record text ("10 mx.example.net."), "" for a null MX ("0 .")."""
    parts = record.split()
    return parts[-1].rstrip(".").lower() if len(parts) == 2 else ""


def answer_from(check: Asks[T], table: Mapping[Query, Answer]) -> T:
    """Run a check against fixed answers; questions missing from ``table`` get NXDOMAIN."""
    try:
        query = next(check)
        while True:
            query = check.send(table.get(query, Answer(nxdomain=True)))
    except StopIteration as done:
        result: T = done.value
        return result
