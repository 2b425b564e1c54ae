"""The public listener's rate limit (pure, clock passed in)."""

from __future__ import annotations

from gateway.web.public import RateLimit


def test_rate_limit_allows_a_burst_then_refills() -> None:
    now = [0.0]
    limit = RateLimit(burst=3, per_second=1.0, clock=lambda: now[0])
    assert [limit.allow("192.0.2.1") for _ in range(4)] == [True, True, True, False]
    assert limit.allow("192.0.2.2")  # another address has its own bucket
    now[0] = 1.0
    assert limit.allow("192.0.2.1") and not limit.allow("192.0.2.1")


def test_only_mail_to_unsubscribe_addresses_is_taken_as_an_unsubscribe() -> None:
    from gateway.feedback.inbound import unsubscribe_tokens

    domain = "bounces.example.com"
    assert unsubscribe_tokens(("unsubscribe+abc@bounces.example.com",), domain) == ["abc"]
    assert unsubscribe_tokens(("UNSUBSCRIBE+ABC@Bounces.Example.com",), domain) == ["ABC"]
    assert unsubscribe_tokens(("unsubscribe+abc@bounces.example.com", "b+xyz@bounces.example.com"), domain) is None
    assert unsubscribe_tokens(("unsubscribe+abc@elsewhere.example",), domain) is None
    assert unsubscribe_tokens((), domain) is None


def test_blocked_looks_without_spending() -> None:
    limit = RateLimit(burst=1, per_second=0.001, clock=lambda: 0.0)
    assert not limit.blocked("192.0.2.9") and not limit.blocked("192.0.2.9")
    assert limit.allow("192.0.2.9")
    assert limit.blocked("192.0.2.9")
