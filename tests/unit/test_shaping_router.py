"""Router and in-memory ThrottleStore with a fake clock: suspensions, warm-up caps, rules, limits."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from gateway.config.policy import Policy
from gateway.shaping.router import PoolSpec, Postpone, Router, SourceIp
from gateway.shaping.store import MemoryThrottleStore

NOW = datetime(2026, 11, 10, 12, 0, tzinfo=UTC).timestamp()
POLICY = Policy.model_validate({
    "providers": {
        "default": {"connection_limit": 2},
        "gmail": {"match_mx": ["google.com"], "provider_connection_limit": 3,
                  "rules": [{"match": r"4\.7\.28", "action": "suspend", "duration": "10m"},
                            {"match": "unusual rate", "action": "throttle", "rate": "1/min",
                             "duration": "5m"},
                            {"match": r"5\.7\.26", "action": "bounce"}]},
        "qq": {"match_domains": ["qq.com"], "pool": "overseas"},
    },
    "warmup": {"health": {"min_attempts": 4, "max_deferral_share": 0.25},
               "schedules": {"default": {"1": 2, "3": 5, "10": "unlimited"}}},
})
POOLS = {
    "default": PoolSpec("default", (SourceIp("127.0.0.10", "a.example", 1),
                                    SourceIp("127.0.0.11", "b.example", 1)), ("transactional",)),
    "bulk": PoolSpec("bulk", (SourceIp("127.0.0.12", "c.example", 1, date(2026, 11, 10)),
                              SourceIp("127.0.0.13", "d.example", 1)), ("marketing",)),
    "overseas": PoolSpec("overseas", (SourceIp("127.0.0.20", "o.example"),)),
}


class FakeClock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def router(clock: FakeClock) -> Router:
    return Router(POLICY, POOLS, MemoryThrottleStore(), clock)


def test_route_picks_provider_and_pool(router: Router) -> None:
    assert router.route("acme.org", ["aspmx.l.google.com"], "marketing").pool.name == "bulk"
    route = router.route("acme.org", ["aspmx.l.google.com"], "transactional")
    assert (route.provider, route.pool.name) == ("gmail", "default")
    assert router.route("qq.com", [], "marketing").pool.name == "overseas"  # provider binding wins
    assert router.route("x.example", [], "transactional").provider == "default"


async def test_round_robin_and_suspension_only_for_that_provider(router: Router) -> None:
    gmail = router.route("gmail.com", ["gmail-smtp-in.l.google.com"], "transactional")
    other = router.route("x.example", ["mx.x.example"], "transactional")
    picks = [await router.choose(gmail) for _ in range(4)]
    assert {p.address for p in picks if isinstance(p, SourceIp)} == {"127.0.0.10", "127.0.0.11"}
    reaction = await router.observe("gmail", "127.0.0.10", "421-4.7.28 unusual rate of unsolicited mail",
                                    "transient")
    assert reaction.suspended
    for _ in range(3):
        pick = await router.choose(gmail)
        assert isinstance(pick, SourceIp) and pick.address == "127.0.0.11"
    assert {getattr(await router.choose(other), "address", None) for _ in range(4)} == {
        "127.0.0.10", "127.0.0.11"}


async def test_all_suspended_postpones_until_first_release(router: Router, clock: FakeClock) -> None:
    gmail = router.route("gmail.com", ["x.google.com"], "transactional")
    await router.observe("gmail", "127.0.0.10", "421 4.7.28 slow down", "transient")
    clock.now += 60
    await router.observe("gmail", "127.0.0.11", "421 4.7.28 slow down", "transient")
    choice = await router.choose(gmail)
    assert isinstance(choice, Postpone) and choice.until == NOW + 600
    clock.now = NOW + 601
    assert isinstance(await router.choose(gmail), SourceIp)


async def test_throttle_and_bounce_rules(router: Router, clock: FakeClock) -> None:
    assert (await router.observe("gmail", "127.0.0.10", "550-5.7.26 unauthenticated", "permanent")).bounce
    await router.observe("gmail", "127.0.0.10", "421 unusual rate", "transient")
    slow = await router.store.slowdown("gmail", "127.0.0.10", clock.now)
    assert slow is not None and slow.rate.per_second == pytest.approx(1 / 60)
    assert await router.store.slowdown("gmail", "127.0.0.10", clock.now + 301) is None
    assert (await router.observe("gmail", "127.0.0.10", "250 ok", "delivered")).rule is None


async def test_warmup_cap_moves_mail_to_warm_ip_then_waits(router: Router, clock: FakeClock) -> None:
    bulk = router.route("gmail.com", ["x.google.com"], "marketing")
    picks = [await router.choose(bulk) for _ in range(6)]
    addresses = [p.address for p in picks if isinstance(p, SourceIp)]
    assert addresses.count("127.0.0.12") == 2  # day 1 cap
    assert addresses.count("127.0.0.13") == 4  # the warm IP takes the rest
    cold_only = Router(POLICY, {"bulk": PoolSpec("bulk", (POOLS["bulk"].ips[0],), ("marketing",))},
                       MemoryThrottleStore(), clock)
    route = cold_only.route("gmail.com", ["x.google.com"], "marketing")
    assert all([isinstance(await cold_only.choose(route), SourceIp) for _ in range(2)])
    waiting = await cold_only.choose(route)
    assert isinstance(waiting, Postpone) and "warm-up cap" in waiting.reason
    assert waiting.until == datetime(2026, 11, 11, tzinfo=UTC).timestamp()


async def test_warmup_pauses_when_provider_defers(router: Router, clock: FakeClock) -> None:
    ip = "127.0.0.12"
    for reply, kind in [("250 ok", "delivered"), ("451 try later", "transient"),
                        ("451 try later", "transient"), ("250 ok", "delivered")]:
        await router.observe("gmail", ip, reply, kind)
    assert await router.store.held_days(ip, "gmail") == 1  # 2 of 4 deferred > 25%: paused
    await router.observe("gmail", ip, "451 again", "transient")
    assert await router.store.held_days(ip, "gmail") == 1  # one decision per day
    assert await router.store.held_days("127.0.0.13", "gmail") == 0  # warm IPs are not judged


async def test_connection_limits_per_ip_and_provider() -> None:
    store = MemoryThrottleStore()
    assert await store.open_connection("gmail", "a", 2, 3)
    assert await store.open_connection("gmail", "a", 2, 3)
    assert not await store.open_connection("gmail", "a", 2, 3)  # per-IP limit
    assert await store.open_connection("gmail", "b", 2, 3)
    assert not await store.open_connection("gmail", "b", 2, 3)  # provider limit across IPs
    assert await store.open_connection("yahoo", "a", 2, None)  # other providers unaffected
    await store.close_connection("gmail", "a")
    assert await store.connections("gmail") == 2
    assert await store.open_connection("gmail", "b", 2, 3)


async def test_provider_pause_expires(router: Router, clock: FakeClock) -> None:
    until = await router.pause("gmail", POLICY.profile("gmail"))
    assert until == NOW + 60
    assert await router.store.provider_paused_until("gmail", clock.now) == until
    assert await router.store.provider_paused_until("yahoo", clock.now) is None
    clock.now = until
    assert await router.store.provider_paused_until("gmail", clock.now) is None
