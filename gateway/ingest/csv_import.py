"""Rows of contact and suppression CSV files, checked (pure): values in, values out.

The command line (:mod:`gateway.cli.consent_cmd`) opens the files, streams them through
Python's ``csv`` module and writes what this module accepts; nothing here reads a file, a
clock or a database. The decisions:

- **Encoding.** Files must be UTF-8, with or without a byte order mark.
  :func:`first_non_utf8_line` scans a byte stream once, chunk by chunk (bounded memory),
  so that a file saved as Latin-1 or Windows-1252 is refused before anything is written.
- **Columns.** Header names match case-insensitively, surrounding blanks ignored. The address
  column is ``email`` or ``address`` (``email`` wins when both exist). Optional columns are
  named by the operator; a named column that is missing is an error, like a missing address
  column, and the message lists the columns found.
- **Line numbers** are the physical line on which a record starts (the header is line 1), as
  an editor shows them, also when a quoted field spans lines.
- **Addresses are never rewritten.** A row whose address fails the syntax check is
  rejected; a likely typo (``gmial.com``), a role account or a disposable domain is only a
  warning (:mod:`gateway.ingest.hygiene`), and the row is imported as written. The stored
  form is :func:`~gateway.ingest.addresses.normalize_recipient`'s (domain in lower-case
  A-labels), which is how the gate compares addresses.
- **Duplicates within a file**: the first accepted row for an address wins and later ones
  are rejected. "The same address" means the same lower-cased canonical address, which is
  what ``address_hash`` is computed from. :class:`Seen` keeps a 16-byte BLAKE2b digest per
  accepted address in a set, not the address: about 85 MB for a million distinct addresses,
  whatever their length. (Asking the database instead could not tell "earlier in this file"
  from "imported last month", and re-importing a file must be allowed.) A row that is
  rejected for another reason does not count, so a later valid row for that address is
  imported.
- **Times** are ISO 8601 (``2024-05-01``, ``2024-05-01T09:30:00Z``, ``...+02:00``); a time
  without an offset is taken as UTC. A consent time more than a day in the future is
  refused (it cannot be evidence of anything).
- **Double opt-in lists** need the proof of confirmation in each row (the proof column);
  other lists get the proof ``import of FILE line N`` when the row has none.
"""

from __future__ import annotations

import codecs
import functools
import hashlib
import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from gateway.config.units import KEY_RULE, is_key, parse_duration
from gateway.ingest import hygiene
from gateway.ingest.addresses import address_hash, address_key, normalize_recipient
from gateway.ingest.rules import DEFAULT_ROLE_LOCAL_PARTS, FREQUENCIES, SUPPRESSION_REASONS

ADDRESS_COLUMNS = ("email", "address")
SCOPES = ("global", "list", "campaign")
# BCP 47-ish: language, then subtags (de, de-CH, zh-Hans-CN, pt_BR as some tools write it).
LOCALE_PATTERN = re.compile(r"[A-Za-z]{2,8}(?:[-_][A-Za-z0-9]{1,8})*")
MAX_LOCALE = 35
MAX_PROOF = 10_000
HASH_PATTERN = re.compile(r"[0-9a-f]{64}")
FUTURE_SLACK = timedelta(days=1)


class ColumnError(ValueError):
    """A required or named column is not in the header."""


# -- encoding -------------------------------------------------------------------------------

def first_non_utf8_line(chunks: Iterable[bytes]) -> int | None:
    """The 1-based line holding the first byte sequence that is not UTF-8, or None.

    Reads the chunks once and keeps only the decoder's few pending bytes between them.
    A sequence cut off by the end of the input counts as bad, on the last line.
    """
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    lines_before = 0  # newlines in the bytes the decoder has fully consumed
    for chunk in chunks:
        pending = len(decoder.getstate()[0])  # an unfinished sequence: holds no newline
        try:
            decoder.decode(chunk)
        except UnicodeDecodeError as exc:
            return lines_before + chunk[:max(0, exc.start - pending)].count(b"\n") + 1
        lines_before += chunk.count(b"\n")
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return lines_before + 1
    return None


# -- columns ---------------------------------------------------------------------------------

def _normal(name: str) -> str:
    return name.strip().lstrip("\ufeff").strip().casefold()


