"""`gateway dns check` against the loopback DNS server with a good and a broken zone."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from gateway.cli.main import main
from gateway.sandbox.dnsserver import LoopbackDnsServer
from gateway.signing import keys

DNS_HOST = "127.0.0.53"
ROOT = Path(__file__).resolve().parents[2]

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ED_KEY = ed25519.Ed25519PrivateKey.generate()
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def txt(value: str) -> str:
    """A long TXT value as quoted 255-octet strings, the way it is published."""
    return " ".join(f'"{chunk}"' for chunk in keys.txt_strings(value))


GOOD = {
    ("bounces.example.com", "TXT"): ["v=spf1 ip4:127.0.0.10 ip4:127.0.0.11 -all"],
    ("bounces.example.com", "MX"): ["10 gw.example.com."],
    ("example.com", "TXT"): ["v=spf1 include:bounces.example.com ~all"],
    ("s1._domainkey.example.com", "TXT"): [txt(keys.txt_value(RSA_KEY))],
    ("e1._domainkey.example.com", "TXT"): [keys.txt_value(ED_KEY)],
    ("_dmarc.example.com", "TXT"): ["v=DMARC1; p=none; rua=mailto:dmarc@example.com"],
    ("10.0.0.127.in-addr.arpa", "PTR"): ["mta1.example.com."],
    ("11.0.0.127.in-addr.arpa", "PTR"): ["mta2.example.com."],
    ("mta1.example.com", "A"): ["127.0.0.10"],
    ("mta2.example.com", "A"): ["127.0.0.11"],
    ("gw.example.com", "A"): ["127.0.0.10"],
    ("mta1.example.com", "TXT"): ["v=spf1 a -all"],
    ("mta2.example.com", "TXT"): ["v=spf1 ip4:127.0.0.11 -all"],
    ("_mta-sts.example.com", "TXT"): ["v=STSv1; id=20240101"],
}

INCLUDES = [f"i{n}.example.org" for n in range(11)]
BROKEN = {
    ("bounces.example.com", "TXT"): ["v=spf1 ip4:127.0.0.10 -all"],  # 127.0.0.11 missing
    ("bounces.example.com", "MX"): ["10 mx.elsewhere.example."],
    ("example.com", "TXT"): ["v=spf1 " + " ".join(f"include:{i}" for i in INCLUDES) + " ~all"],
    **{(name, "TXT"): ["v=spf1 -all"] for name in INCLUDES},
    ("s1._domainkey.example.com", "TXT"): [txt(keys.txt_value(OTHER_KEY))],  # not our key
    ("e1._domainkey.example.com", "TXT"): [keys.txt_value(ED_KEY)],
    ("10.0.0.127.in-addr.arpa", "PTR"): ["mta1.example.com."],
    ("11.0.0.127.in-addr.arpa", "PTR"): ["mta2.example.com."],
    ("mta1.example.com", "A"): ["127.0.0.10"],
    ("mta2.example.com", "A"): ["127.0.0.99"],  # PTR does not come back to 127.0.0.11
}


def write_config(tmp_path: Path, port: int) -> Path:
    key_dir = tmp_path / "keys"
    for name, key in (("s1", RSA_KEY), ("e1", ED_KEY)):
        keys.write_private_file(key_dir / f"example.com.{name}.pem", keys.private_pem(key))
    config = tmp_path / "gateway.toml"
    config.write_text(f"""
[smtp]
hostname = "gw.example.com"
[dns]
nameservers = ["{DNS_HOST}:{port}"]
timeout = "2s"
[bounce]
domain = "bounces.example.com"
[[domains]]
name = "example.com"
dkim = [{{ selector = "s1", algorithm = "rsa", key_file = "{key_dir}/example.com.s1.pem" }},
        {{ selector = "e1", algorithm = "ed25519", key_file = "{key_dir}/example.com.e1.pem" }}]
[[pools]]
name = "default"
ips = [{{ address = "127.0.0.10", helo = "mta1.example.com" }},
       {{ address = "127.0.0.11", helo = "mta2.example.com" }}]
