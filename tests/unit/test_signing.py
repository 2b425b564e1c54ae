"""DKIM keys and signatures: checked by dkimpy's verifier and against dkimpy's own signer."""

from __future__ import annotations

import base64
import os
import random
from pathlib import Path
from unittest import mock

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.config.schema import DkimKey, SendingDomain
from gateway.rewrite.headers import split_message
from gateway.signing import keys, signer
from gateway.signing.keyring import KeyRing

T = 1_790_000_000


@pytest.fixture(scope="module")
def rsa_key() -> keys.PrivateKey:
    return keys.generate_key("rsa")


@pytest.fixture(scope="module")
def ed_key() -> keys.PrivateKey:
    return keys.generate_key("ed25519")


def _signed(message: bytes, key: keys.PrivateKey, selector: str = "s1") -> bytes:
    headers, body = split_message(message)
    signing_key = keys.SigningKey("example.com", selector, key)
    return signer.sign(headers, signer.body_hash(body), signing_key, T) + message


def _verifies(data: bytes, *published: keys.PrivateKey) -> bool:
    """dkimpy's verifier, with DNS answered from the given keys (selector = position)."""
    records = {f"s{n}._domainkey.example.com.".encode(): keys.txt_value(key).encode()
               for n, key in enumerate(published, start=1)}
    return bool(dkim.verify(data, dnsfunc=lambda name, timeout=5: records.get(name)))


PLAIN = (b"From: Shop <news@example.com>\r\nTo: a@example.net\r\nSubject: Offers\r\n"
         b"Date: Tue, 24 Nov 2026 10:00:00 +0000\r\nMessage-ID: <m1@example.com>\r\n"
         b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello\r\n")

AWKWARD = {
    "8-bit body": PLAIN.replace(b"Hello", "Grüße, ½ € 日本".encode()),
    "long folded headers": PLAIN.replace(
        b"Subject: Offers", b"Subject: " + b" ".join([b"word"] * 60) + b"\r\n\t" + b"x" * 500 + b"\r\n  tail"),
    "no trailing CRLF": PLAIN + b"last line without newline",
    "duplicate headers": PLAIN.replace(b"To: a@example.net\r\n",
                                       b"To: a@example.net\r\nTo: b@example.net\r\nCc: c@example.net\r\n"),
    "empty body": PLAIN.partition(b"\r\n\r\n")[0] + b"\r\n\r\n",
    "trailing blank lines and spaces": PLAIN.replace(b"Hello\r\n", b"Hello  \t\r\n \r\n\r\n\r\n"),
    "1 MB attachment": PLAIN.replace(b"Hello\r\n", (base64.encodebytes(os.urandom(750_000))
                                                    .replace(b"\n", b"\r\n"))),
}


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
@pytest.mark.parametrize("case", sorted(AWKWARD))
def test_signature_verifies_for_awkward_messages(case: str, algorithm: str, rsa_key: keys.PrivateKey,
                                                 ed_key: keys.PrivateKey) -> None:
    key = rsa_key if algorithm == "rsa" else ed_key
    assert _verifies(_signed(AWKWARD[case], key), key)


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
def test_tampering_breaks_the_signature(algorithm: str, rsa_key: keys.PrivateKey,
                                        ed_key: keys.PrivateKey) -> None:
    key = rsa_key if algorithm == "rsa" else ed_key
    signed = _signed(PLAIN, key)
    assert _verifies(signed, key)
    assert not _verifies(signed.replace(b"Subject: Offers", b"Subject: 0ffers"), key)
    assert not _verifies(signed.replace(b"Hello", b"Hallo"), key)
    # Over-signed fields cannot be added: a second From, a Reply-To, an unsubscribe link.
    for added in (b"From: ceo@example.com\r\n", b"Reply-To: thief@example.org\r\n",
                  b"List-Unsubscribe: <https://evil.example/u>\r\n"):
        head, _, body = signed.partition(b"\r\n\r\n")
        assert not _verifies(head + b"\r\n" + added + b"\r\n" + body, key)
    # Whitespace changes that relaxed canonicalization forgives still verify.
    assert _verifies(signed.replace(b"Subject: Offers", b"Subject:   Offers  "), key)


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
def test_signature_is_byte_identical_to_dkimpy(algorithm: keys.Algorithm) -> None:
    key = keys.generate_key(algorithm)
    headers, body = split_message(AWKWARD["duplicate headers"])
    ours = signer.sign(headers, signer.body_hash(body), keys.SigningKey("example.com", "s1", key), T)
    if algorithm == "rsa":
        secret = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                   serialization.NoEncryption())
    else:
        secret = base64.b64encode(key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                                    serialization.NoEncryption()))
    with mock.patch("dkim.time.time", return_value=T):
        theirs = dkim.sign(AWKWARD["duplicate headers"], b"s1", b"example.com", secret,
                           canonicalize=(b"relaxed", b"relaxed"),
                           include_headers=signer.signed_header_names(headers),
                           signature_algorithm=b"rsa-sha256" if algorithm == "rsa" else b"ed25519-sha256")
    assert ours == theirs


