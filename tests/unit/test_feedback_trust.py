"""DKIM on complaint reports: a signature with l= is refused, a DNS failure is "try later"."""

from __future__ import annotations

import base64

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.feedback.trust import TemporaryDnsFailure, verified_dkim_domains

REPORT = (b"From: Loop <fbl@fbl.example>\r\nTo: fbl@bounces.example.com\r\nSubject: report\r\n"
          b"Message-ID: <r1@fbl.example>\r\n\r\nThis is an abuse report.\r\n")


def _key() -> tuple[bytes, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)


def test_a_valid_signature_passes_and_one_with_a_body_length_is_refused() -> None:
    private, record = _key()

    def lookup(name: bytes, timeout: float = 5.0) -> bytes | None:
        return record if name.rstrip(b".") == b"s1._domainkey.fbl.example" else None

    whole = dkim.sign(REPORT, b"s1", b"fbl.example", private, include_headers=[b"from", b"subject"]) + REPORT
    assert verified_dkim_domains(whole, lookup) == [("fbl.example", "pass")]
    partial = dkim.sign(REPORT, b"s1", b"fbl.example", private, include_headers=[b"from", b"subject"],
                        length=True) + REPORT + b"Appended: unsubscribe everyone\r\n"
    assert verified_dkim_domains(partial, lookup) == [("fbl.example", "policy")]


def test_a_dns_failure_is_a_temporary_error_not_a_failed_signature() -> None:
    private, _ = _key()

    def failing(name: bytes, timeout: float = 5.0) -> bytes | None:
        raise TemporaryDnsFailure("SERVFAIL")

    signed = dkim.sign(REPORT, b"s1", b"fbl.example", private, include_headers=[b"from"]) + REPORT
    assert verified_dkim_domains(signed, failing) == [("fbl.example", "temperror")]
