"""The secrets behind unsubscribe and VERP tokens, read from files like DKIM keys.

With no keys configured the gateway makes its own on first start (``tokens.
default_secret_file``), so a single node works without setup. Several nodes sharing one
database must share the keys; they list them in ``[[tokens.keys]]``.
"""

from __future__ import annotations

import logging
import re
import secrets
from pathlib import Path

from gateway.config.schema import TokenSettings
from gateway.rewrite.tokens import MIN_SECRET_BYTES, TokenCodec
from gateway.signing.keys import KeyProblem, check_private_file, write_private_file

log = logging.getLogger(__name__)
DEFAULT_KEY_ID = 1


def read_secret(path: Path) -> bytes:
    secret = check_private_file(path).strip()
    if len(secret) < MIN_SECRET_BYTES:
        raise KeyProblem(f"{path}: a token secret needs at least {MIN_SECRET_BYTES} bytes "
                         f"(try `head -c 32 /dev/urandom | base64 > {path}`)")
    return secret


def token_codec(settings: TokenSettings, *, create: bool = True) -> TokenCodec:
    """The codec for the configured keys; ``create`` makes the default secret if missing."""
    if settings.keys:
        found = {key.id: read_secret(key.secret_file) for key in settings.keys}
        current = settings.current if settings.current is not None else max(found)
        return TokenCodec(found, current)
    path = settings.default_secret_file
    if create and not path.exists():
        write_private_file(path, secrets.token_urlsafe(32).encode("ascii") + b"\n")
        log.warning("created token secret %s; nodes sharing a database must share it "
                    "(configure [[tokens.keys]])", path)
    return TokenCodec({DEFAULT_KEY_ID: read_secret(path)}, DEFAULT_KEY_ID)


MIN_API_TOKEN_CHARS = 32
_BEARER_TOKEN = re.compile(r"[A-Za-z0-9._~+/-]+=*")  # RFC 6750 b64token


def read_api_token(path: Path) -> str:
    """The bearer token in ``path``: owner-only file, 32+ characters of RFC 6750 token text."""
    raw = check_private_file(path).strip()
    try:
        token = raw.decode("ascii")
    except UnicodeDecodeError:
        raise KeyProblem(f"{path}: the admin API token must be ASCII text") from None
    if len(token) < MIN_API_TOKEN_CHARS:
        raise KeyProblem(f"{path}: the admin API token needs at least {MIN_API_TOKEN_CHARS} characters "
                         f"(try `head -c 32 /dev/urandom | base64 > {path}`)")
    if not _BEARER_TOKEN.fullmatch(token):
        raise KeyProblem(f"{path}: the admin API token may hold only letters, digits and -._~+/ "
                         "(with = at the end)")
    return token
