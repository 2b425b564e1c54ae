"""Addresses as the gateway compares them (pure): syntax (RFC 5321 4.5.3.1 lengths),
IDNA 2008 domains, and the key under which suppressions and consents are found."""

from __future__ import annotations

import hashlib

import idna

from gateway.config.units import is_hostname

MAX_LOCAL_PART = 64
MAX_DOMAIN = 255
MAX_PATH = 254


def split_address(address: str) -> tuple[str, str] | None:
    """(local part, A-label domain) of a deliverable mailbox, or None when malformed."""
    local, sep, domain = address.rpartition("@")
    if not sep or not local or not domain:
        return None
    try:
        ascii_domain = _a_label(domain.rstrip("."))
        local_octets, path_octets = len(local.encode("utf-8")), len(address.encode("utf-8"))
    except (UnicodeError, idna.IDNAError):  # not an IDN, or undecodable bytes kept as surrogates
        return None
    if local_octets > MAX_LOCAL_PART or len(ascii_domain) > MAX_DOMAIN:
        return None
    if path_octets > MAX_PATH or "." not in ascii_domain:
        return None
    if not is_hostname(ascii_domain) or any(ch.isspace() or ord(ch) < 32 for ch in local):
        return None
    return local, ascii_domain


def normalize_recipient(address: str) -> str | None:
    """The address as it will be stored: local part as sent, domain in lower-case A-labels."""
    parts = split_address(address)
    return None if parts is None else f"{parts[0]}@{parts[1]}"


def _a_label(domain: str) -> str:
    if domain.isascii():
        return domain.lower()
    return idna.encode(domain, uts46=True).decode("ascii")  # IDNA 2008, as DNS uses it


def address_key(address: str) -> str:
    """The form suppressions and consents are matched on: the stored address, lower-cased.

    Local parts are case-sensitive in theory (RFC 5321 2.4) but no mailbox provider
    treats them so, and a suppression must not be dodged by writing Alice for alice.
    """
    return address.lower()


def address_hash(address: str) -> str:
    """SHA-256 hex of :func:`address_key`: how a suppression list can be shared or kept
    without the address itself (the common format of hashed suppression exports)."""
    return hashlib.sha256(address_key(address).encode("utf-8")).hexdigest()
