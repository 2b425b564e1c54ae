"""MxResolver against the loopback DNS server, over real UDP/TCP sockets on 127.0.0.53."""

from __future__ import annotations

import asyncio
import random
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from gateway.dns.errors import (
    InvalidDomain,
    NoMailHost,
    NoSuchDomain,
    NullMx,
    TemporaryDnsError,
)
from gateway.dns.resolver import MxResolver, MxTarget
from gateway.sandbox.dnsserver import LoopbackDnsServer
from tests.fakes import FakeClock

DNS_HOST = "127.0.0.53"

RECORDS = {
    ("example.net", "MX"): ["10 mx1.example.net.", "10 mx2.example.net", "20 backup.example.net."],
    ("mx1.example.net", "A"): ["127.0.1.5"],
    ("mx2.example.net", "A"): ["127.0.1.6"],
    ("mx2.example.net", "AAAA"): ["::1"],
    ("backup.example.net", "A"): ["127.0.1.7"],
    ("null.example", "MX"): ["0 ."],
    ("implicit.example", "A"): ["127.0.1.9"],
    ("txt-only.example", "TXT"): ["v=spf1 -all"],
    ("dangling.example", "MX"): ["10 nowhere.dangling.example."],
    ("broken.example", "MX"): ["10 mx1.example.net."],
    ("xn--bcher-kva.example", "MX"): ["5 mx1.example.net."],
    ("alias.example", "CNAME"): ["example.net."],
    ("big.example", "MX"): ["10 many.big.example."],
    ("many.big.example", "A"): [f"127.0.2.{i}" for i in range(1, 121)],
    ("s1._domainkey.example.com", "TXT"): ['"v=DKIM1; k=rsa; " "p=MIIBIjANBgkq"'],
}


@pytest.fixture
async def server() -> AsyncIterator[LoopbackDnsServer]:
    async with LoopbackDnsServer(RECORDS, host=DNS_HOST, ttl=60) as running:
        yield running


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(0.0)


@pytest.fixture
def resolver(server: LoopbackDnsServer, clock: FakeClock) -> MxResolver:
    return MxResolver([(server.host, server.port)], timeout=3.0, clock=clock, rng=random.Random(7))


def mx_queries(server: LoopbackDnsServer, name: str) -> int:
    return sum(1 for _, qname, qtype in server.queries if qname == name and qtype == "MX")


async def test_server_binds_udp_and_tcp_to_the_same_port(server: LoopbackDnsServer) -> None:
    assert server.port > 0
    query = dns.message.make_query("mx1.example.net", "A")
    over_udp = await dns.asyncquery.udp(query, server.host, port=server.port, timeout=3)
    over_tcp = await dns.asyncquery.tcp(query, server.host, port=server.port, timeout=3)
    assert over_udp.answer == over_tcp.answer
    assert over_udp.answer[0][0].to_text() == "127.0.1.5"


async def test_mx_order_and_fallback_list(resolver: MxResolver) -> None:
    targets = await resolver.targets("example.net")
    assert [t.preference for t in targets] == [10, 10, 10, 20]
    assert {t.host for t in targets[:3]} == {"mx1.example.net", "mx2.example.net"}
    assert targets[-1] == MxTarget("backup.example.net", "127.0.1.7", 25, 20)
    mx2 = [t.address for t in targets if t.host == "mx2.example.net"]
    assert mx2 == ["127.0.1.6", "::1"]


async def test_equal_preference_hosts_are_shuffled_per_call(resolver: MxResolver) -> None:
    firsts = {(await resolver.targets("example.net"))[0].host for _ in range(30)}
    assert firsts == {"mx1.example.net", "mx2.example.net"}


async def test_mx_port_applies_to_mx_and_implicit_mx(server: LoopbackDnsServer) -> None:
    resolver = MxResolver([(server.host, server.port)], mx_port=2525)
    for domain in ("example.net", "implicit.example"):
        assert {t.port for t in await resolver.targets(domain)} == {2525}


async def test_implicit_mx_from_a_record(resolver: MxResolver) -> None:
    assert await resolver.targets("implicit.example") == [
        MxTarget("implicit.example", "127.0.1.9", 25, 0)
    ]


async def test_cname_to_a_domain_with_mx(resolver: MxResolver) -> None:
    targets = await resolver.targets("alias.example")
    assert targets[-1].host == "backup.example.net"


async def test_null_mx(resolver: MxResolver) -> None:
    with pytest.raises(NullMx) as caught:
        await resolver.targets("null.example")
    assert caught.value.domain == "null.example"


