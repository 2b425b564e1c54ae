"""A message's header section as a list of fields, and the edits the gateway makes (pure).

Fields keep their raw bytes (name, and the value after the colon with its folding and
final CRLF), so a field the gateway does not touch leaves exactly as it came in: DKIM
verifiers and the mailer's own signatures see the same bytes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from email.utils import getaddresses

import idna

Header = tuple[bytes, bytes]

_FIELD_NAME = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:")
_FOLD = re.compile(rb"\r\n(?=[ \t])")


class HeaderProblem(ValueError):
    """The header section cannot be relayed as it is; the text says why (for a 5xx reply)."""


def split_message(data: bytes) -> tuple[list[Header], bytes]:
    """Header fields and the body (what follows the empty line; b"" when there is none)."""
    return parse_fields(data[:header_length(data)]), data[body_offset(data):]


def header_length(data: bytes) -> int:
    """Octets in the header section, final CRLF included, without parsing it."""
    if data.startswith(b"\r\n"):
        return 0
    end = data.find(b"\r\n\r\n")
    return len(data) if end < 0 else end + 2


def body_offset(data: bytes) -> int:
    """Where the body starts: after the empty line, or at the end when there is none."""
    split = header_length(data)
    return split + 2 if data[split:split + 2] == b"\r\n" else len(data)


def parse_fields(block: bytes) -> list[Header]:
    """Fields in order; linear in the block's size (continuation lines are joined once)."""
    names: list[bytes] = []
    parts: list[list[bytes]] = []  # each field's value lines, CRLF-terminated
    lines = block.split(b"\r\n")
    if lines and lines[-1] == b"":
        lines.pop()
    for number, line in enumerate(lines, start=1):
        if line[:1] in (b" ", b"\t"):
            if not parts:
                raise HeaderProblem("the message starts with a folded (indented) line")
            parts[-1].append(line + b"\r\n")
            continue
        match = _FIELD_NAME.match(line)
        if match is None:
            raise HeaderProblem(f"header line {number} is not a header field (no name: before the text)")
        # The name keeps any blanks before the colon (obsolete syntax, RFC 5322 4.5) so that
        # the field leaves byte for byte as it came; comparisons use key().
        names.append(line[: match.end() - 1])
        parts.append([line[match.end():] + b"\r\n"])
    return [(name, b"".join(value)) for name, value in zip(names, parts, strict=True)]


def join_message(headers: Iterable[Header], body: bytes) -> bytes:
    return b"".join(name + b":" + value for name, value in headers) + b"\r\n" + body


def field(name: bytes, value: str | bytes) -> Header:
    """A new field with a single space after the colon."""
    raw = value.encode("utf-8") if isinstance(value, str) else value
    return name, b" " + raw + b"\r\n"


def key(name: bytes) -> bytes:
    """A field name as compared: case-insensitive, blanks before the colon ignored."""
    return name.rstrip(b" \t").lower()


def values(headers: Sequence[Header], name: bytes) -> list[str]:
    """Unfolded, stripped values of every field called ``name`` (case-insensitive)."""
    wanted = name.lower()
    return [unfold(value) for field_name, value in headers if key(field_name) == wanted]


def unfold(value: bytes) -> str:
    return _FOLD.sub(b"", value).decode("utf-8", "replace").strip()


def has(headers: Sequence[Header], name: bytes) -> bool:
    wanted = name.lower()
    return any(key(field_name) == wanted for field_name, _ in headers)


def without(headers: Sequence[Header], names: Iterable[bytes] = (),
            prefixes: Iterable[bytes] = ()) -> list[Header]:
    """The fields minus those named (case-insensitive) or starting with a prefix."""
    drop = {name.lower() for name in names}
    starts = tuple(prefix.lower() for prefix in prefixes)
    return [(name, value) for name, value in headers
            if key(name) not in drop and not (starts and key(name).startswith(starts))]


def author_domain(headers: Sequence[Header]) -> str:
    """The domain of the single From address, lower-cased, as an A-label for IDNs.

    DMARC aligns on this domain, so the gateway must know it without doubt: no From,
    several From fields or several addresses in one are refused (RFC 7489 6.6.1).
    """
    found = values(headers, b"from")
    if not found:
        raise HeaderProblem("no From header")
    if len(found) > 1:
        raise HeaderProblem("more than one From header")
    addresses = [address for _, address in getaddresses(found) if address]
    if len(addresses) != 1:
        raise HeaderProblem("the From header must hold exactly one address")
    local, at, domain = addresses[0].rpartition("@")
    if not at or not local or not domain:
        raise HeaderProblem("the From address has no domain")
    return a_label(domain)


def a_label(domain: str) -> str:
    domain = domain.strip().rstrip(".").lower()
    if domain.isascii():
        return domain
    try:  # IDNA 2008 with UTS 46 mapping, as DNS and DMARC use it (Python's codec is IDNA 2003)
        return idna.encode(domain, uts46=True).decode("ascii")
    except idna.IDNAError:
        raise HeaderProblem(f"the From domain {domain[:80]!a} is not a valid IDN") from None