def find_column(header: Sequence[str], name: str) -> int | None:
    wanted = _normal(name)
    return next((i for i, found in enumerate(header) if _normal(found) == wanted), None)


def _missing(header: Sequence[str], what: str) -> ColumnError:
    found = ", ".join(repr(name.strip()) for name in header) if header else "none (the file is empty)"
    return ColumnError(f"no column {what}; columns found: {found}")


def address_column(header: Sequence[str], *, required: bool = True) -> int | None:
    for name in ADDRESS_COLUMNS:
        index = find_column(header, name)
        if index is not None:
            return index
    if required:
        raise _missing(header, " or ".join(repr(n) for n in ADDRESS_COLUMNS))
    return None


def named_column(header: Sequence[str], name: str | None, option: str) -> int | None:
    """The index of the column an option names; None when the option was not given."""
    if name is None:
        return None
    index = find_column(header, name)
    if index is None:
        raise _missing(header, f"{name!r} (named by {option})")
    return index


@dataclass(frozen=True)
class ContactColumns:
    address: int
    width: int  # fields in the header
    proof: int | None = None
    ip: int | None = None
    time: int | None = None
    frequency: int | None = None
    locale: int | None = None


def contact_columns(header: Sequence[str], *, proof: str | None = None, ip: str | None = None,
                    time: str | None = None, frequency: str | None = None,
                    locale: str | None = None) -> ContactColumns:
    """Where each column is; raises :class:`ColumnError` naming a missing one."""
    address = address_column(header)
    assert address is not None
    return ContactColumns(
        address, len(header), named_column(header, proof, "--proof-column"),
        named_column(header, ip, "--ip-column"), named_column(header, time, "--time-column"),
        named_column(header, frequency, "--frequency-column"),
        named_column(header, locale, "--locale-column"))


# -- values ----------------------------------------------------------------------------------

def parse_time(text: str) -> datetime:
    """An ISO 8601 date or time as an aware UTC datetime; no offset means UTC."""
    value = text.strip()
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        try:
            parsed = datetime.combine(date.fromisoformat(value), datetime.min.time())
        except ValueError:
            raise ValueError(f"bad time {text!r}: expected ISO 8601, e.g. 2024-05-01T09:30:00Z") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def parse_frequency(text: str) -> str | None:
    value = text.strip().lower()
    if not value:
        return None
    if value not in FREQUENCIES:
        raise ValueError(f"bad frequency {text!r}: expected one of {', '.join(FREQUENCIES)}")
    return value


def _expiry_time(text: str, value: str, now: datetime) -> datetime:
    try:
        at = parse_time(value)
    except ValueError:
        raise ValueError(f"bad expiry {text!r}: expected a duration (30d, 12h) or an ISO 8601 time") from None
    if at <= now:  # an expiry in the past would lift the suppression (that is what remove is for)
        raise ValueError(f"bad expiry {text!r}: must be after now")
    return at


def parse_expiry(text: str, now: datetime) -> datetime | None:
    """An expiry written as a duration from now ("30d") or an ISO 8601 time; blank = never."""
    value = text.strip()
    if not value:
        return None
    try:
        seconds = parse_duration(value)
    except ValueError:
        return _expiry_time(text, value, now)
    if seconds <= 0:
        raise ValueError(f"bad expiry {text!r}: must be after now")
    return now + timedelta(seconds=seconds)


def _field(values: Sequence[str], index: int | None) -> str:
    if index is None or index >= len(values):
        return ""
    return values[index].strip()


# -- contact rows ------------------------------------------------------------------------------

@dataclass(frozen=True)
class ContactRow:
    """A row to import: consent ``confirmed`` for the list, with its evidence."""

    line: int
    address: str  # canonical form, as stored
    address_hash: str
    proof: str
    frequency: str | None = None
    at: datetime | None = None  # None: the time of the import
    ip: str | None = None
    locale: str | None = None
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Rejected:
    line: int
    reason: str


