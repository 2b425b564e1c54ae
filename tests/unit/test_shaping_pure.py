"""Provider matching, rates and token buckets, weighted round robin, warm-up, automation rules."""

from __future__ import annotations

import re
from datetime import date, timedelta

import pytest

from gateway.shaping.automation import AutomationRule, first_match
from gateway.shaping.matching import ProviderMatcher
from gateway.shaping.rates import Rate, TokenBucket, parse_rate
from gateway.shaping.store import MemoryThrottleStore
from gateway.shaping.warmup import (
    HealthRule,
    WarmupSchedule,
    assess,
    counts_as_deferral,
    day_index,
    held_after,
)
from gateway.shaping.wrr import SmoothWrr

MATCHER = ProviderMatcher(
    mx={"gmail": ["google.com"], "microsoft": ["protection.outlook.com", "outlook.com"],
        "eop-special": ["eu.protection.outlook.com"]},
    domains={"gmail": ["gmail.com"], "microsoft": ["hotmail.com"]})


@pytest.mark.parametrize(("domain", "mx", "expected"), [
    ("gmail.com", ["gmail-smtp-in.l.google.com"], "gmail"),
    ("acme.org", ["aspmx.l.google.com", "alt1.aspmx.l.google.com"], "gmail"),  # Google Workspace
    ("acme.org", ["acme-org.mail.protection.outlook.com"], "microsoft"),  # Microsoft 365
    ("acme.eu", ["acme-eu.eu.protection.outlook.com"], "eop-special"),  # longest suffix wins
    ("hotmail.com", [], "microsoft"),  # no MX known: recipient domain
    ("hotmail.com", ["mx.unknown.example"], "microsoft"),  # MX matches nothing: domain fallback
    ("notgoogle.com", ["mx.notgoogle.com"], "default"),  # a suffix matches whole labels only
    ("acme.org", ["ASPMX.L.GOOGLE.COM."], "gmail"),
])
def test_provider_matching(domain: str, mx: list[str], expected: str) -> None:
    assert MATCHER.match(domain, mx) == expected


def test_match_reason_names_the_rule() -> None:
    assert "MX host aspmx.l.google.com" in MATCHER.reason("acme.org", ["aspmx.l.google.com"])
    assert "default" in MATCHER.reason("acme.org", ["mx.acme.org"])


@pytest.mark.parametrize(("text", "per_second"), [
    ("5/s", 5.0), ("100/min", 100 / 60), ("3600/h", 1.0), ("86400/d", 1.0), ("1.5/sec", 1.5)])
def test_parse_rate(text: str, per_second: float) -> None:
    assert parse_rate(text).per_second == pytest.approx(per_second)


@pytest.mark.parametrize("text", ["5", "5/fortnight", "0/s", "-1/s", "/s", 5])
def test_parse_rate_refuses(text: object) -> None:
    with pytest.raises(ValueError, match="bad rate"):
        parse_rate(text)


def test_rate_text_round_trips() -> None:
    assert str(parse_rate("100/min")) == "100/min"


def test_token_bucket_allows_burst_then_rate() -> None:
    bucket = TokenBucket.full(Rate(5, 1), now=0.0)  # burst 5
    assert [bucket.take(0.0) for _ in range(5)] == [0.0] * 5
    assert bucket.take(0.0) == pytest.approx(0.2)
    assert bucket.take(0.2) == 0.0
    assert bucket.take(0.2) > 0


def test_token_bucket_rate_over_time_with_fake_clock() -> None:
    bucket = TokenBucket.full(parse_rate("60/min"), now=0.0)
    now, sent = 0.0, 0
    while now < 60.0:
        wait = bucket.take(now)
        if wait == 0.0:
            sent += 1
        else:
            now += wait
    assert 60 <= sent <= 62  # the rate plus the initial burst of 2 (1/s + 1)