def test_fast_body_canonicalization_equals_dkimpys() -> None:
    rng = random.Random(7)
    pieces = [b" ", b"\t", b"\r\n", b"a", b"b", b"  ", b" \t ", b"\r\n\r\n"]
    bodies = [b"", b"\r\n", b"\r\n\r\n", b"x", b" x \r\n", b"\tx\t\r\n\r\n"] + [
        b"".join(rng.choice(pieces) for _ in range(rng.randrange(0, 80))) for _ in range(5000)]
    for body in bodies:
        assert signer.canonical_body(body) == signer.RELAXED.canonicalize_body(body), body


@pytest.mark.parametrize("domain", ["m" * 63 + ".newsletters-example.com", "a" * 63 + "." + "b" * 63 + ".example"])
@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
def test_long_domains_are_never_broken_inside(domain: str, algorithm: keys.Algorithm,
                                               rsa_key: keys.PrivateKey, ed_key: keys.PrivateKey) -> None:
    key = rsa_key if algorithm == "rsa" else ed_key
    message = PLAIN.replace(b"news@example.com", f"news@{domain}".encode())
    headers, body = split_message(message)
    field = signer.sign(headers, signer.body_hash(body), keys.SigningKey(domain, "s1", key), T)
    assert f"d={domain};".encode() in field and f"i=@{domain};".encode() in field
    assert all(line.strip() for line in field.split(b"\r\n")[:-1])  # no blank continuation line
    record = keys.txt_value(key).encode()
    assert dkim.verify(field + message, dnsfunc=lambda name, timeout=5: record)


def test_signed_header_list_covers_the_required_fields_and_oversigns_from() -> None:
    headers, _ = split_message(AWKWARD["duplicate headers"])
    names = signer.signed_header_names(headers)
    assert names.count(b"from") == 2  # one present + one over-signed
    assert names.count(b"to") == 3  # both instances + one over-signed
    for required in (b"subject", b"date", b"message-id", b"mime-version", b"content-type", b"cc",
                     b"list-unsubscribe", b"list-unsubscribe-post", b"reply-to"):
        assert required in names
    signature = signer.sign(headers, b"bh", keys.SigningKey("example.com", "s1", keys.generate_key("ed25519")), T)
    assert b"c=relaxed/relaxed" in signature and b"d=example.com" in signature


def test_keys_are_written_private_and_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "k" / "example.com.s1.pem"
    key = keys.generate_key("ed25519")
    keys.write_private_file(path, keys.private_pem(key))
    assert path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(keys.KeyProblem, match="already exists"):
        keys.write_private_file(path, b"other")
    assert keys.txt_value(keys.load_private_key(path, "ed25519")) == keys.txt_value(key)


def test_readable_keys_are_refused_with_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    keys.write_private_file(path, keys.private_pem(keys.generate_key("ed25519")))
    path.chmod(0o640)
    with pytest.raises(keys.KeyProblem, match=r"group or others have access \(mode 0640\); run `chmod 600"):
        keys.load_private_key(path, "ed25519")
    for mode in (0o604, 0o620, 0o602):  # readable, or writable: a writer can plant a known key
        path.chmod(mode)
        with pytest.raises(keys.KeyProblem, match="group or others have access"):
            keys.load_private_key(path, "ed25519")
    path.chmod(0o600)
    link = tmp_path / "link.pem"
    link.symlink_to(path)
    with pytest.raises(keys.KeyProblem, match="symbolic link"):
        keys.load_private_key(link, "ed25519")
    with pytest.raises(keys.KeyProblem, match="file not found"):
        keys.load_private_key(tmp_path / "missing.pem", "rsa")


def _pem_file(tmp_path: Path, key: object, name: str) -> Path:
    path = tmp_path / name
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,  # type: ignore[attr-defined]
                            serialization.NoEncryption())
    keys.write_private_file(path, pem)
    return path


