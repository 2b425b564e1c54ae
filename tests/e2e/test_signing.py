"""Mail through the gateway arrives signed, with one unsubscribe pair and a VERP return path.

Signatures are checked by two verifiers that share no code with the gateway's signer: dkimpy
(Python) and Mail::DKIM (Perl, Debian's libmail-dkim-perl), both fetching the public keys from
the loopback DNS server as a receiver would.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import smtplib
import subprocess
import sys
from pathlib import Path
from typing import Any

import dkim
import dns.resolver
import pytest

from gateway.queue import references
from gateway.rewrite.headers import split_message, values
from gateway.rewrite.tokens import BadToken, Purpose
from gateway.smtp.passwords import hash_password
from tests.e2e.conftest import DNS_IP, DkimFiles, Running, StartGateway

MARKETING = (
    b"From: Shop <news@example.com>\r\n"
    b"To: <alice@example.net>\r\n"
    b"Subject: Winter offers\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"X-Gateway-Stream: marketing\r\n"
    b"X-Gateway-List: offers\r\n"
    b"X-Gateway-Campaign: winter-2026\r\n"
    b"X-Gateway-Internal-Ref: 77\r\n"
    b"X-Crm-Secret: abc\r\n"
    b"List-Unsubscribe: <https://crm.example.com/unsub?id=1>\r\n"
    b"\r\n"
    b"Warm socks, 20 % off.\r\n"
)


def _send(port: int, rcpts: list[str], data: bytes, sender: str = "news@example.com") -> Any:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        return client.sendmail(sender, rcpts, data)


def _txt_lookup(port: int) -> Any:
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [DNS_IP]
    resolver.port = port

    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        try:
            answer = resolver.resolve(name.decode(), "TXT", lifetime=timeout)
        except dns.resolver.NXDOMAIN:
            return None
        return b"".join(b"".join(record.strings) for record in answer)

    return lookup


def dkimpy_results(data: bytes, dns_port: int) -> list[bool]:
    """One result per DKIM-Signature, in header order (blocking: run it in a thread)."""
    verifier = dkim.DKIM(data)
    count = len(values(split_message(data)[0], b"DKIM-Signature"))
    return [bool(verifier.verify(idx=i, dnsfunc=_txt_lookup(dns_port))) for i in range(count)]


PERL_VERIFIER = r"""
use strict; use warnings;
use Mail::DKIM::Verifier; use Net::DNS::Resolver;
Mail::DKIM::DNS::resolver(Net::DNS::Resolver->new(nameservers => [$ARGV[0]], port => $ARGV[1],
                                                  recurse => 1, udp_timeout => 5));