def test_hourly_rate_does_not_burst_an_hour_at_once() -> None:
    bucket = TokenBucket.full(parse_rate("3600/h"), now=0.0)
    taken = sum(1 for _ in range(100) if bucket.take(0.0) == 0.0)
    assert taken == 2


def test_token_bucket_retune_keeps_earned_tokens_within_new_burst() -> None:
    bucket = TokenBucket.full(Rate(10, 1), now=0.0)
    bucket.retune(Rate(1, 1))
    assert bucket.tokens == 1.0
    assert bucket.take(0.0) == 0.0


def test_wrr_follows_weights_smoothly() -> None:
    wrr = SmoothWrr({"a": 5, "b": 1, "c": 1})
    picks = [wrr.pick({"a", "b", "c"}) for _ in range(7)]
    assert picks.count("a") == 5 and picks.count("b") == 1 and picks.count("c") == 1
    assert picks[:3] != ["a", "a", "a"] or picks[3] != "a"  # spread, not a burst of five


def test_wrr_skips_ineligible_and_zero_weight() -> None:
    wrr = SmoothWrr({"a": 1, "b": 1, "off": 0})
    assert {wrr.pick({"b", "off"}) for _ in range(4)} == {"b"}
    assert wrr.pick(set()) is None
    assert wrr.pick({"off"}) is None


def test_wrr_equal_weights_round_robin() -> None:
    wrr = SmoothWrr({"a": 1, "b": 1, "c": 1})
    picks = [wrr.pick({"a", "b", "c"}) for _ in range(6)]
    assert sorted(picks[:3]) == ["a", "b", "c"] and sorted(picks[3:]) == ["a", "b", "c"]


SCHEDULE = WarmupSchedule.from_days({1: 50, 2: 100, 5: 500, 30: None})


@pytest.mark.parametrize(("day", "cap"), [(1, 50), (2, 100), (4, 100), (5, 500), (29, 500), (30, None),
                                          (400, None)])
def test_warmup_cap_lookup(day: int, cap: int | None) -> None:
    assert SCHEDULE.cap(day) == cap


def test_warmup_day_index() -> None:
    start = date(2026, 11, 1)
    assert day_index(start, date(2026, 11, 1)) == 1
    assert day_index(start, date(2026, 11, 10)) == 10
    assert day_index(start, date(2026, 10, 20)) == 1  # not started yet: day 1's cap
    assert day_index(start, date(2026, 11, 10), held_days=4) == 6
    assert day_index(start, date(2026, 11, 3), held_days=10) == 1


def test_warmup_health_decisions() -> None:
    rule = HealthRule(max_deferral_share=0.1, min_attempts=20, action="pause", step_back_days=3)
    assert assess(rule, 10, 10) == "healthy"  # too few attempts to judge
    assert assess(rule, 100, 10) == "healthy"
    assert assess(rule, 100, 11) == "pause"
    assert held_after(rule, "pause", 0) == 1  # tomorrow repeats today
    back = HealthRule(action="step_back", step_back_days=3)
    assert assess(back, 50, 25) == "step_back"
    assert held_after(back, "step_back", 1) == 5
    assert held_after(back, "healthy", 2) == 2


async def _decide(rule: HealthRule, held_before: int, on: date) -> MemoryThrottleStore:
    store = MemoryThrottleStore()
    if held_before:
        await store.hold("127.0.0.12", "gmail", on - timedelta(days=7), held_before)
    decision = "pause" if rule.action == "pause" else "step_back"
    assert await store.hold("127.0.0.12", "gmail", on, held_after(rule, decision, held_before))
    return store


