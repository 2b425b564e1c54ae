"""Address hygiene for imports and the API (pure): warnings and flags, never rewrites.

A likely typo (``gmial.com``) is reported with a suggestion, because the person may
really use that domain and only they can say; role and disposable addresses are flagged
so that an operator can decide. Nothing here changes an address.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.ingest.rules import DEFAULT_ROLE_LOCAL_PARTS

# Domains people mistype most; a misspelling within one edit of one of them is suggested.
COMMON_DOMAINS = (
    "gmail.com", "googlemail.com", "yahoo.com", "yahoo.co.uk", "yahoo.fr", "yahoo.de", "ymail.com",
    "hotmail.com", "hotmail.co.uk", "hotmail.fr", "outlook.com", "live.com", "msn.com", "icloud.com",
    "me.com", "mac.com", "aol.com", "gmx.de", "gmx.net", "web.de", "t-online.de", "mail.ru", "yandex.ru",
    "qq.com", "163.com", "126.com", "sina.com", "orange.fr", "free.fr", "comcast.net", "proton.me",
    "protonmail.com",
    # Real providers one edit away from another entry: listed so that they are never "corrected"
    # (mail.com and email.com are one edit from gmail.com).
    "mail.com", "email.com", "gmx.com", "gmx.at", "mail.de", "live.de", "live.fr", "hotmail.de",
    "hotmail.es", "hotmail.it", "yahoo.es", "yahoo.it", "outlook.de", "aim.com", "zoho.com",
    "fastmail.com", "posteo.de",
)
# A small built-in list of throwaway-address services; operators extend it in config.
DISPOSABLE_DOMAINS = frozenset({
    "mailinator.com", "guerrillamail.com", "10minutemail.com", "tempmail.com", "temp-mail.org",
    "yopmail.com", "trashmail.com", "sharklasers.com", "getnada.com", "dispostable.com",
    "maildrop.cc", "throwawaymail.com", "fakeinbox.com", "mintemail.com",
})


@dataclass(frozen=True)
class Hygiene:
    """What an address looks like; ``warnings`` are for people, the flags for filters."""

    suggestion: str | None = None  # the address with the likely intended domain
    role: bool = False
    disposable: bool = False
    warnings: tuple[str, ...] = field(default=())


def check(address: str, *, role_local_parts: frozenset[str] = DEFAULT_ROLE_LOCAL_PARTS,
          disposable: frozenset[str] = DISPOSABLE_DOMAINS) -> Hygiene:
    local, _, domain = address.rpartition("@")
    domain = domain.lower()
    warnings: list[str] = []
    intended = likely_domain(domain)
    suggestion = f"{local}@{intended}" if intended else None
    if suggestion:
        warnings.append(f"domain {domain} looks like a typo of {intended} (did you mean {suggestion}?)")
    role = local.lower() in role_local_parts
    if role:
        warnings.append(f"{local}@ is a role account (a group or a function, not a person)")
    throwaway = domain in disposable
    if throwaway:
        warnings.append(f"{domain} hands out disposable addresses")
    return Hygiene(suggestion, role, throwaway, tuple(warnings))


def likely_domain(domain: str) -> str | None:
    """The common domain ``domain`` is one edit (or one swap) away from, if any."""
    if domain in COMMON_DOMAINS:
        return None
    for known in COMMON_DOMAINS:
        if _one_edit_apart(domain, known):
            return known
    return None


def _one_edit_apart(a: str, b: str) -> bool:
    """One insertion, deletion, substitution or swap of neighbours (Damerau, distance 1)."""
    if abs(len(a) - len(b)) > 1 or a == b:
        return False
    if len(a) == len(b):
        diffs = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
        if len(diffs) == 1:
            return True
        return (len(diffs) == 2 and diffs[1] == diffs[0] + 1
                and a[diffs[0]] == b[diffs[1]] and a[diffs[1]] == b[diffs[0]])
    shorter, longer = (a, b) if len(a) < len(b) else (b, a)
    return any(longer[:i] + longer[i + 1:] == shorter for i in range(len(longer)))
