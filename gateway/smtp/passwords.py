"""SMTP account passwords: scrypt hashes and a short-lived verification cache.

scrypt is deliberately slow (~50 ms). Mailers that open a new connection per
message would spend a core on it, so a successful check is remembered for a few
minutes under a keyed digest of (hash, password); the cache never holds the
password itself and is lost on restart.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections import OrderedDict

SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
_MAXMEM = 64 * 1024 * 1024


class BadHash(ValueError):
    """A password_hash in the config is not of the form scrypt$N$r$p$salt$hash."""


def hash_password(password: str, *, n: int = SCRYPT_N) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=SCRYPT_R, p=SCRYPT_P,
                            maxmem=_MAXMEM, dklen=32)
    return "$".join(["scrypt", str(n), str(SCRYPT_R), str(SCRYPT_P), _b64(salt), _b64(digest)])


def verify_password(password: str | bytes, encoded: str) -> bool:
    n, r, p, salt, expected = parse_hash(encoded)
    secret = password if isinstance(password, bytes) else password.encode("utf-8")
    digest = hashlib.scrypt(secret, salt=salt, n=n, r=r, p=p, maxmem=_MAXMEM, dklen=len(expected))
    return hmac.compare_digest(digest, expected)


def parse_hash(encoded: str) -> tuple[int, int, int, bytes, bytes]:
    parts = encoded.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        raise BadHash("expected scrypt$N$r$p$salt$hash")
    try:
        n, r, p = (int(x) for x in parts[1:4])
        salt, digest = _unb64(parts[4]), _unb64(parts[5])
    except ValueError:
        raise BadHash("scrypt hash has a non-numeric parameter or bad base64") from None
    if n < 2 or n & (n - 1) or r < 1 or p < 1 or not salt or len(digest) < 16:
        raise BadHash("scrypt hash parameters out of range")
    return n, r, p, salt, digest


class VerifiedCache:
    """Remembers recent successful verifications, bounded in size and age."""

    def __init__(self, ttl: float = 300.0, size: int = 1024) -> None:
        self._key = secrets.token_bytes(32)
        self._ttl = ttl
        self._size = size
        self._entries: OrderedDict[bytes, float] = OrderedDict()

    def _digest(self, encoded: str, password: bytes) -> bytes:
        return hmac.new(self._key, encoded.encode() + b"\0" + password, "sha256").digest()

    def known(self, encoded: str, password: bytes, now: float) -> bool:
        key = self._digest(encoded, password)
        expires = self._entries.get(key)
        if expires is None or expires < now:
            self._entries.pop(key, None)
            return False
        return True

    def remember(self, encoded: str, password: bytes, now: float) -> None:
        key = self._digest(encoded, password)
        self._entries[key] = now + self._ttl
        self._entries.move_to_end(key)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