async def test_nxdomain(resolver: MxResolver) -> None:
    with pytest.raises(NoSuchDomain) as caught:
        await resolver.targets("nosuch.example")
    assert str(caught.value) == "domain nosuch.example does not exist (NXDOMAIN)"


async def test_name_without_mx_or_address_is_permanent(resolver: MxResolver) -> None:
    with pytest.raises(NoMailHost):
        await resolver.targets("txt-only.example")


async def test_servfail_is_temporary(server: LoopbackDnsServer, resolver: MxResolver) -> None:
    server.fail("broken.example")
    with pytest.raises(TemporaryDnsError) as caught:
        await resolver.targets("broken.example")
    assert caught.value.domain == "broken.example"
    assert "SERVFAIL" in caught.value.reason


async def test_mx_host_without_address_is_temporary(resolver: MxResolver) -> None:
    with pytest.raises(TemporaryDnsError) as caught:
        await resolver.targets("dangling.example")
    assert "nowhere.dangling.example" in caught.value.reason


async def test_override_with_ip_skips_dns(server: LoopbackDnsServer) -> None:
    resolver = MxResolver(
        [(server.host, server.port)], overrides={"Example.NET": [("127.0.1.20", 2526)]}
    )
    assert await resolver.targets("example.net") == [MxTarget("127.0.1.20", "127.0.1.20", 2526, 0)]
    assert not server.queries


async def test_override_with_host_name_resolves_it(server: LoopbackDnsServer) -> None:
    overrides = {"elsewhere.example": [("mx2.example.net", 2527), ("127.0.1.21", 2528)]}
    resolver = MxResolver([(server.host, server.port)], overrides=overrides)
    assert await resolver.targets("elsewhere.example") == [
        MxTarget("mx2.example.net", "127.0.1.6", 2527, 0),
        MxTarget("mx2.example.net", "::1", 2527, 0),
        MxTarget("127.0.1.21", "127.0.1.21", 2528, 1),
    ]
    assert mx_queries(server, "elsewhere.example.") == 0


async def test_idn_domain_is_queried_as_a_label(
    server: LoopbackDnsServer, resolver: MxResolver
) -> None:
    targets = await resolver.targets("Bücher.Example")
    assert targets == [MxTarget("mx1.example.net", "127.0.1.5", 25, 5)]
    assert mx_queries(server, "xn--bcher-kva.example.") == 1


async def test_invalid_domain_is_refused_before_any_query(
    server: LoopbackDnsServer, resolver: MxResolver
) -> None:
    with pytest.raises(InvalidDomain):
        await resolver.targets("bad..example")
    assert not server.queries


async def test_large_answer_falls_back_to_tcp(
    server: LoopbackDnsServer, resolver: MxResolver
) -> None:
    targets = await resolver.targets("big.example")
    assert sorted(t.address for t in targets) == sorted(RECORDS[("many.big.example", "A")])
    assert ("tcp", "many.big.example.", "A") in server.queries


async def test_positive_answers_are_cached_until_their_ttl(
    server: LoopbackDnsServer, resolver: MxResolver, clock: FakeClock
) -> None:
    first = await resolver.targets("implicit.example")
    server.remove("implicit.example")
    clock.now += 59
    assert await resolver.targets("implicit.example") == first
    clock.now += 2
    with pytest.raises(NoSuchDomain):
        await resolver.targets("implicit.example")


async def test_ttl_is_capped_at_one_hour(server: LoopbackDnsServer, clock: FakeClock) -> None:
    server.ttl = 86400
    resolver = MxResolver([(server.host, server.port)], clock=clock)
    await resolver.targets("example.net")
    clock.now += 3599
    await resolver.targets("example.net")
    assert mx_queries(server, "example.net.") == 1
    clock.now += 2
    await resolver.targets("example.net")
    assert mx_queries(server, "example.net.") == 2


async def test_nxdomain_is_cached_by_the_soa_negative_ttl(
    server: LoopbackDnsServer, resolver: MxResolver, clock: FakeClock
) -> None:
    with pytest.raises(NoSuchDomain):
        await resolver.targets("later.example")
    server.add("later.example", "A", "127.0.1.30")
    with pytest.raises(NoSuchDomain):
        await resolver.targets("later.example")
    clock.now += 61
    assert [t.address for t in await resolver.targets("later.example")] == ["127.0.1.30"]


