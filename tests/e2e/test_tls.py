"""STARTTLS and implicit TLS at intake: AUTH is offered only once the session is encrypted."""

from __future__ import annotations

import asyncio
import datetime
import smtplib
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.smtp.passwords import hash_password
from tests.e2e.conftest import Running, StartGateway

PASSWORD = "tls-only-secret"


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gw.example.com")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def _client_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def _start_with_tls(start_gateway: StartGateway, tmp_path: Path) -> Running:
    cert, key = _self_signed(tmp_path)
    account = {"username": "shop", "password_hash": hash_password(PASSWORD, n=2**10),
               "allowed_from_domains": ["example.com"],
               "default_stream": "transactional"}
    return await start_gateway({"smtp": {
        "tls_cert": str(cert), "tls_key": str(key), "listen_tls": ["127.0.0.1:0"],
        "allowed_networks": ["127.0.0.2/32"], "accounts": [account]}})


def _starttls_session(port: int) -> tuple[bool, bool, dict[str, tuple[int, bytes]]]:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("mailer.example.com")
        auth_before = client.has_extn("auth")
        client.starttls(context=_client_context())
        client.ehlo("mailer.example.com")
        auth_after = client.has_extn("auth")
        client.login("shop", PASSWORD)
        refused = client.sendmail("news@example.com", ["alice@example.net"], b"From: news@example.com\r\nSubject: tls\r\n\r\nhi\r\n")
    return auth_before, auth_after, refused


async def test_starttls_then_auth(start_gateway: StartGateway, tmp_path: Path) -> None:
    running = await _start_with_tls(start_gateway, tmp_path)
    auth_before, auth_after, refused = await asyncio.to_thread(_starttls_session, running.port)
    assert (auth_before, auth_after, refused) == (False, True, {})
    [received] = await running.sink.wait_for(1, timeout=10)
    assert b"with ESMTPSA id" in received.data  # Received: records TLS and AUTH


def _implicit_tls_session(port: int) -> dict[str, tuple[int, bytes]]:
    with smtplib.SMTP_SSL("127.0.0.1", port, timeout=10, context=_client_context()) as client:
        client.ehlo("mailer.example.com")
        assert client.has_extn("auth")
        client.login("shop", PASSWORD)
        return client.sendmail("news@example.com", ["bob@example.net"], b"From: news@example.com\r\nSubject: 465\r\n\r\nhi\r\n")


async def test_implicit_tls_listener_offers_auth(start_gateway: StartGateway, tmp_path: Path) -> None:
    running = await _start_with_tls(start_gateway, tmp_path)
    assert await asyncio.to_thread(_implicit_tls_session, running.port_of("tls")) == {}
    await running.sink.wait_for(1, timeout=10)
