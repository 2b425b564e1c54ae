"""What the scheduler records for shaped results: postponed is no attempt; retries per provider."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from gateway.queue.retry import RetrySchedule
from gateway.queue.scheduler import outcome_for
from gateway.records import AttemptResult, ClaimedDelivery, DeliveryState
from gateway.shaping.outcomes import postponed, shaped

T0 = datetime(2026, 11, 10, 12, 0, tzinfo=UTC)
CLAIM = ClaimedDelivery(delivery_id=7, queue_id="Q", recipient="a@gmail.test", domain="gmail.test",
                        mail_from="s@example.com", attempts=3, received_at=T0)
RETRY = RetrySchedule(first=60, factor=2, maximum=3600, max_age=86400)


def test_postponed_keeps_the_delivery_pending_until_the_given_time() -> None:
    now = T0 + timedelta(hours=1)
    until = (now + timedelta(minutes=30)).timestamp()
    outcome = outcome_for(CLAIM, postponed("gmail", until, "warm-up cap"), RETRY, now)
    assert outcome.state is DeliveryState.QUEUED  # storage applies it as a postponement
    assert outcome.next_attempt_at == now + timedelta(minutes=30)
    assert outcome.verdict is None


def test_postponed_to_the_past_is_due_now() -> None:
    now = T0 + timedelta(hours=1)
    outcome = outcome_for(CLAIM, postponed("gmail", T0.timestamp(), "suspended"), RETRY, now)
    assert outcome.next_attempt_at == now


def test_postponed_past_max_age_expires() -> None:
    now = T0 + timedelta(days=2)
    outcome = outcome_for(CLAIM, postponed("gmail", now.timestamp() + 60, "warm-up cap"), RETRY, now)
    assert outcome.state is DeliveryState.EXPIRED
    assert "held back by shaping: warm-up cap" in outcome.reply


def test_shaped_transient_defers_on_the_schedule_given() -> None:
    now = T0 + timedelta(minutes=5)
    result = shaped(AttemptResult("transient", "421 4.7.28 slow down", "mx", "127.0.0.10"), "gmail")
    outcome = outcome_for(CLAIM, result, RETRY, now)
    assert outcome.state is DeliveryState.DEFERRED
    assert outcome.next_attempt_at == now + timedelta(seconds=60 * 2**3)
    assert outcome.source_ip == "127.0.0.10"