my $dkim = Mail::DKIM::Verifier->new();
binmode STDIN;
while (my $line = <STDIN>) { $line =~ s/\r?\n\z//; $dkim->PRINT("$line\015\012"); }
$dkim->CLOSE;
print $_->algorithm, " ", $_->result_detail, "\n" for $dkim->signatures;
"""


def perl_results(data: bytes, dns_port: int) -> list[str]:
    """Mail::DKIM's verdict per signature ("rsa-sha256 pass"); skips without Perl's modules."""
    probe = subprocess.run(["perl", "-MMail::DKIM::Verifier", "-e", "1"],
                           capture_output=True) if shutil.which("perl") else None
    if probe is None or probe.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("Mail::DKIM is missing; .ci/run installs libmail-dkim-perl")
        pytest.skip("Perl's Mail::DKIM is not installed (apt-get install libmail-dkim-perl)")
    result = subprocess.run(["perl", "-e", PERL_VERIFIER, DNS_IP, str(dns_port)], input=data,
                            capture_output=True, timeout=30, check=True)
    return result.stdout.decode().splitlines()


async def _one_delivered(running: Running) -> Any:
    await running.sink.wait_for(1, timeout=15)
    [received] = running.sink.messages
    return received


async def test_marketing_mail_is_signed_with_one_unsubscribe_pair_and_verp(start_gateway: StartGateway) -> None:
    running = await start_gateway({"headers": {"strip": ["X-Crm-Secret"]}})
    await running.consent("offers", "alice@example.net")
    assert await asyncio.to_thread(_send, running.port, ["alice@example.net"], MARKETING) == {}
    received = await _one_delivered(running)
    headers, body = split_message(received.data)

    assert await asyncio.to_thread(dkimpy_results, received.data, running.dns.port) == [True]
    assert await asyncio.to_thread(perl_results, received.data, running.dns.port) == ["rsa-sha256 pass"]

    [unsubscribe] = values(headers, b"List-Unsubscribe")  # the mailer's own was replaced
    assert values(headers, b"List-Unsubscribe-Post") == ["List-Unsubscribe=One-Click"]
    match = re.fullmatch(r"<http://127\.0\.0\.1:8080/u/([a-z2-7]{40})>, "
                         r"<mailto:unsubscribe\+([a-z2-7]{40})@bounces\.example\.com>", unsubscribe)
    assert match and match.group(1) == match.group(2)
    assert "alice" not in unsubscribe
    assert values(headers, b"Feedback-ID") == ["winter-2026:offers:marketing:local"]
    assert not [name for name, _ in headers if name.lower().startswith(b"x-gateway-")]
    assert not values(headers, b"X-Crm-Secret")
    assert len(values(headers, b"Message-ID")) == 1 and len(values(headers, b"Date")) == 1
    assert body == b"Warm socks, 20 % off.\r\n"

    gateway = running.gateway
    ref = await references.resolve(gateway.db, gateway.copies.codec, match.group(1), Purpose.UNSUBSCRIBE)
    assert (ref.recipient, ref.list_key, ref.campaign) == ("alice@example.net", "offers", "winter-2026")
    verp = re.fullmatch(r"b\+([a-z2-7]{40})@bounces\.example\.com", received.mail_from)
    assert verp is not None and verp.group(1) != match.group(1)
    assert await references.resolve(gateway.db, gateway.copies.codec, verp.group(1), Purpose.VERP) == ref
    # A token works only for its purpose, and a changed character names nothing.
    with pytest.raises(BadToken):
        await references.resolve(gateway.db, gateway.copies.codec, verp.group(1), Purpose.UNSUBSCRIBE)
    forged = match.group(1)[:-1] + ("a" if match.group(1)[-1] != "a" else "b")
    with pytest.raises(BadToken):
        await references.resolve(gateway.db, gateway.copies.codec, forged, Purpose.UNSUBSCRIBE)


async def test_each_recipient_gets_its_own_copy_and_tokens(start_gateway: StartGateway) -> None:
    running = await start_gateway()
    rcpts = ["a1@example.net", "a2@example.net", "a3@example.net"]
    await running.consent("offers", *rcpts)
    await asyncio.to_thread(_send, running.port, rcpts, MARKETING)
    await running.sink.wait_for(3, timeout=15)
    copies = {m.rcpt_tos: m for m in running.sink.messages}
    assert sorted(copies) == [(r,) for r in rcpts]  # one transaction per recipient
    links = {values(split_message(m.data)[0], b"List-Unsubscribe")[0] for m in copies.values()}
    assert len(links) == 3 and len({m.mail_from for m in copies.values()}) == 3
    for message in copies.values():
        assert await asyncio.to_thread(dkimpy_results, message.data, running.dns.port) == [True]


async def test_transactional_mail_is_signed_without_list_unsubscribe(start_gateway: StartGateway) -> None:
    running = await start_gateway()
    message = MARKETING.replace(b"X-Gateway-Stream: marketing", b"X-Gateway-Stream: transactional")
    await asyncio.to_thread(_send, running.port, ["bob@example.net"], message)
    received = await _one_delivered(running)
    headers, _ = split_message(received.data)
    assert not values(headers, b"List-Unsubscribe") and not values(headers, b"List-Unsubscribe-Post")
    assert values(headers, b"Feedback-ID") == ["winter-2026:offers:transactional:local"]
    assert await asyncio.to_thread(dkimpy_results, received.data, running.dns.port) == [True]


async def test_dual_signing_rsa_and_ed25519(start_gateway: StartGateway, dkim_files: DkimFiles) -> None:
    running = await start_gateway({"domains": [{"name": "example.com", "dkim": [
        {"selector": "s1", "algorithm": "rsa", "key_file": str(dkim_files.rsa)},
        {"selector": "e1", "algorithm": "ed25519", "key_file": str(dkim_files.ed25519)}]}]})
    await running.consent("offers", "carol@example.net")
    await asyncio.to_thread(_send, running.port, ["carol@example.net"], MARKETING)
    received = await _one_delivered(running)
    assert await asyncio.to_thread(dkimpy_results, received.data, running.dns.port) == [True, True]
    # Debian's Mail::DKIM 1.2023 does not know Ed25519, like many receivers today: the RSA
    # signature is what they check, which is the reason to sign twice.
    ed25519, rsa = sorted(await asyncio.to_thread(perl_results, received.data, running.dns.port))
    assert rsa == "rsa-sha256 pass"
    assert ed25519 in ("ed25519-sha256 pass", "ed25519-sha256 invalid (unsupported algorithm ed25519-sha256)")


async def test_from_domain_without_key_is_refused_or_passed_unsigned(start_gateway: StartGateway) -> None:
    running = await start_gateway()
    unsigned = MARKETING.replace(b"From: Shop <news@example.com>", b"From: Shop <news@example.org>")
    with pytest.raises(smtplib.SMTPDataError) as refused:
        await asyncio.to_thread(_send, running.port, ["dan@example.net"], unsigned)
    assert refused.value.smtp_code == 550
    assert refused.value.smtp_error == (b"5.7.1 no DKIM key for From domain example.org: "
                                        b"mail from it would fail DMARC")

    passing = await start_gateway({"signing": {"unsigned": "pass"}})
    await passing.consent("offers", "dan@example.net")
    await asyncio.to_thread(_send, passing.port, ["dan@example.net"], unsigned)
    received = await _one_delivered(passing)
    assert b"DKIM-Signature" not in received.data


async def test_bad_control_headers_and_foreign_from_are_refused(start_gateway: StartGateway) -> None:
    account = {"username": "crm", "password_hash": hash_password("login-secret", n=2**10),
               "allowed_from_domains": ["example.com"]}
    running = await start_gateway({"smtp": {"listen_trusted_local": ["127.0.0.1:0"], "accounts": [account]},
                                   "domains": [{"name": "example.com", "dkim": []},
                                               {"name": "example.org", "dkim": []}],
                                   "signing": {"unsigned": "pass"}})
    await running.consent("offers", "erin@example.net")
    bad_stream = MARKETING.replace(b"X-Gateway-Stream: marketing", b"X-Gateway-Stream: bulk")
    with pytest.raises(smtplib.SMTPDataError) as refused:
        await asyncio.to_thread(_send, running.port, ["erin@example.net"], bad_stream)
    assert refused.value.smtp_error == (b"5.6.0 malformed message header: X-Gateway-Stream must be "
                                        b"marketing or transactional, not 'bulk'")

    def send_as_crm(data: bytes) -> Any:
        with smtplib.SMTP("127.0.0.1", running.port_of("trusted-local"), timeout=10) as client:
            client.login("crm", "login-secret")
            return client.sendmail("news@example.com", ["erin@example.net"], data)

    foreign = MARKETING.replace(b"news@example.com>", b"ceo@example.org>")
    with pytest.raises(smtplib.SMTPDataError) as refused:
        await asyncio.to_thread(send_as_crm, foreign)
    assert refused.value.smtp_error == b"5.7.1 From domain example.org not allowed for this account"
    assert await asyncio.to_thread(send_as_crm, MARKETING) == {}
    received = await _one_delivered(running)
    assert values(split_message(received.data)[0], b"Feedback-ID") == ["winter-2026:offers:marketing:crm"]


async def test_keygen_record_served_by_dns_verifies_delivered_mail(start_gateway: StartGateway,
                                                                   tmp_path: Path) -> None:
    key_file = tmp_path / "keys" / "example.org.k1.pem"
    printed = await asyncio.to_thread(subprocess.run, [
        sys.executable, "-m", "gateway", "dkim", "keygen", "example.org", "--selector", "k1",
        "--key-file", str(key_file)], capture_output=True, text=True, check=True)
    [record] = [line for line in printed.stdout.splitlines() if not line.startswith(";")]
    name, quoted = re.fullmatch(r"(\S+) IN TXT \( (.*) \)", record).groups()  # type: ignore[union-attr]
    assert name == "k1._domainkey.example.org."
    running = await start_gateway({"domains": [{"name": "example.org", "dkim": [
        {"selector": "k1", "key_file": str(key_file)}]}]})
    running.dns.add(name, "TXT", quoted)  # the record exactly as printed
    await running.consent("offers", "fay@example.net")
    message = MARKETING.replace(b"news@example.com>", b"news@example.org>")
    await asyncio.to_thread(_send, running.port, ["fay@example.net"], message, "news@example.org")
    received = await _one_delivered(running)
    assert b"d=example.org" in received.data and b"s=k1" in received.data
    assert await asyncio.to_thread(dkimpy_results, received.data, running.dns.port) == [True]
    assert await asyncio.to_thread(perl_results, received.data, running.dns.port) == ["rsa-sha256 pass"]


async def test_header_limits_and_a_stripped_from_are_refused_before_queueing(start_gateway: StartGateway) -> None:
    running = await start_gateway({"smtp": {"max_header_size": "4KB"}, "headers": {"strip": ["From"]}})
    folded = MARKETING.replace(b"Subject: Winter offers\r\n", b"Subject: Winter offers\r\n" + b" more\r\n" * 1000)
    with pytest.raises(smtplib.SMTPDataError) as refused:
        await asyncio.to_thread(_send, running.port, ["gus@example.net"], folded)
    assert (refused.value.smtp_code, refused.value.smtp_error) == (
        552, b"5.3.4 message header section too big (over 4000 bytes)")
    with pytest.raises(smtplib.SMTPDataError) as refused:  # what goes out would have no From
        await asyncio.to_thread(_send, running.port, ["gus@example.net"], MARKETING)
    assert refused.value.smtp_error == b"5.6.0 malformed message header: no From header"


async def test_null_sender_mail_is_transactional_by_default(start_gateway: StartGateway) -> None:
    running = await start_gateway()
    report = b"From: MAILER-DAEMON@example.com\r\nSubject: delivery status\r\n\r\nreport\r\n"
    await asyncio.to_thread(_send, running.port, ["hal@example.net"], report, "<>")
    received = await _one_delivered(running)
    headers, _ = split_message(received.data)
    assert received.mail_from == ""
    assert not values(headers, b"List-Unsubscribe")
    assert values(headers, b"Feedback-ID") == ["::transactional:local"]
