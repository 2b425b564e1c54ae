"""Tokens in unsubscribe links and VERP return paths (pure).

A token names a delivery (one recipient's copy of one message) and proves that the
gateway issued it:

    token = base32(key_id:1 | masked_id:8 | mac:16), lower case, no padding (40 characters)
    mac   = HMAC-SHA256(secret[key_id], purpose | delivery_id | recipient | list | campaign)[:16]
    masked_id = delivery_id XOR (HMAC-SHA256(secret[key_id], "delivery-id" | mac)[:8] & 2^63-1)

It holds no address, and the mask hides even the delivery number (sequential ids would
tell anyone how much mail the sender sends). Whoever changes a bit of it, or guesses one,
gets a MAC that does not match. The MAC binds the purpose, so a VERP
token seen in a Return-Path cannot be replayed as an unsubscribe token. The key id
lets keys rotate: new tokens use the current key, old ones verify while their key is
still configured. Base32 in lower case survives MTAs that change the case of local
parts, and 40 characters leave room in the 64-octet local part ("unsubscribe+" + 40).

Checking a token needs the delivery's recipient, list and campaign: the caller parses it
(:meth:`TokenCodec.parse`), looks the delivery up by :attr:`TokenParts.delivery_id` and
passes them to :meth:`TokenCodec.verify`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

MAC_BYTES = 16
TOKEN_LENGTH = 40
MIN_SECRET_BYTES = 32
MAX_DELIVERY_ID = (1 << 63) - 1  # a signed 64-bit column holds it on SQLite and PostgreSQL
_TOKEN = re.compile(rf"[a-zA-Z2-7]{{{TOKEN_LENGTH}}}")


# Local parts at the bounce domain that carry a token (rewrite/copies.py writes them,
# gateway/feedback/ reads them back).
VERP_PREFIX = "b+"
UNSUBSCRIBE_PREFIX = "unsubscribe+"

class Purpose(StrEnum):
    UNSUBSCRIBE = "unsubscribe"
    VERP = "verp"
    CONFIRM = "confirm"  # double opt-in: the number is a contact id, the binding its address and list
    FORM = "form"  # CSRF token of a public page form: the number is its issue time (Unix seconds)


@dataclass(frozen=True)
class Binding:
    """What a token is bound to besides its delivery."""

    recipient: str
    list_key: str = ""
    campaign: str = ""


@dataclass(frozen=True)
class TokenParts:
    key_id: int
    delivery_id: int
    mac: bytes


class BadToken(ValueError):
    """Not a token this gateway could have issued (wrong length, alphabet, key or MAC)."""


class TokenCodec:
    def __init__(self, secrets: Mapping[int, bytes], current: int) -> None:
        if current not in secrets:
            raise ValueError(f"token key {current} is not among the configured keys")
        for key_id, secret in secrets.items():
            if not 0 <= key_id <= 255:
                raise ValueError(f"token key id {key_id} must be 0..255")
            if len(secret) < MIN_SECRET_BYTES:
                raise ValueError(f"token key {key_id} is {len(secret)} bytes; "
                                 f"use at least {MIN_SECRET_BYTES}")
        self._secrets = dict(secrets)
        self.current = current

    def issue(self, purpose: Purpose, delivery_id: int, binding: Binding) -> str:
        if not 0 <= delivery_id <= MAX_DELIVERY_ID:
            raise ValueError(f"delivery id {delivery_id} does not fit in 63 bits")
        mac = self._mac(self.current, purpose, delivery_id, binding)
        masked = delivery_id ^ self._id_mask(self.current, mac)
        raw = struct.pack(">BQ", self.current, masked) + mac
        return base64.b32encode(raw).decode("ascii").lower()

    def parse(self, token: str) -> TokenParts:
        """The parts of a well-formed token under a known key, before the MAC check
        (raises BadToken)."""
        if not _TOKEN.fullmatch(token):
            raise BadToken(f"not {TOKEN_LENGTH} base32 characters")
        try:
            raw = base64.b32decode(token.upper())
        except (binascii.Error, ValueError):
            raise BadToken("not base32") from None
        key_id, masked = struct.unpack(">BQ", raw[:9])
        if key_id not in self._secrets:
            raise BadToken("unknown key")
        if masked > MAX_DELIVERY_ID:  # never issued: ids are 63-bit, like the database's BIGINT
            raise BadToken("delivery id out of range")
        mac = raw[9:]
        return TokenParts(key_id, masked ^ self._id_mask(key_id, mac), mac)

    def _id_mask(self, key_id: int, mac: bytes) -> int:
        digest = hmac.new(self._secrets[key_id], b"delivery-id\x00" + mac, hashlib.sha256).digest()
        return int.from_bytes(digest[:8], "big") & MAX_DELIVERY_ID

    def verify(self, parts: TokenParts, purpose: Purpose, binding: Binding) -> None:
        """Raise BadToken unless ``parts`` were issued for this purpose and binding."""
        if parts.key_id not in self._secrets:
            raise BadToken("unknown key")
        expected = self._mac(parts.key_id, purpose, parts.delivery_id, binding)
        if not hmac.compare_digest(expected, parts.mac):
            raise BadToken("MAC does not match")

    def _mac(self, key_id: int, purpose: Purpose, delivery_id: int, binding: Binding) -> bytes:
        message = b"\x00".join([
            purpose.value.encode(), str(delivery_id).encode(), binding.recipient.encode("utf-8"),
            binding.list_key.encode("utf-8"), binding.campaign.encode("utf-8")])
        return hmac.new(self._secrets[key_id], message, hashlib.sha256).digest()[:MAC_BYTES]