@pytest.mark.parametrize(("rule", "tomorrow_day"), [
    (HealthRule(action="pause"), 5),  # tomorrow repeats today's day 5
    (HealthRule(action="step_back", step_back_days=3), 2),  # exactly 3 days back from day 5
    (HealthRule(action="step_back", step_back_days=1), 4),
])
async def test_a_decision_leaves_today_alone_and_counts_from_tomorrow(rule: HealthRule, tomorrow_day: int) -> None:
    start, today = date(2026, 11, 1), date(2026, 11, 5)
    store = await _decide(rule, 0, today)
    held_today = await store.held_days("127.0.0.12", "gmail", today)
    assert day_index(start, today, held_today) == 5 and SCHEDULE.cap(5) == 500  # cap unchanged today
    held_tomorrow = await store.held_days("127.0.0.12", "gmail", today + timedelta(days=1))
    assert day_index(start, today + timedelta(days=1), held_tomorrow) == tomorrow_day
    assert not await store.hold("127.0.0.12", "gmail", today, 99)  # one decision per day


async def test_a_second_decision_keeps_earlier_held_days_until_it_counts() -> None:
    start, today = date(2026, 11, 1), date(2026, 11, 20)
    store = await _decide(HealthRule(action="pause"), 4, today)  # held 4 since a week ago
    assert day_index(start, today, await store.held_days("127.0.0.12", "gmail", today)) == 16
    assert day_index(start, today + timedelta(days=1),
                     await store.held_days("127.0.0.12", "gmail", today + timedelta(days=1))) == 16
    assert await store.held_days("127.0.0.12", "gmail") == 5  # the base of the next decision


async def test_snapshot_keeps_the_latest_decision_and_restore_cannot_decide_twice() -> None:
    today = date(2026, 11, 20)
    store = await _decide(HealthRule(action="pause"), 4, today)
    _, holds = store.warmup_snapshot(today)
    assert holds == {("127.0.0.12", "gmail"): (5, today)}
    restarted = MemoryThrottleStore()
    restarted.restore_warmup(today, {}, {("127.0.0.12", "gmail"): (2, date(2026, 11, 1))})
    restarted.restore_warmup(today, {}, holds)
    restarted.restore_warmup(today, {}, {("127.0.0.12", "gmail"): (3, date(2026, 11, 10))})
    assert restarted.warmup_snapshot(today)[1] == holds  # the latest day wins, whatever the order
    assert not await restarted.hold("127.0.0.12", "gmail", today, 6)  # no second hold today
    assert await restarted.held_days("127.0.0.12", "gmail", today + timedelta(days=1)) == 5


@pytest.mark.parametrize(("kind", "action", "counts"), [
    ("transient", None, True), ("transient", "suspend", True), ("permanent", "throttle", True),
    ("permanent", "bounce", False), ("transient", "bounce", False), ("permanent", None, False),
    ("delivered", None, False),
])
def test_bounce_rule_matches_are_not_deferrals(kind: str, action: str | None, counts: bool) -> None:
    assert counts_as_deferral(kind, action) is counts


RULES = (
    AutomationRule(re.compile(r"4\.7\.28", re.I), "suspend", 3600.0, name="gmail rate"),
    AutomationRule(re.compile(r"unusual rate", re.I), "throttle", 600.0, Rate(10, 60), "outlook"),
    AutomationRule(re.compile(r"5\.7\.26", re.I), "bounce", name="unauthenticated"),
    AutomationRule(re.compile(r"4\.7\.\d+", re.I), "throttle", 60.0, Rate(1, 1), "any 4.7"),
)


@pytest.mark.parametrize(("reply", "expected"), [
    ("421-4.7.28 Gmail has detected an unusual rate of unsolicited mail / 4.7.28 ...", "gmail rate"),
    ("550-5.7.26 Unauthenticated email from example.com is not accepted", "unauthenticated"),
    ("421 RP-001 (BAY004-MC1F15) Unfortunately, some messages from 127.0.0.10 weren't sent: "
     "unusual rate of mail", "outlook"),
    ("451 4.7.650 The mail server [127.0.0.10] has been temporarily rate limited", "any 4.7"),
    ("250 2.0.0 OK", None),
])
def test_first_matching_rule_wins(reply: str, expected: str | None) -> None:
    found = first_match(RULES, reply)
    assert (found.name if found else None) == expected