async def test_temporary_failures_are_cached_only_briefly(
    server: LoopbackDnsServer, resolver: MxResolver, clock: FakeClock
) -> None:
    server.fail("broken.example")
    with pytest.raises(TemporaryDnsError):
        await resolver.targets("broken.example")
    server.fail("broken.example", failing=False)
    with pytest.raises(TemporaryDnsError):
        await resolver.targets("broken.example")
    clock.now += 6
    assert (await resolver.targets("broken.example"))[0].address == "127.0.1.5"


async def test_concurrent_lookups_share_one_query(
    server: LoopbackDnsServer, resolver: MxResolver
) -> None:
    results = await asyncio.gather(*(resolver.targets("example.net") for _ in range(20)))
    assert all(len(targets) == 4 for targets in results)
    assert mx_queries(server, "example.net.") == 1


async def test_silent_nameserver_times_out_as_temporary() -> None:
    loop = asyncio.get_running_loop()
    silent, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, local_addr=("127.0.0.54", 0)
    )
    try:
        port = silent.get_extra_info("sockname")[1]
        resolver = MxResolver([("127.0.0.54", port)], timeout=0.3)
        with pytest.raises(TemporaryDnsError) as caught:
            await resolver.targets("example.net")
        assert "timed out" in caught.value.reason
    finally:
        silent.close()


def test_nameserver_must_be_an_ip_address() -> None:
    with pytest.raises(ValueError, match="IP address"):
        MxResolver([("dns.example", 53)])


# -- the server's own answers ------------------------------------------------------------------


async def ask(
    server: LoopbackDnsServer, name: str, rdtype: str, *, payload: int | None = None
) -> dns.message.Message:
    edns = None if payload is None else 0
    query = dns.message.make_query(name, rdtype, use_edns=edns, payload=payload or 1232)
    return await dns.asyncquery.udp(query, server.host, port=server.port, timeout=3)


async def test_answers_are_authoritative(server: LoopbackDnsServer) -> None:
    response = await ask(server, "MX1.EXAMPLE.NET", "A")
    assert response.flags & dns.flags.AA
    assert response.rcode() == dns.rcode.NOERROR


async def test_nodata_for_existing_name_and_nxdomain_for_unknown(
    server: LoopbackDnsServer,
) -> None:
    nodata = await ask(server, "mx1.example.net", "TXT")
    assert (nodata.rcode(), nodata.answer) == (dns.rcode.NOERROR, [])
    assert nodata.authority[0].rdtype == dns.rdatatype.SOA
    unknown = await ask(server, "unknown.example.net", "A")
    assert unknown.rcode() == dns.rcode.NXDOMAIN
    parent = await ask(server, "example", "A")
    assert parent.rcode() == dns.rcode.NOERROR


async def test_txt_values_bare_or_quoted(server: LoopbackDnsServer) -> None:
    spf = await ask(server, "txt-only.example", "TXT")
    assert spf.answer[0][0].strings == (b"v=spf1 -all",)
    dkim = await ask(server, "s1._domainkey.example.com", "TXT")
    assert b"".join(dkim.answer[0][0].strings) == b"v=DKIM1; k=rsa; p=MIIBIjANBgkq"


async def test_udp_truncation_honours_edns_size(server: LoopbackDnsServer) -> None:
    plain = await ask(server, "many.big.example", "A")
    assert plain.flags & dns.flags.TC
    assert not plain.answer
    small_edns = await ask(server, "many.big.example", "A", payload=1232)
    assert small_edns.flags & dns.flags.TC
    large_edns = await ask(server, "many.big.example", "A", payload=4096)
    assert not large_edns.flags & dns.flags.TC
    assert len(large_edns.answer[0]) == 120


def test_bad_record_is_rejected_when_added() -> None:
    with pytest.raises(dns.exception.DNSException):
        LoopbackDnsServer({("x.example", "A"): ["not-an-address"]})


@pytest.mark.slow
async def test_cli_serves_a_toml_zone(tmp_path: Path) -> None:
    zone = tmp_path / "zone.toml"
    zone.write_text(
        '[[record]]\nname = "cli.example"\ntype = "MX"\nvalue = "10 mx.cli.example."\n'
        '[[record]]\nname = "mx.cli.example"\ntype = "A"\nvalue = ["127.0.1.40", "127.0.1.41"]\n'
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.sandbox.dnsserver",
        "--listen", f"{DNS_HOST}:0", "--zone", str(zone),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
        port = int(line.split()[-2].rsplit(":", 1)[1])
        resolver = MxResolver([(DNS_HOST, port)])
        addresses = {t.address for t in await resolver.targets("cli.example")}
        assert addresses == {"127.0.1.40", "127.0.1.41"}
    finally:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0