def test_weak_wrong_and_broken_keys_are_refused(tmp_path: Path) -> None:
    weak = _pem_file(tmp_path, rsa.generate_private_key(public_exponent=65537, key_size=1024), "weak.pem")
    with pytest.raises(keys.KeyProblem, match="1024 bits refused"):
        keys.load_private_key(weak, "rsa")
    ed = _pem_file(tmp_path, keys.generate_key("ed25519"), "ed.pem")
    with pytest.raises(keys.KeyProblem, match="algorithm is rsa but the file holds a ed25519 key"):
        keys.load_private_key(ed, "rsa")
    ecdsa = _pem_file(tmp_path, ec.generate_private_key(ec.SECP256R1()), "ec.pem")
    with pytest.raises(keys.KeyProblem, match="holds a ec key"):
        keys.load_private_key(ecdsa, "ed25519")
    garbage = tmp_path / "garbage.pem"
    keys.write_private_file(garbage, b"-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    with pytest.raises(keys.KeyProblem, match="not an unencrypted PEM private key"):
        keys.load_private_key(garbage, "rsa")
    with pytest.raises(keys.KeyProblem, match="1024 bits refused"):
        keys.generate_key("rsa", 1024)
    assert keys.load_private_key(_pem_file(tmp_path, keys.generate_key("rsa", 4096), "big.pem"), "rsa")


def test_rsa_txt_record_is_split_into_255_octet_strings(rsa_key: keys.PrivateKey) -> None:
    value = keys.txt_value(rsa_key)
    assert value.startswith("v=DKIM1; k=rsa; p=MII")
    strings = keys.txt_strings(value)
    assert len(strings) == 2 and all(len(s) <= 255 for s in strings) and "".join(strings) == value
    line = keys.zone_record("s1", "example.com", rsa_key)
    assert line.startswith('s1._domainkey.example.com. IN TXT ( "v=DKIM1; k=rsa; p=MII')
    assert line.count('"') == 4


def test_ed25519_record_holds_the_raw_public_key(ed_key: keys.PrivateKey) -> None:
    value = keys.txt_value(ed_key)
    assert value.startswith("v=DKIM1; k=ed25519; p=")
    assert len(base64.b64decode(value.split("p=")[1])) == 32


def test_keyring_aligns_on_the_from_domain_and_optionally_its_subdomains(tmp_path: Path) -> None:
    rsa_path = _pem_file(tmp_path, keys.generate_key("rsa"), "r.pem")
    ed_path = _pem_file(tmp_path, keys.generate_key("ed25519"), "e.pem")
    waiting = _pem_file(tmp_path, keys.generate_key("rsa"), "w.pem")
    ring = KeyRing.load([
        SendingDomain(name="example.com", subdomains=True, dkim=[
            DkimKey(selector="r1", key_file=rsa_path), DkimKey(selector="e1", algorithm="ed25519", key_file=ed_path),
            DkimKey(selector="r2", key_file=waiting, sign=False)]),
        SendingDomain(name="other.example", dkim=[DkimKey(selector="r1", key_file=rsa_path)]),
    ])
    assert [k.selector for k in ring.keys_for("example.com")] == ["r1", "e1"]  # dual signing, r2 waits
    assert [k.domain for k in ring.keys_for("news.eu.example.com")] == ["example.com", "example.com"]
    assert ring.keys_for("sub.other.example") == ()  # subdomains not enabled there
    assert ring.keys_for("example.org") == ()
    assert ring.keys_for("com") == ()


def test_keyring_reports_every_bad_key_at_once(tmp_path: Path) -> None:
    good = _pem_file(tmp_path, keys.generate_key("ed25519"), "good.pem")
    with pytest.raises(keys.KeyProblem) as raised:
        KeyRing.load([SendingDomain(name="example.com", dkim=[
            DkimKey(selector="a", key_file=tmp_path / "missing.pem"),
            DkimKey(selector="b", algorithm="ed25519", key_file=good)]),
            SendingDomain(name="example.org", dkim=[DkimKey(selector="c", key_file=good)])])
    problems = str(raised.value).splitlines()
    assert problems[0].startswith("domain example.com, selector a: ") and "file not found" in problems[0]
    assert problems[1].startswith("domain example.org, selector c: ") and "holds a ed25519 key" in problems[1]


def test_windowed_canonicalization_of_large_bodies_equals_dkimpys() -> None:
    rng = random.Random(11)
    lines = [b"plain text line", b"  indented\tline  ", b"", b"trailing \t ", b"a  b\t\tc"]
    body = b"\r\n".join(rng.choice(lines) for _ in range(60_000)) + b"\r\n\r\n\r\n"
    assert len(body) > 4 * signer.WINDOW
    assert signer.canonical_body(body) == signer.RELAXED.canonicalize_body(body)
    one_long_line = b"x  " * (signer.WINDOW // 2) + b"\r\n" + b"tail  \r\n"  # no CRLF within a window
    assert signer.canonical_body(one_long_line) == signer.RELAXED.canonicalize_body(one_long_line)
    assert signer.canonical_body(memoryview(body)) == signer.canonical_body(body)


def test_a_subdomain_listed_without_keys_does_not_hide_its_signing_parent(tmp_path: Path) -> None:
    parent = _pem_file(tmp_path, keys.generate_key("ed25519"), "p.pem")
    ring = KeyRing.load([
        SendingDomain(name="example.com", subdomains=True, dkim=[DkimKey(selector="p", algorithm="ed25519",
                                                                         key_file=parent)]),
        SendingDomain(name="news.example.com", dkim=[])])
    assert [k.domain for k in ring.keys_for("news.example.com")] == ["example.com"]
    assert ring.describe() == ["example.com and subdomains: p (ed25519)"]
