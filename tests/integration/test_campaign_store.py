"""Paused campaigns and held deliveries on SQLite and PostgreSQL (gateway/storage/campaign_store.py)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from gateway.queue.retry import RetrySchedule
from gateway.queue.scheduler import outcome_for
from gateway.records import AttemptResult, ClaimedDelivery, NewMessage, new_queue_id
from gateway.storage import campaign_store, queue_store
from gateway.storage.database import Database

T0 = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
LEASE = T0 + timedelta(minutes=15)


def _message(n: int, campaign: str, *recipients: str) -> NewMessage:
    return NewMessage(queue_id=new_queue_id(T0 + timedelta(milliseconds=n)), received_at=T0,
                      mail_from="news@example.com", recipients=recipients or (f"r{n}@one.example",),
                      body=b"Subject: %d\r\n\r\nhi\r\n" % n, client_ip="127.0.0.1", helo="client",
                      stream="marketing", list_key="news", campaign=campaign)


async def _store(db: Database, *batch: NewMessage) -> None:
    await db.write(lambda c: queue_store.insert_messages(c, list(batch)))


async def _claim(db: Database, now: datetime = T0, node: str = "n1") -> list[ClaimedDelivery]:
    return await db.write(lambda c: queue_store.claim_due(c, node=node, now=now,
                                                          lease_until=now + timedelta(minutes=15), limit=100))


async def _pause(db: Database, campaign: str, reason: str = "hard-bounce", detail: str = "6 of 100") -> int:
    return await db.write(lambda c: campaign_store.pause_campaign(
        c, campaign, reason=reason, detail=detail, by="breaker", now=T0))


async def _states(db: Database, queue_id: str) -> list[str]:
    view = await db.read(lambda c: queue_store.show_message(c, queue_id))
    assert view is not None
    return [d.state for d in view.deliveries]


async def test_pause_holds_queued_and_deferred_copies_of_that_campaign_only(db: Database) -> None:
    spring, other, plain = _message(1, "spring", "a@one.example", "b@two.example"), _message(2, "autumn"), \
        _message(3, "")
    await _store(db, spring, other, plain)
    first = [c for c in await _claim(db) if c.recipient == "a@one.example"]
    deferred = outcome_for(first[0], AttemptResult("transient", "451 later"), RetrySchedule(), T0)
    await db.write(lambda c: queue_store.record_outcomes(c, "n1", [deferred]))
    await db.write(lambda c: queue_store.release_claims(c, "n1"))

    assert await _pause(db, "spring") == 2
    assert await _states(db, spring.queue_id) == ["held", "held"]
    assert await _states(db, other.queue_id) == ["queued"]
    assert await _states(db, plain.queue_id) == ["queued"]
    state = await db.read(lambda c: campaign_store.campaign_state(c, "spring"))
    assert state is not None and state.paused and state.held == 2 and state.reason == "hard-bounce"
    assert await db.read(queue_store.count_pending) == {"held": 2, "queued": 2}


async def test_intake_of_a_paused_campaign_stores_held_copies_and_claim_never_returns_them(
        db: Database) -> None:
    await _pause(db, "spring")
    held, free = _message(1, "spring", "a@one.example", "b@one.example"), _message(2, "autumn")
    await _store(db, held, free)
    assert await _states(db, held.queue_id) == ["held", "held"]
    claimed = await _claim(db, T0 + timedelta(days=30))
    assert [c.queue_id for c in claimed] == [free.queue_id]
    # The body stays: the held copies will need it once the campaign is resumed.
    assert held.queue_id in await db.read(lambda c: queue_store.load_bodies(c, [held.queue_id]))


async def test_a_deferred_copy_whose_campaign_got_paused_is_held_at_claim_without_an_attempt(
        db: Database) -> None:
    message = _message(1, "spring")
    await _store(db, message)
    claim = (await _claim(db))[0]
    # Paused while the copy is being attempted: the pause leaves a leased copy to its node ...
    assert await _pause(db, "spring") == 0
    later = T0 + timedelta(minutes=1)
    deferred = outcome_for(claim, AttemptResult("transient", "451 later"), RetrySchedule(), later)
    await db.write(lambda c: queue_store.record_outcomes(c, "n1", [deferred]))
    assert await _states(db, message.queue_id) == ["deferred"]
    # ... and the claim holds it once it is due again, without sending it or counting an attempt.
    assert await _claim(db, T0 + timedelta(days=1)) == []
    view = await db.read(lambda c: queue_store.show_message(c, message.queue_id))
    assert view is not None
    assert [(d.state, d.attempts) for d in view.deliveries] == [("held", 1)]
    # Released, a copy that was tried before goes back to deferred, due now.
    released_at = T0 + timedelta(days=2)
    assert await db.write(lambda c: campaign_store.resume_campaign(c, "spring", by="cli", now=released_at)) == 1
    assert [(c.queue_id, c.attempts) for c in await _claim(db, released_at)] == [(message.queue_id, 1)]


async def test_resume_releases_held_copies_due_now(db: Database) -> None:
    message = _message(1, "spring", "a@one.example", "b@one.example")
    await _store(db, message)
    await _pause(db, "spring")
    resumed_at = T0 + timedelta(days=2)
    released = await db.write(lambda c: campaign_store.resume_campaign(c, "spring", by="cli", now=resumed_at))
    assert released == 2
    claimed = await _claim(db, resumed_at)
    assert sorted(c.recipient for c in claimed) == ["a@one.example", "b@one.example"]
    state = await db.read(lambda c: campaign_store.campaign_state(c, "spring"))
    assert state is not None and not state.paused and state.counted_since == resumed_at and state.held == 0
    # Resuming a running campaign, or one never paused, says so.
    assert await db.write(lambda c: campaign_store.resume_campaign(c, "spring", by="cli", now=resumed_at)) is None
    assert await db.write(lambda c: campaign_store.resume_campaign(c, "never", by="cli", now=resumed_at)) is None


async def test_pausing_twice_keeps_the_first_reason(db: Database) -> None:
    await _store(db, _message(1, "spring"))
    assert await _pause(db, "spring", "hard-bounce", "6 of 100 hard bounces") == 1
    await _store(db, _message(2, "spring"))  # stored held
    assert await _pause(db, "spring", "complaint", "1 of 200") == 0
    states = await db.read(campaign_store.campaign_states)
    assert [(s.campaign, s.paused, s.reason, s.detail, s.held) for s in states] == [
        ("spring", True, "hard-bounce", "6 of 100 hard bounces", 2)]
    # After a resume, a new pause records its own reason.
    await db.write(lambda c: campaign_store.resume_campaign(c, "spring", by="cli", now=T0))
    assert await _pause(db, "spring", "complaint", "1 of 200") == 2
    state = await db.read(lambda c: campaign_store.campaign_state(c, "spring"))
    assert state is not None and state.reason == "complaint"


async def test_the_empty_campaign_cannot_be_paused(db: Database) -> None:
    async with db.engine.begin() as conn:
        with pytest.raises(ValueError, match="empty campaign"):
            await campaign_store.pause_campaign(conn, "", reason="manual", detail="", by="cli", now=T0)
    assert await db.read(campaign_store.campaign_states) == []


async def test_a_resume_keeps_a_deferred_copys_later_due_time(db: Database) -> None:
    """Copies due long ago go now; one its provider deferred keeps its back-off, so a resume
    does not send a campaign's deferrals back to that provider all at once."""
    waiting, deferred_one = _message(1, "spring"), _message(2, "spring")
    await _store(db, waiting, deferred_one)
    claim = next(c for c in await _claim(db) if c.queue_id == deferred_one.queue_id)
    retry_at = T0 + timedelta(hours=2)
    deferred = outcome_for(claim, AttemptResult("transient", "421 4.7.0 try later"), RetrySchedule(), T0)
    deferred = dataclasses.replace(deferred, next_attempt_at=retry_at)
    await db.write(lambda c: queue_store.record_outcomes(c, "n1", [deferred]))
    await db.write(lambda c: queue_store.release_claims(c, "n1"))
    await _pause(db, "spring")
    resumed_at = T0 + timedelta(minutes=30)
    assert await db.write(lambda c: campaign_store.resume_campaign(c, "spring", by="cli", now=resumed_at)) == 2
    assert [c.queue_id for c in await _claim(db, resumed_at)] == [waiting.queue_id]
    assert deferred_one.queue_id in {c.queue_id for c in await _claim(db, retry_at)}


async def test_held_counts_stop_at_the_limit(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(campaign_store, "HELD_LIMIT", 2)
    await _store(db, _message(1, "spring", "a@one.example", "b@one.example", "c@one.example"),
                 _message(2, "autumn"))
    await _pause(db, "spring")
    await _pause(db, "autumn")
    states = await db.read(campaign_store.campaign_states)
    assert [(s.campaign, s.held) for s in states] == [("autumn", 1), ("spring", 2)]
