"""Shaping inside the delivery agent, without sockets: staggered postponements, per-site
pauses, both-or-neither rate tokens, released warm-up sends, jobs that always get an answer."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import aiosmtplib
import pytest

from gateway.config.policy import Policy
from gateway.delivery.agent import DeliveryAgent, Job, Stagger, _Lane
from gateway.dns.resolver import MxResolver, MxTarget
from gateway.queue.retry import RetrySchedule
from gateway.queue.scheduler import outcome_for
from gateway.records import ClaimedDelivery, DeliveryState
from gateway.shaping.matching import ProviderMatcher
from gateway.shaping.outcomes import POSTPONED, ShapedResult, postponed
from gateway.shaping.router import PoolSpec, Router, SiteFailures, SourceIp
from gateway.shaping.store import MemoryThrottleStore

NOW = datetime(2026, 11, 10, 12, 0, tzinfo=UTC).timestamp()
POLICY = Policy.model_validate({
    "providers": {
        "default": {"connection_limit": 2, "provider_pause": "1m"},
        "microsoft": {"match_mx": ["protection.outlook.com"], "max_message_rate": "10/s",
                      "provider_max_message_rate": "1/min"},
        "apple": {"match_mx": ["icloud.com"], "provider_max_message_rate": "10/s", "connection_limit": 10},
    },
    "warmup": {"schedules": {"default": {"1": 5}}},
})
COLD = SourceIp("127.0.0.12", "c.example", 1, date(2026, 11, 10))
POOLS = {"default": PoolSpec("default", (SourceIp("127.0.0.10", "a.example"), COLD))}


class FakeClock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


class FixedMx(MxResolver):
    def __init__(self, host: str) -> None:
        self.host = host

    async def targets(self, domain: str) -> list[MxTarget]:
        return [MxTarget(self.host, "127.0.1.99", 25, 10)]


def _agent(host: str = "mx1.icloud.com") -> tuple[DeliveryAgent, FakeClock]:
    clock = FakeClock()
    router = Router(POLICY, POOLS, MemoryThrottleStore(), clock)
    return DeliveryAgent(FixedMx(host), router, clock=clock, max_in_flight=300), clock


def test_stagger_gives_each_postponed_message_its_own_time() -> None:
    stagger = Stagger()
    times = [stagger.place("apple", NOW + 5, 0.1) for _ in range(4)]
    assert times == pytest.approx([NOW + 5, NOW + 5.1, NOW + 5.2, NOW + 5.3])
    assert stagger.place("gmail", NOW + 1, 0.5) == NOW + 1  # keys are independent
    assert stagger.place("apple", NOW + 60, 0.1) == NOW + 60  # a later start (a pause) moves on
    stagger.forget_before(NOW + 61)
    assert stagger.tails == {}


async def test_full_backlog_postpones_at_the_drain_rate() -> None:
    agent, _ = _agent()
    route = agent.router.route("icloud.test", ["mx1.icloud.com"], "marketing")
    site = ("mx1.icloud.com:25",)
    limit = agent._backlog_limit(route)
    assert limit == 100  # 10 s at 10/s, below a third of 300 in flight
    agent._backlog["apple"] = limit
    results = [await agent._lane_for(route, site, "icloud.test", 1) for _ in range(3)]
    until = [r.postpone_until.timestamp() for r in results if isinstance(r, ShapedResult) and r.postpone_until]
    assert until == pytest.approx([NOW + 5.0, NOW + 5.1, NOW + 5.2])


def test_backlog_is_capped_below_the_in_flight_limit() -> None:
    agent, _ = _agent()
    route = agent.router.route("other.test", ["mx.other.test"], "marketing")
    assert agent._backlog_limit(route) == 64  # 2 connections x 2 IPs x 16 waiting each
    wide = Policy.model_validate({"providers": {"default": {"connection_limit": 50}}})
    agent.router.update_policy(wide)
    assert agent._backlog_limit(agent.router.route("other.test", ["mx.other.test"], "marketing")) == 100


def test_site_failures_count_distinct_sites_in_a_window() -> None:
    failures = SiteFailures()
    assert failures.add("mx:a", "127.0.0.10", NOW, 60) == 1
    assert failures.add("mx:a", "127.0.0.11", NOW + 1, 60) == 1  # same site from another IP
    assert failures.add("mx:b", "127.0.0.10", NOW + 2, 60) == 2
    assert failures.add("mx:c", "127.0.0.10", NOW + 100, 60) == 1  # the others aged out


async def test_one_failing_tenant_pauses_its_site_not_the_provider() -> None:
    clock = FakeClock()
    router = Router(POLICY, POOLS, MemoryThrottleStore(), clock)
    profile = POLICY.profile("microsoft")
    await router.site_failed("microsoft", "mx:tenant-a.mail.protection.outlook.com:25", "127.0.0.10", profile)
    await router.site_failed("microsoft", "mx:tenant-a.mail.protection.outlook.com:25", "127.0.0.11", profile)
    store = router.store
    assert await store.provider_paused_until("mx:tenant-a.mail.protection.outlook.com:25", NOW) == NOW + 60
    assert await store.provider_paused_until("microsoft", NOW) is None
    await router.site_failed("microsoft", "mx:tenant-b.mail.protection.outlook.com:25", "127.0.0.10", profile)
    assert await store.provider_paused_until("microsoft", NOW) == NOW + 60


async def test_unmatched_sites_never_pause_the_default_profile() -> None:
    router = Router(POLICY, POOLS, MemoryThrottleStore(), FakeClock())
    for site in ("mx:a.test:25", "mx:b.test:25", "mx:c.test:25"):
        await router.site_failed("default", site, "127.0.0.10", POLICY.default)
    assert await router.store.provider_paused_until("default", NOW) is None


async def test_the_ip_token_is_refunded_when_the_provider_bucket_is_empty() -> None:
    agent, _ = _agent("tenant.mail.protection.outlook.com")
    route = agent.router.route("corp.test", ["tenant.mail.protection.outlook.com"], "marketing")
    store = agent.router.store
    assert isinstance(store, MemoryThrottleStore)
    assert await store.take_token("provider:microsoft", POLICY.profile("microsoft").provider_max_message_rate
                                  or pytest.fail("rate"), NOW) == 0.0  # the only token of the minute
    lane = _Lane(("tenant:25",), "corp.test", route, POOLS["default"].ips[0])
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(agent._wait_for_rate(lane, None), 0.05)
    assert store._buckets["ip:microsoft:127.0.0.10"].tokens == pytest.approx(
        store._buckets["ip:microsoft:127.0.0.10"].burst)


async def test_released_warmup_sends_free_the_cap_again() -> None:
    router = Router(POLICY, POOLS, MemoryThrottleStore(), FakeClock())
    day = date(2026, 11, 10)
    for _ in range(5):
        assert await router.store.reserve_warmup(COLD.key, "apple", day, 5)
    assert not await router.store.reserve_warmup(COLD.key, "apple", day, 5)
    await router.release(COLD, "apple", day)
    assert await router.store.warmup_count(COLD.key, "apple", day) == 4
    assert await router.store.reserve_warmup(COLD.key, "apple", day, 5)


async def test_an_exception_around_a_job_answers_it_as_transient(monkeypatch: Any) -> None:
    agent, _ = _agent()

    async def broken(*args: object) -> float | None:
        raise RuntimeError("store down")

    monkeypatch.setattr(agent.router.store, "suspended_until", broken)
    monkeypatch.setattr(agent.router, "choose", _first_ip)
    try:
        result = await asyncio.wait_for(agent.deliver("s@example.com", "u@icloud.test", "icloud.test",
                                                      b"Subject: x\r\n\r\n", b"hi\r\n"), 5)
    finally:
        await agent.close()
    assert (result.kind, result.reply) == ("transient", "internal error: RuntimeError")


async def _first_ip(route: object) -> SourceIp:
    return POOLS["default"].ips[0]


def test_postponement_never_passes_the_queue_age() -> None:
    received = datetime.fromtimestamp(NOW, UTC)
    claim = ClaimedDelivery(delivery_id=1, queue_id="q", recipient="u@x.test", domain="x.test",
                            mail_from="s@x.test", attempts=0, received_at=received)
    retry = RetrySchedule(max_age=3600.0)
    midnight = NOW + 86400
    outcome = outcome_for(claim, postponed("apple", midnight, "warm-up cap"), retry, received)
    assert outcome.state is DeliveryState.QUEUED
    assert outcome.next_attempt_at == received + timedelta(hours=1)
    assert outcome.provider == "apple"
    late = outcome_for(claim, postponed("apple", midnight, "warm-up cap"), retry, received + timedelta(hours=1))
    assert late.state is DeliveryState.EXPIRED and "held back by shaping" in late.reply


def test_matcher_takes_the_longest_suffix_with_one_lookup_per_label() -> None:
    matcher = ProviderMatcher({"microsoft": ["protection.outlook.com"], "eu": ["eu.protection.outlook.com"],
                               "twin": ["protection.outlook.com"]}, {"gmx": ["gmx.net", ".web.de"]})
    assert matcher.match("x.test", ["a.eu.protection.outlook.com"]) == "eu"
    assert matcher.match("x.test", ["a.protection.outlook.com."]) == "microsoft"  # first listed wins
    assert matcher.match("notprotection.outlook.com.test", []) == "default"
    assert matcher.match("WEB.DE", []) == "gmx"
    assert matcher.reason("web.de") == "recipient domain web.de matches provider gmx"


def test_route_builds_its_reason_only_when_asked() -> None:
    calls: list[str] = []
    router = Router(POLICY, POOLS, MemoryThrottleStore(), FakeClock())
    original = router.policy.matcher.reason

    def counted(domain: str, mx_hosts: Sequence[str] = ()) -> str:
        calls.append(domain)
        return original(domain, mx_hosts)

    object.__setattr__(router.policy.matcher, "reason", counted)
    route = router.route("icloud.test", ["mx1.icloud.com"], "marketing")
    assert calls == []
    assert route.reason == "MX host mx1.icloud.com matches provider apple"
    assert router.rules("apple") is router.rules("apple")  # compiled once per policy


def test_freed_slots_go_to_lanes_with_transactional_mail_first(monkeypatch: Any) -> None:
    agent, _ = _agent()
    route = agent.router.route("icloud.test", ["mx1.icloud.com"], "marketing")
    bulk = _Lane(("mx1:25",), "icloud.test", route, POOLS["default"].ips[0])
    urgent = _Lane(("mx2:25",), "icloud.test", route, POOLS["default"].ips[1])
    future: asyncio.Future[Any] = asyncio.Future(loop=asyncio.new_event_loop())
    job = Job("s@x.test", "u@icloud.test", b"", b"", False, future)
    bulk.put(1, 1, job)
    urgent.put(1, 2, job)
    urgent.put(0, 3, job)
    agent._waiting["apple"] = {bulk, urgent}
    assert agent._others_waiting(_Lane(("mx3:25",), "icloud.test", route, POOLS["default"].ips[0]))
    staffed: list[_Lane] = []
    monkeypatch.setattr(agent, "_staff", staffed.append)
    agent._restaff_waiting("apple")
    assert staffed == [urgent, bulk]
    assert (urgent.urgent, bulk.urgent) == (1, 0)
    future.get_loop().close()


async def test_a_refused_connection_is_not_tried_again_without_tls(monkeypatch: Any) -> None:
    attempts: list[bool] = []

    async def refused(self: aiosmtplib.SMTP, **kwargs: Any) -> None:
        attempts.append(True)
        raise aiosmtplib.SMTPConnectError("Error connecting to 127.0.1.98 on port 25: refused")

    monkeypatch.setattr(aiosmtplib.SMTP, "connect", refused)
    agent, _ = _agent()
    target = MxTarget("mx1.icloud.com", "127.0.1.98", 25, 10)
    opened = await agent._connect(target, POOLS["default"].ips[0], POLICY.profile("apple"))
    assert isinstance(opened, str) and "refused" in opened
    assert len(attempts) == 1  # opportunistic TLS falls back only when STARTTLS failed


async def test_a_copy_withdrawn_while_waiting_goes_back_unsent(monkeypatch: Any) -> None:
    """A campaign paused while its copies wait in a lane: the worker puts them back (no
    connection, no attempt), and the next claim holds them."""
    agent, _ = _agent()
    monkeypatch.setattr(agent.router, "choose", _first_ip)
    try:
        result = await asyncio.wait_for(agent.deliver("s@example.com", "u@icloud.test", "icloud.test",
                                                      b"Subject: x\r\n\r\n", b"hi\r\n",
                                                      withdrawn=lambda: True), 5)
    finally:
        await agent.close()
    assert isinstance(result, ShapedResult) and result.kind == POSTPONED
    assert result.reply == "withdrawn before sending: campaign paused"
    assert await agent.router.store.connections("apple") == 0
