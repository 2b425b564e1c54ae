"""DKIM private keys on disk: generate, load with safety checks, publish as DNS TXT.

Keys are PKCS#8 PEM files readable by their owner only. A key that anyone else can
read is refused at start-up instead of used: a leaked signing key lets anyone send
mail that passes DMARC for the domain, and rotating it means a DNS change.
"""

from __future__ import annotations

import base64
import errno
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

Algorithm = Literal["rsa", "ed25519"]
PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

MIN_RSA_BITS = 2048  # RFC 8301: 1024-bit keys are no longer acceptable; receivers reject them
MAX_RSA_BITS = 4096  # larger keys do not fit a DNS TXT record comfortably and verify slowly
DEFAULT_RSA_BITS = 2048
TXT_STRING_LIMIT = 255  # octets per character-string in a TXT record (RFC 1035 3.3.14)


class KeyProblem(ValueError):
    """A key or secret file cannot be used; the message names the file and the fix."""


def check_private_file(path: Path) -> bytes:
    """Read a secret file that only the gateway's user can read or change.

    Group or other access of any kind is refused: whoever can write a token secret or a
    key can forge unsubscribe links or make the gateway sign with a key they know. The
    checks and the read use one descriptor, opened without following a symbolic link,
    so the file cannot be swapped between them.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise KeyProblem(f"{path}: file not found") from None
    except PermissionError:
        raise KeyProblem(f"{path}: permission denied (the gateway's user must own it)") from None
    except OSError as exc:
        reason = "a symbolic link (give the real path)" if exc.errno == errno.ELOOP else exc.strerror
        raise KeyProblem(f"{path}: cannot open: {reason}") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise KeyProblem(f"{path}: not a regular file")
        if info.st_uid != os.geteuid():
            raise KeyProblem(f"{path}: owned by uid {info.st_uid}, not by the gateway's user "
                             f"(uid {os.geteuid()}); run `chown` on it")
        if info.st_mode & 0o077:
            raise KeyProblem(f"{path}: group or others have access (mode {stat.S_IMODE(info.st_mode):04o}); "
                             f"run `chmod 600 {path}`")
        return handle.read()


def parse_private_key(pem: bytes, algorithm: Algorithm, where: str) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeyProblem(f"{where}: not an unencrypted PEM private key") from None
    if algorithm == "rsa":
        if not isinstance(key, rsa.RSAPrivateKey):
            raise KeyProblem(f"{where}: algorithm is rsa but the file holds a {_kind(key)} key")
        check_rsa_size(key.key_size, where)
        return key
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise KeyProblem(f"{where}: algorithm is ed25519 but the file holds a {_kind(key)} key")
    return key


def check_rsa_size(bits: int, where: str) -> None:
    if bits < MIN_RSA_BITS:
        raise KeyProblem(f"{where}: RSA key of {bits} bits refused; receivers need at least "
                         f"{MIN_RSA_BITS} (RFC 8301). Generate a new one with `gateway dkim keygen`")
    if bits > MAX_RSA_BITS:
        raise KeyProblem(f"{where}: RSA key of {bits} bits refused; use {MIN_RSA_BITS} to {MAX_RSA_BITS}")


def _kind(key: object) -> str:
    name = type(key).__name__.lower()
    for kind in ("rsa", "ed25519", "ed448", "ec", "dsa", "x25519"):
        if kind in name:
            return kind
    return name


def load_private_key(path: Path, algorithm: Algorithm) -> PrivateKey:
    return parse_private_key(check_private_file(path), algorithm, str(path))


def generate_key(algorithm: Algorithm, bits: int = DEFAULT_RSA_BITS) -> PrivateKey:
    if algorithm == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    check_rsa_size(bits, "--bits")
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def private_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def write_private_file(path: Path, content: bytes) -> None:
    """Create ``path`` with mode 0600, whole or not at all; never overwrite one (a replaced
    key breaks the published DNS record)."""
    if path.exists() or path.is_symlink():
        raise KeyProblem(f"{path}: already exists; choose another path or selector")
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(content)
            out.flush()
            os.fsync(out.fileno())
        os.link(temporary, path)  # fails if the path appeared meanwhile, unlike rename
    except FileExistsError:
        raise KeyProblem(f"{path}: already exists; choose another path or selector") from None
    finally:
        os.unlink(temporary)


def public_key_text(key: PrivateKey) -> str:
    """The p= value: SubjectPublicKeyInfo for RSA, the raw 32 bytes for Ed25519 (RFC 8463)."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    else:
        raw = key.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(raw).decode("ascii")


def algorithm_of(key: PrivateKey) -> Algorithm:
    return "ed25519" if isinstance(key, ed25519.Ed25519PrivateKey) else "rsa"


def txt_value(key: PrivateKey) -> str:
    return f"v=DKIM1; k={algorithm_of(key)}; p={public_key_text(key)}"


def txt_strings(value: str) -> list[str]:
    """Split a TXT value into character-strings of at most 255 octets (receivers join them)."""
    raw = value.encode("ascii")
    return [raw[i:i + TXT_STRING_LIMIT].decode("ascii") for i in range(0, len(raw), TXT_STRING_LIMIT)]


def zone_record(selector: str, domain: str, key: PrivateKey) -> str:
    """The record as a zone-file line, ready to paste (strings quoted and split)."""
    strings = " ".join(f'"{chunk}"' for chunk in txt_strings(txt_value(key)))
    return f"{selector}._domainkey.{domain}. IN TXT ( {strings} )"


@dataclass(frozen=True)
class SigningKey:
    """One selector's key, ready to sign digests for ``domain``."""

    domain: str
    selector: str
    private: PrivateKey

    @property
    def algorithm(self) -> Algorithm:
        return algorithm_of(self.private)

    @property
    def a_tag(self) -> bytes:
        return b"ed25519-sha256" if self.algorithm == "ed25519" else b"rsa-sha256"

    def sign_digest(self, digest: bytes) -> bytes:
        """Sign a SHA-256 digest: PKCS#1 v1.5 for RSA; Ed25519 signs the digest itself (RFC 8463)."""
        if isinstance(self.private, ed25519.Ed25519PrivateKey):
            return self.private.sign(digest)
        return self.private.sign(digest, padding.PKCS1v15(), Prehashed(hashes.SHA256()))