class Seen:
    """Addresses accepted so far in one file, as 16-byte digests (bounded per address)."""

    def __init__(self) -> None:
        self._digests: set[bytes] = set()

    def __len__(self) -> int:
        return len(self._digests)

    @staticmethod
    def digest(address: str) -> bytes:
        return hashlib.blake2b(address_key(address).encode("utf-8"), digest_size=16).digest()

    def __contains__(self, address: str) -> bool:
        return self.digest(address) in self._digests

    def add(self, address: str) -> None:
        self._digests.add(self.digest(address))


def check_contact(values: Sequence[str], line: int, columns: ContactColumns, *, seen: Seen,
                  double_opt_in: bool, file_name: str, now: datetime,
                  role_local_parts: frozenset[str] = DEFAULT_ROLE_LOCAL_PARTS) -> ContactRow | Rejected:
    """Accept or reject one data row; an accepted address is added to ``seen``."""
    if len(values) > columns.width:
        return Rejected(line, f"{len(values)} fields, the header has {columns.width}")
    written = _field(values, columns.address)
    if not written:
        return Rejected(line, "no address")
    address = normalize_recipient(written)
    if address is None:
        return Rejected(line, f"bad address syntax: {written!r}")
    try:
        frequency = parse_frequency(_field(values, columns.frequency))
        time_text = _field(values, columns.time)
        at = parse_time(time_text) if time_text else None
    except ValueError as exc:
        return Rejected(line, str(exc))
    if at is not None and at > now + FUTURE_SLACK:
        return Rejected(line, f"consent time {time_text} is in the future")
    ip = _field(values, columns.ip) or None
    if ip is not None:
        try:
            ip = str(ipaddress.ip_address(ip))
        except ValueError:
            return Rejected(line, f"bad IP address {ip!r}")
    locale = _field(values, columns.locale) or None
    if locale is not None and (len(locale) > MAX_LOCALE or not LOCALE_PATTERN.fullmatch(locale)):
        return Rejected(line, f"bad locale {locale!r}: expected e.g. de, de-CH, zh-Hans")
    proof = _field(values, columns.proof)
    if len(proof) > MAX_PROOF:
        return Rejected(line, f"proof longer than {MAX_PROOF} characters")
    if not proof:
        if double_opt_in:
            return Rejected(line, "the list requires double opt-in and the row has no proof")
        proof = f"import of {file_name} line {line}"
    if address in seen:
        return Rejected(line, "duplicate: an earlier row has this address")
    seen.add(address)
    return ContactRow(line, address, address_hash(address), proof, frequency, at, ip, locale,
                      hygiene_warnings(address, role_local_parts))


_likely_domain = functools.lru_cache(maxsize=4096)(hygiene.likely_domain)


def hygiene_warnings(address: str,
                     role_local_parts: frozenset[str] = DEFAULT_ROLE_LOCAL_PARTS) -> tuple[str, ...]:
    """:func:`hygiene.check`'s warnings, with its typo search cached per domain (most of a
    file's addresses share a few domains, and the search is most of the time per row)."""
    local, _, domain = address.rpartition("@")
    domain = domain.lower()
    if (_likely_domain(domain) is None and local.lower() not in role_local_parts
            and domain not in hygiene.DISPOSABLE_DOMAINS):
        return ()
    return hygiene.check(address, role_local_parts=role_local_parts).warnings


# -- suppression rows ---------------------------------------------------------------------------

SUPPRESSION_COLUMNS = ("address", "address_hash", "scope", "key", "reason", "expires", "note")


@dataclass(frozen=True)
class SuppressionColumns:
    width: int
    address: int | None
    address_hash: int | None
    scope: int | None
    key: int | None
    reason: int | None
    expires: int | None
    note: int | None


def suppression_columns(header: Sequence[str]) -> SuppressionColumns:
    """``address`` (or ``email``) or ``address_hash`` is required, the rest default."""
    address = address_column(header, required=False)
    hashed = find_column(header, "address_hash")
    if address is None and hashed is None:
        raise _missing(header, "'address', 'email' or 'address_hash'")
    return SuppressionColumns(len(header), address, hashed, find_column(header, "scope"),
                              find_column(header, "key"), find_column(header, "reason"),
                              find_column(header, "expires"), find_column(header, "note"))


@dataclass(frozen=True)
class SuppressionRow:
    line: int
    address: str | None  # None for a hashed row
    address_hash: str
    scope: str
    key: str
    reason: str
    expires_at: datetime | None
    note: str | None


