"""Pure parts of MX routing: ordering, null MX, address expansion, names, TTL cache, errors."""

from __future__ import annotations

import pickle
import random

import pytest

from gateway.dns.errors import (
    DnsError,
    InvalidDomain,
    NoMailHost,
    NoSuchDomain,
    NullMx,
    PermanentDnsError,
    TemporaryDnsError,
)
from gateway.dns.resolver import (
    MAX_MX_HOSTS,
    MxRecord,
    MxTarget,
    TtlCache,
    clamp_ttl,
    expand_targets,
    is_null_mx,
    normalize_domain,
    order_mx,
    parse_mx,
)
from tests.fakes import FakeClock


def mx(preference: int, host: str) -> MxRecord:
    return MxRecord(preference, host)


def test_order_sorts_by_preference() -> None:
    records = [mx(30, "c.example"), mx(10, "a.example"), mx(20, "b.example")]
    ordered = order_mx(records, random.Random(1))
    assert [r.exchange for r in ordered] == ["a.example", "b.example", "c.example"]


def test_equal_preference_is_shuffled_but_stays_in_its_group() -> None:
    records = [mx(10, f"h{i}.example") for i in range(4)] + [mx(20, "backup.example")]
    orders = {
        tuple(r.exchange for r in order_mx(records, random.Random(seed))) for seed in range(50)
    }
    assert len(orders) > 1
    for order in orders:
        assert order[-1] == "backup.example"
        assert sorted(order[:4]) == [f"h{i}.example" for i in range(4)]


def test_injected_random_makes_the_order_reproducible_whatever_the_dns_order() -> None:
    records = [mx(10, "a.example"), mx(10, "b.example"), mx(10, "c.example")]
    first = order_mx(records, random.Random(42))
    second = order_mx(list(reversed(records)), random.Random(42))
    assert first == second


def test_duplicate_hosts_keep_their_best_preference() -> None:
    records = [mx(20, "a.example"), mx(10, "a.example"), mx(15, "b.example")]
    ordered = order_mx(records, random.Random())
    assert ordered == [mx(10, "a.example"), mx(15, "b.example")]


def test_root_exchange_among_real_hosts_is_ignored() -> None:
    ordered = order_mx([mx(0, "."), mx(10, "a.example")], random.Random())
    assert ordered == [mx(10, "a.example")]


def test_host_count_is_capped() -> None:
    records = [mx(i, f"h{i}.example") for i in range(MAX_MX_HOSTS + 5)]
    assert len(order_mx(records, random.Random())) == MAX_MX_HOSTS


def test_null_mx_is_a_single_root_record() -> None:
    assert is_null_mx([mx(0, ".")])
    assert not is_null_mx([mx(0, "."), mx(10, "a.example")])
    assert not is_null_mx([mx(0, "a.example")])
    assert not is_null_mx([])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10 MX1.Example.NET.", mx(10, "mx1.example.net")),
        ("0 .", mx(0, ".")),
        ("5 relative.example", mx(5, "relative.example")),
    ],
)
def test_parse_mx(text: str, expected: MxRecord) -> None:
    assert parse_mx(text) == expected


def test_expand_keeps_order_ipv4_first_and_drops_repeated_addresses() -> None:
    hosts = [
        (mx(10, "a.example"), ["127.0.1.1", "::1"]),
        (mx(10, "b.example"), ["127.0.1.1", "127.0.1.2"]),
        (mx(20, "c.example"), []),
    ]
    assert expand_targets(hosts, 2525) == [
        MxTarget("a.example", "127.0.1.1", 2525, 10),
        MxTarget("a.example", "::1", 2525, 10),
        MxTarget("b.example", "127.0.1.2", 2525, 10),
    ]


@pytest.mark.parametrize(
    ("domain", "expected"),
    [
        ("Example.COM", "example.com"),
        ("example.com.", "example.com"),
        ("Bücher.Example", "xn--bcher-kva.example"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("localhost", "localhost"),
    ],
)
def test_normalize_domain(domain: str, expected: str) -> None:
    assert normalize_domain(domain) == expected


@pytest.mark.parametrize(
    "domain",
    [
        "",
        ".",
        "a..b.example",
        "[127.0.0.1]",
        "foo bar.example",
        "under_score.example",
        "-lead.example",
        "a" * 64 + ".example",
        "☃.example",
    ],
)
def test_invalid_domains_are_permanent_errors(domain: str) -> None:
    with pytest.raises(InvalidDomain) as caught:
        normalize_domain(domain)
    assert isinstance(caught.value, PermanentDnsError)
    assert caught.value.domain == domain


def test_cache_expires_with_the_injected_clock() -> None:
    clock = FakeClock(1000.0)
    cache: TtlCache[str, int] = TtlCache(clock)
    cache.put("a", 1, 60)
    clock.now += 59.9
    assert cache.get("a") == 1
    clock.now += 0.1
    assert cache.get("a") is None
    assert len(cache) == 0


def test_cache_ttl_zero_means_not_cached() -> None:
    cache: TtlCache[str, int] = TtlCache(FakeClock(1000.0))
    cache.put("a", 1, 60)
    cache.put("a", 2, 0)
    assert cache.get("a") is None


def test_cache_evicts_expired_entries_first_then_the_oldest() -> None:
    clock = FakeClock(1000.0)
    cache: TtlCache[str, int] = TtlCache(clock, max_entries=2)
    cache.put("short", 1, 1)
    cache.put("long", 2, 100)
    clock.now += 5
    cache.put("new", 3, 100)
    assert (cache.get("long"), cache.get("new")) == (2, 3)
    cache.put("newest", 4, 100)
    assert cache.get("long") is None
    assert (cache.get("new"), cache.get("newest")) == (3, 4)


@pytest.mark.parametrize(("ttl", "expected"), [(86400, 3600.0), (-5, 0.0), (300, 300.0)])
def test_clamp_ttl(ttl: float, expected: float) -> None:
    assert clamp_ttl(ttl) == expected


def test_error_reasons_name_the_domain() -> None:
    assert str(NoSuchDomain("example.invalid")) == (
        "domain example.invalid does not exist (NXDOMAIN)"
    )
    assert "null MX" in str(NullMx("example.org"))
    assert "no MX and no A/AAAA" in str(NoMailHost("example.org"))
    error = TemporaryDnsError("example.org", "timed out")
    assert (error.domain, error.reason, str(error)) == ("example.org", "timed out", "timed out")


def test_error_hierarchy() -> None:
    for cls in (NoSuchDomain, NullMx, NoMailHost, InvalidDomain):
        assert issubclass(cls, PermanentDnsError)
    assert issubclass(TemporaryDnsError, DnsError)
    assert not issubclass(TemporaryDnsError, PermanentDnsError)


def test_errors_survive_pickling() -> None:
    copy = pickle.loads(pickle.dumps(NoSuchDomain("example.invalid")))
    assert isinstance(copy, NoSuchDomain)
    assert (copy.domain, str(copy)) == ("example.invalid", str(NoSuchDomain("example.invalid")))
