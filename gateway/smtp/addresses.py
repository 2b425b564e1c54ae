"""Envelope address checks at MAIL and RCPT (pure, RFC 5321 4.5.3.1 lengths)."""

from __future__ import annotations

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
        ascii_domain = domain.rstrip(".").encode("idna").decode("ascii").lower()
        local_octets, path_octets = len(local.encode("utf-8")), len(address.encode("utf-8"))
    except UnicodeError:  # not IDNA-encodable, or undecodable bytes kept as surrogates
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