""")
    return config


@pytest.fixture
async def good(tmp_path: Path) -> AsyncIterator[Path]:
    async with LoopbackDnsServer(GOOD, host=DNS_HOST) as server:
        yield write_config(tmp_path, server.port)


@pytest.fixture
async def broken(tmp_path: Path) -> AsyncIterator[Path]:
    async with LoopbackDnsServer(BROKEN, host=DNS_HOST) as server:
        yield write_config(tmp_path, server.port)


async def check(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str], str]:
    code = await asyncio.to_thread(main, ["dns", "check", *args])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


async def test_good_zone_passes(good: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, lines, err = await check(capsys, "example.com", "-c", str(good))
    assert (code, err) == (0, "")
    assert lines[1:] == [
        "✓ SPF bounces.example.com: envelope (bounce) domain: pass for 127.0.0.10, 127.0.0.11 "
        "(0 of 10 lookups in the record)",
        "✓ SPF example.com: From domain: pass for 127.0.0.10, 127.0.0.11 (1 of 10 lookups in the record)",
        "✓ DKIM s1._domainkey.example.com: published key matches (rsa)",
        "✓ DKIM e1._domainkey.example.com: published key matches (ed25519)",
        "✓ DMARC _dmarc.example.com: p=none, pct=100",
        "✓ DMARC alignment example.com: DKIM d=example.com aligned (adkim=r); "
        "SPF bounces.example.com aligned (aspf=r)",
        "✓ PTR 127.0.0.10: 127.0.0.10 -> mta1.example.com -> 127.0.0.10",
        "✓ PTR 127.0.0.11: 127.0.0.11 -> mta2.example.com -> 127.0.0.11",
        "✓ HELO SPF mta1.example.com: pass for 127.0.0.10",
        "✓ HELO SPF mta2.example.com: pass for 127.0.0.11",
        "✓ bounce MX bounces.example.com: MX gw.example.com is the gateway",
        "· MTA-STS _mta-sts.example.com: published: v=STSv1; id=20240101",
        "· TLS-RPT _smtp._tls.example.com: not published (optional)",
        "OK: every required check passes; 0 warning(s)",
    ]


async def test_broken_zone_names_each_problem_and_its_fix(
    broken: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines, err = await check(capsys, "example.com", "-c", str(broken))
    assert (code, err) == (1, "")
    problems = [line for line in lines if line[0] in "✗!" or line.startswith("    fix:")]
    assert problems[:4] == [
        "✗ SPF bounces.example.com: envelope (bounce) domain: 127.0.0.11: fail "
        "(bounces.example.com: matched -all)",
        '    fix: replace the SPF record with bounces.example.com. IN TXT '
        '"v=spf1 ip4:127.0.0.11 ip4:127.0.0.10 -all"',
        "! SPF example.com: From domain: 127.0.0.10, 127.0.0.11: permerror (more than 10 DNS lookups: "
        "the 11th is 'include:i10.example.org') (recommended)",
        '    fix: replace the SPF record with example.com. IN TXT "v=spf1 ip4:127.0.0.10 ip4:127.0.0.11 '
        + " ".join(f"include:{i}" for i in INCLUDES) + ' ~all"; cut DNS lookups to 10 or fewer: the '
        "record needs 11 (11 term(s) with 1 each); remove includes of services you no longer use or "
        "replace them with their ip4:/ip6: ranges",
    ]
    assert problems[4:] == [
        "✗ DKIM s1._domainkey.example.com: published p= is a different key than the configured key file",
        f"    fix: replace it with {keys.zone_record('s1', 'example.com', RSA_KEY)}",
        "✗ DMARC _dmarc.example.com: no DMARC record (Gmail and Yahoo require one; p=none is enough)",
        '    fix: publish _dmarc.example.com. IN TXT "v=DMARC1; p=none; rua=mailto:dmarc-reports@example.com"',
        "✗ PTR 127.0.0.11: PTR mta2.example.com -> 127.0.0.99: not forward-confirmed (needs 127.0.0.11)",
        "    fix: make mta2.example.com. IN A 127.0.0.11 (now 127.0.0.99); the PTR already names the "
        "HELO host",
        "! HELO SPF mta1.example.com: 127.0.0.10: none (mta1.example.com has no SPF record) (recommended)",
        '    fix: publish mta1.example.com. IN TXT "v=spf1 ip4:127.0.0.10 -all"',
        "! HELO SPF mta2.example.com: 127.0.0.11: none (mta2.example.com has no SPF record) (recommended)",
        '    fix: publish mta2.example.com. IN TXT "v=spf1 ip4:127.0.0.11 -all"',
        "! bounce MX bounces.example.com: MX mx.elsewhere.example: not the gateway (gw.example.com); DSNs "
        "and complaints will not reach it (recommended)",
        "    fix: publish bounces.example.com. IN MX 10 gw.example.com.",
    ]
    assert lines[-1] == "FAILED: 4 required check(s) fail the Gmail/Yahoo bulk-sender rules; 4 warning(s)"


async def test_json_output(broken: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, lines, _ = await check(capsys, "example.com", "--json", "-c", str(broken))
    document = json.loads("\n".join(lines))
    assert code == 1 and document["ok"] is False and document["domain"] == "example.com"
    failed = [(c["check"], c["subject"]) for c in document["checks"] if c["status"] == "fail" and c["required"]]
    assert failed == [("SPF", "bounces.example.com"), ("DKIM", "s1._domainkey.example.com"),
                      ("DMARC", "_dmarc.example.com"), ("PTR", "127.0.0.11")]
    assert set(document["checks"][0]) == {"check", "subject", "status", "required", "detail", "fix"}


def _silent_udp_port() -> tuple[socket.socket, int]:
    """A bound UDP socket that never answers: every question times out."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((DNS_HOST, 0))
    return sock, sock.getsockname()[1]


async def test_dns_timeouts_are_failures_not_tracebacks(tmp_path: Path) -> None:
    sock, port = _silent_udp_port()
    try:
        config = write_config(tmp_path, port)
        overlay = tmp_path / "fast.toml"
        overlay.write_text('[dns]\ntimeout = "0.2s"\n')
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "dns", "check", "example.com", "-c", str(config),
            "-c", str(overlay), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT)
        out, err = await asyncio.wait_for(process.communicate(), 60)
    finally:
        sock.close()
    assert process.returncode == 1 and err == b""
    text = out.decode()
    assert "✗ DMARC _dmarc.example.com: lookup failed: TXT _dmarc.example.com: no answer within 0.2s" in text
    assert "Traceback" not in text


async def test_usage_and_config_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = await check(capsys, "not a domain", "-c", str(write_config(tmp_path, 53)))
    assert (code, err) == (2, "gateway: bad domain name 'not a domain'\n")
    (tmp_path / "keys" / "example.com.s1.pem").chmod(0o644)
    code, _, err = await check(capsys, "example.com", "-c", str(tmp_path / "gateway.toml"))
    assert code == 2 and err.startswith("gateway: ") and "group or others have access" in err
    with pytest.raises(SystemExit) as exit_info:
        main(["dns", "check", "example.com"])
    assert exit_info.value.code == 2