def check_scope(scope: str, key: str) -> str | None:
    """Why a scope and key do not fit together, or None."""
    if scope not in SCOPES:
        return f"bad scope {scope!r}: expected one of {', '.join(SCOPES)}"
    if scope == "global":
        return "a global suppression takes no key" if key else None
    if not key:
        return f"scope {scope} needs a key (the {scope}'s key)"
    return None if is_key(key) else f"bad key {key!r}: {KEY_RULE}"


def check_reason(reason: str) -> str | None:
    if reason in SUPPRESSION_REASONS:
        return None
    return f"bad reason {reason!r}: expected one of {', '.join(SUPPRESSION_REASONS)}"


def parse_target(text: str) -> tuple[str | None, str] | None:
    """(address or None, hash) for an address or a 64-hex address hash; None when neither."""
    value = text.strip()
    if HASH_PATTERN.fullmatch(value.lower()):
        return None, value.lower()
    address = normalize_recipient(value)
    return None if address is None else (address, address_hash(address))


def check_suppression(values: Sequence[str], line: int, columns: SuppressionColumns, *,
                      now: datetime) -> SuppressionRow | Rejected:
    if len(values) > columns.width:
        return Rejected(line, f"{len(values)} fields, the header has {columns.width}")
    written, hashed = _field(values, columns.address), _field(values, columns.address_hash).lower()
    if written:
        address = normalize_recipient(written)
        if address is None:
            return Rejected(line, f"bad address syntax: {written!r}")
        digest = address_hash(address)
        if hashed and hashed != digest:
            return Rejected(line, "address_hash does not match the address")
    elif hashed:
        if not HASH_PATTERN.fullmatch(hashed):
            return Rejected(line, "bad address_hash: expected 64 hex digits "
                                  "(SHA-256 of the lower-cased address)")
        address, digest = None, hashed
    else:
        return Rejected(line, "no address and no address_hash")
    scope = _field(values, columns.scope).lower() or "global"
    key = _field(values, columns.key)
    reason = _field(values, columns.reason).lower() or "import"
    problem = check_scope(scope, key) or check_reason(reason)
    if problem:
        return Rejected(line, problem)
    try:
        expires_at = parse_expiry(_field(values, columns.expires), now)
    except ValueError as exc:
        return Rejected(line, str(exc))
    note = _field(values, columns.note) or None
    return SuppressionRow(line, address, digest, scope, key, reason, expires_at, note)


def reject_record(values: Sequence[str], width: int, rejected: Rejected) -> list[str]:
    """The original fields (fitted to the header's width), then ``line`` and ``reason``."""
    fitted = list(values[:width]) + [""] * max(0, width - len(values))
    return [*fitted, str(rejected.line), rejected.reason]


def parse_assignments(items: Iterable[str], what: str) -> dict[str, str]:
    """``NAME=VALUE`` pairs from repeated options; a NAME given twice is an error."""
    found: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name or not value.strip():
            raise ValueError(f"bad {what} {item!r}: expected NAME=VALUE")
        if name in found:
            raise ValueError(f"{what} {name} given twice")
        found[name] = value.strip()
    return found


def localized(items: Iterable[str], what: str) -> dict[str, str]:
    """Texts per locale from ``--name Offers --name de=Angebote``: "" holds the default.

    ``LOCALE=TEXT`` is read as localized when LOCALE looks like a locale (``de``,
    ``zh-Hans``); ``=TEXT`` forces the default, for a text that starts like one.
    """
    found: dict[str, str] = {}
    for item in items:
        head, sep, tail = item.partition("=")
        if sep and (head == "" or (LOCALE_PATTERN.fullmatch(head) and head[:1].islower())):
            locale, text = head, tail.strip()
        else:
            locale, text = "", item.strip()
        if not text:
            raise ValueError(f"empty {what} in {item!r}")
        if locale in found:
            raise ValueError(f"{what} for {locale or 'the default locale'} given twice")
        found[locale] = text
    return found


def describe_localized(texts: Mapping[str, str]) -> str:
    return ", ".join(text if not locale else f"{locale}={text}" for locale, text in sorted(texts.items()))
