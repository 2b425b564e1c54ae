"""Exceptions raised while routing mail through DNS.

The split between permanent and temporary failures is what the delivery code acts on:

* :class:`PermanentDnsError` - the recipient domain can never receive mail as published
  (bounce the recipient now, hard).
* :class:`TemporaryDnsError` - DNS could not give a usable answer right now (defer and retry).

Every error carries ``domain`` (A-label form when it could be computed) and ``reason``, a short
sentence meant for delivery logs and bounce events; ``str(error)`` is the reason.

Hierarchy::

    DnsError
    +-- PermanentDnsError
    |   +-- NoSuchDomain     NXDOMAIN for the recipient domain
    |   +-- NullMx           RFC 7505 null MX ("MX 0 .")
    |   +-- NoMailHost       no MX and no A/AAAA for the domain itself
    |   +-- InvalidDomain    not a valid host name / IDN (cannot even be asked)
    +-- TemporaryDnsError    SERVFAIL, timeout, no nameserver, MX hosts without addresses
"""

from __future__ import annotations


class DnsError(Exception):
    """Base class, so callers can catch every routing failure in one clause."""

    default_reason = "DNS lookup for {domain} failed"

    def __init__(self, domain: str, reason: str | None = None) -> None:
        # Both values go to Exception.args so the error survives pickling between processes.
        text = reason if reason is not None else self.default_reason.format(domain=domain)
        super().__init__(domain, text)
        self.domain = domain
        self.reason = text

    def __str__(self) -> str:
        return self.reason


class PermanentDnsError(DnsError):
    """Retrying cannot help: the recipient should be bounced."""

    default_reason = "domain {domain} cannot receive mail"


class NoSuchDomain(PermanentDnsError):
    """The recipient domain does not exist (NXDOMAIN)."""

    default_reason = "domain {domain} does not exist (NXDOMAIN)"


class NullMx(PermanentDnsError):
    """The domain publishes a null MX (RFC 7505): it explicitly accepts no mail."""

    default_reason = "domain {domain} accepts no mail (null MX, RFC 7505)"


class NoMailHost(PermanentDnsError):
    """The domain exists but has neither MX nor A/AAAA records (RFC 5321 5.1)."""

    default_reason = "domain {domain} has no MX and no A/AAAA records"


class InvalidDomain(PermanentDnsError):
    """The domain is not a valid host name or internationalized domain name."""

    default_reason = "{domain!r} is not a valid mail domain"


class TemporaryDnsError(DnsError):
    """DNS gave no usable answer this time; the delivery should be deferred."""

    default_reason = "temporary DNS failure for {domain}"
