from __future__ import annotations

from datetime import UTC, datetime, timedelta

from gateway.queue.retry import RetrySchedule
from gateway.queue.scheduler import outcome_for
from gateway.records import AttemptResult, ClaimedDelivery, DeliveryState, new_queue_id

T0 = datetime(2026, 11, 24, tzinfo=UTC)


def test_postfix_like_backoff() -> None:
    schedule = RetrySchedule()
    assert [schedule.delay(n) for n in range(1, 8)] == [300, 600, 1200, 2400, 4800, 9600, 14400]
    assert schedule.delay(10_000) == 14400


def test_expiry_after_max_age() -> None:
    schedule = RetrySchedule(max_age=3600)
    assert schedule.next_attempt(attempts_done=1, received_at=T0, now=T0) == T0 + timedelta(minutes=5)
    assert schedule.next_attempt(attempts_done=9, received_at=T0, now=T0 + timedelta(hours=1)) is None


def _claim(attempts: int = 0) -> ClaimedDelivery:
    return ClaimedDelivery(delivery_id=1, queue_id="Q", recipient="a@b.example", domain="b.example",
                           mail_from="s@x.example", attempts=attempts, received_at=T0)


def test_outcomes_by_reply_kind() -> None:
    schedule = RetrySchedule()
    now = T0 + timedelta(minutes=1)
    assert outcome_for(_claim(), AttemptResult("delivered", "250 ok"), schedule, now).state \
        is DeliveryState.DELIVERED
    assert outcome_for(_claim(), AttemptResult("permanent", "550 5.1.1 no"), schedule, now).state \
        is DeliveryState.BOUNCED
    deferred = outcome_for(_claim(2), AttemptResult("transient", "451 later"), schedule, now)
    assert deferred.state is DeliveryState.DEFERRED
    assert deferred.next_attempt_at == now + timedelta(seconds=1200)
    expired = outcome_for(_claim(40), AttemptResult("transient", "451 later"), schedule, T0 + timedelta(days=6))
    assert expired.state is DeliveryState.EXPIRED
    assert expired.reply.startswith("gave up after 41 attempts: 451 later")


def test_queue_ids_sort_by_time_and_are_unique() -> None:
    ids = [new_queue_id(T0 + timedelta(milliseconds=i)) for i in range(50)]
    assert ids == sorted(ids)
    assert len(set(ids)) == 50 and all(len(i) == 26 for i in ids)


def test_remote_text_is_made_storable() -> None:
    from gateway.storage.queue_store import storable

    undecodable = b"550 5.1.1 Benutzer unbekannt \xfc".decode("utf-8", "surrogateescape")
    assert storable(undecodable, 100) == "550 5.1.1 Benutzer unbekannt \ufffd"
    assert storable("x\x00y" * 10, 5) == "xyxyx"
    assert storable(None, 5) is None
