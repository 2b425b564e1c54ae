"""Reputation counts on SQLite and PostgreSQL (gateway/storage/reputation_store.py) and the
breaker guard that judges them (gateway/feedback/reputation.py)."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

from prometheus_client import REGISTRY
from sqlalchemy import select

from gateway.config.policy import Reputation
from gateway.feedback.breakers import Key, Tally
from gateway.feedback.classify import Classifier
from gateway.feedback.inbound import InboundProcessor
from gateway.feedback.reputation import ReputationGuard, overview, pause, resume
from gateway.feedback.verdicts import BounceClass, Severity, Verdict
from gateway.records import DeliveryState, InboundMessage, NewMessage, Outcome, new_queue_id
from gateway.rewrite.tokens import VERP_PREFIX, Binding, Purpose, TokenCodec
from gateway.sandbox.demo import dsn
from gateway.storage import campaign_store, feedback_store, queue_store, reputation_store
from gateway.storage.database import Database
from gateway.storage.feedback_store import BounceFact, ComplaintFact
from gateway.storage.tables import events, reputation_counts

T0 = datetime(2026, 11, 25, 8, 0, 30, tzinfo=UTC)
MINUTE0 = T0.replace(second=0)  # the bucket T0 falls in
HARD = Verdict(BounceClass.USER_UNKNOWN, Severity.HARD, "user-unknown", "5.1.1")
SOFT = Verdict(BounceClass.SPAM_BLOCK, Severity.SOFT, "spam", "5.7.1")
MARKETING = ("marketing",)
ROOT = Path(__file__).resolve().parents[2]


def _message(n: int, campaign: str, recipients: int, stream: str = "marketing") -> NewMessage:
    return NewMessage(queue_id=new_queue_id(T0 + timedelta(milliseconds=n)), received_at=T0,
                      mail_from="news@example.com",
                      recipients=tuple(f"r{n}-{i}@one.example" for i in range(recipients)),
                      body=b"Subject: hi\r\n\r\nhi\r\n", client_ip="127.0.0.1", helo="client",
                      stream=stream, list_key="news", campaign=campaign)


async def _claimed(db: Database, *batch: NewMessage) -> list[Outcome]:
    """Store messages and claim every copy; the outcomes start as deliveries at T0."""
    await db.write(lambda c: queue_store.insert_messages(c, list(batch)))
    claims = await db.write(lambda c: queue_store.claim_due(c, node="n1", now=T0, lease_until=T0 + timedelta(hours=1),
                                                            limit=10_000))
    return [Outcome(c.delivery_id, c.queue_id, c.recipient, DeliveryState.DELIVERED, "250 ok", T0,
                    provider="gmail" if i % 2 else "yahoo") for i, c in enumerate(claims)]


def _bounced(outcome: Outcome, verdict: Verdict = HARD) -> Outcome:
    return replace(outcome, state=DeliveryState.BOUNCED, reply="550 5.1.1 no such user", verdict=verdict)


async def _record(db: Database, outcomes: list[Outcome]) -> None:
    assert await db.write(lambda c: queue_store.record_outcomes(c, "n1", outcomes)) == len(outcomes)


async def _tallies(db: Database, start: datetime = T0 - timedelta(hours=1),
                   later_starts: dict[str, datetime] | None = None) -> dict[Key, Tally]:
    return await db.read(partial(reputation_store.tallies, start=start, streams=MARKETING,
                                 later_starts=later_starts))


async def test_outcome_batches_count_answers_and_hard_bounces_per_campaign_and_provider(db: Database) -> None:
    outcomes = await _claimed(db, _message(1, "spring", 10), _message(2, "", 2),
                              _message(3, "receipts", 2, stream="transactional"))
    spring = [o for o in outcomes if o.recipient.startswith("r1-")]
    deferred = replace(spring[0], state=DeliveryState.DEFERRED, reply="451 later", next_attempt_at=T0)
    batch = [deferred, _bounced(spring[1]), _bounced(spring[2], SOFT), *spring[3:]]
    batch += [o for o in outcomes if not o.recipient.startswith("r1-")]
    await _record(db, batch)

    found = await _tallies(db)
    # Deferral: no final answer, not counted; the soft 5xx counts in the base only. Mail
    # without a campaign and transactional mail are counted too, but not in these keys.
    assert found == {Key("marketing", "spring", "gmail"): Tally(sent=5, hard=1),
                     Key("marketing", "spring", "yahoo"): Tally(sent=4, hard=0)}
    whole = await db.read(partial(reputation_store.rates, start=T0 - timedelta(hours=1)))
    assert whole[Key("transactional", "", "gmail")].sent + whole[Key("transactional", "", "yahoo")].sent == 2
    assert sum(t.sent for k, t in whole.items() if k.stream == "marketing") == 11


async def test_each_node_counts_in_its_own_rows_and_readers_sum_them(db: Database) -> None:
    """Two nodes sending one campaign to one provider in the same minute: no shared row to
    wait on (or deadlock over) inside their group commits, and the same figures."""
    outcomes = [o for o in await _claimed(db, _message(1, "spring", 8)) if o.provider == "gmail"]
    first, second = outcomes[:2], [_bounced(o) for o in outcomes[2:]]
    await db.write(lambda c: reputation_store.count_outcomes(c, first, node="node-a"))
    await db.write(lambda c: reputation_store.count_outcomes(c, second, node="node-b"))
    # The provider is read from the delivery row, which record_outcomes (not called here) sets.
    assert await _tallies(db) == {Key("marketing", "spring", ""): Tally(sent=4, hard=2)}
    writers = await db.read(lambda c: c.execute(select(reputation_counts.c.writer).order_by("writer")))
    assert [row.writer for row in writers] == ["node-a", "node-b"]


async def test_a_hard_verdict_on_a_deferral_counts_as_an_answer_and_a_hard_bounce(db: Database) -> None:
    [outcome] = await _claimed(db, _message(1, "spring", 1))
    await _record(db, [replace(outcome, state=DeliveryState.DEFERRED, reply="452 4.1.1 no such user",
                               next_attempt_at=T0, verdict=HARD)])
    assert await _tallies(db) == {Key("marketing", "spring", "yahoo"): Tally(sent=1, hard=1)}


async def test_batches_add_up_in_one_bucket_and_old_buckets_are_pruned(db: Database) -> None:
    outcomes = await _claimed(db, _message(1, "spring", 6))
    await _record(db, outcomes[:3])
    later = [replace(o, at=T0 + timedelta(minutes=5)) for o in outcomes[3:]]
    await _record(db, later)
    assert sum(t.sent for t in (await _tallies(db)).values()) == 6
    assert sum(t.sent for t in (await _tallies(db, start=MINUTE0 + timedelta(minutes=5))).values()) == 3
    assert await db.write(partial(reputation_store.prune, before=T0 + timedelta(minutes=1))) == 2
    assert sum(t.sent for t in (await _tallies(db)).values()) == 3


async def test_dsn_hard_bounces_and_complaints_count_without_adding_to_the_base(db: Database) -> None:
    outcomes = await _claimed(db, _message(1, "spring", 4))
    await _record(db, outcomes)
    first, second = outcomes[0], outcomes[1]
    dsn = BounceFact(T0, first.recipient, HARD, "dsn", "5.1.1", delivery_id=first.delivery_id,
                     queue_id=first.queue_id, campaign="spring", provider="yahoo")
    soft_dsn = replace(dsn, verdict=SOFT)
    complaint = ComplaintFact(T0, second.recipient, "list", "arf", delivery_id=second.delivery_id,
                              queue_id=second.queue_id, list_key="news", campaign="spring", provider="gmail")
    await db.write(lambda c: queue_store.apply_feedback(c, [dsn, soft_dsn], queue_store.DEFAULT_SOFT_RULE))
    await db.write(lambda c: feedback_store.apply_complaint(c, complaint))
    assert await _tallies(db) == {Key("marketing", "spring", "yahoo"): Tally(sent=2, hard=1),
                                  Key("marketing", "spring", "gmail"): Tally(sent=2, complaints=1)}


async def test_a_copy_counts_one_hard_bounce_and_one_complaint_however_often_reported(db: Database) -> None:
    outcomes = await _claimed(db, _message(1, "spring", 4))
    first, second, third = outcomes[0], outcomes[1], outcomes[2]
    await _record(db, [first, second, _bounced(third), outcomes[3]])
    later = T0 + timedelta(hours=3)
    dsn = BounceFact(later, first.recipient, HARD, "dsn", "5.1.1", delivery_id=first.delivery_id,
                     queue_id=first.queue_id, campaign="spring", provider="yahoo")
    on_sync = replace(dsn, recipient=third.recipient, delivery_id=third.delivery_id)  # a 550 was counted
    complaint = ComplaintFact(later, second.recipient, "list", "arf", delivery_id=second.delivery_id,
                              queue_id=second.queue_id, list_key="news", campaign="spring", provider="gmail")
    for _ in range(2):  # the same DSN and the same report twice (duplicates, another hop's DSN)
        await db.write(lambda c: queue_store.apply_feedback(c, [dsn, on_sync], queue_store.DEFAULT_SOFT_RULE))
        await db.write(lambda c: feedback_store.apply_complaint(c, complaint))
    # Counted in the minute the copies were answered, not the hour the reports came.
    assert await _tallies(db, start=MINUTE0) == {Key("marketing", "spring", "yahoo"): Tally(sent=2, hard=2),
                                                 Key("marketing", "spring", "gmail"): Tally(sent=2, complaints=1)}


async def test_reports_about_copies_sent_before_a_resume_do_not_count_after_it(db: Database) -> None:
    outcomes = await _claimed(db, _message(1, "spring", 12))
    await _record(db, outcomes[:2])  # answered before the pause
    await db.write(lambda c: queue_store.insert_messages(c, [_message(2, "spring", 1)]))
    await pause(db, "spring", note="", by="cli", now=T0 + timedelta(minutes=1))
    resumed_at = T0 + timedelta(minutes=2)
    await resume(db, "spring", by="cli", now=resumed_at)
    after = [replace(o, at=resumed_at + timedelta(minutes=1)) for o in outcomes[2:]]
    await _record(db, after)
    for outcome in outcomes[:2]:  # the old copies' late reports
        await db.write(partial(feedback_store.apply_complaint, fact=ComplaintFact(
            resumed_at + timedelta(minutes=5), outcome.recipient, "list", "arf", delivery_id=outcome.delivery_id,
            queue_id=outcome.queue_id, list_key="news", campaign="spring", provider=outcome.provider)))
    figures = await overview(db, _rep(), resumed_at + timedelta(minutes=10), "spring")
    assert figures[0].whole == Tally(sent=10)


async def test_counting_restarts_after_a_resume(db: Database) -> None:
    outcomes = await _claimed(db, _message(1, "spring", 4))
    await _record(db, outcomes[:2])
    resumed_at = T0 + timedelta(minutes=2, seconds=10)
    await _record(db, [replace(o, at=resumed_at + timedelta(minutes=1)) for o in outcomes[2:]])
    found = await _tallies(db, later_starts={"spring": MINUTE0 + timedelta(minutes=3)})
    assert sum(t.sent for t in found.values()) == 2
    other = await _tallies(db, later_starts={"autumn": MINUTE0 + timedelta(minutes=3)})
    assert sum(t.sent for t in other.values()) == 4


def _rep(**limits: object) -> Reputation:
    return Reputation.model_validate({"hard_bounce": {"min_sent": 10, "min_events": 3, **limits}})


def _sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_the_guard_pauses_a_bad_campaign_once_with_an_event_and_a_metric(db: Database) -> None:
    bad = _message(1, "bought", 20)
    clean = _message(2, "clean", 20)
    outcomes = await _claimed(db, bad, clean)
    batch = [_bounced(o) if o.queue_id == bad.queue_id and i % 4 == 0 else o for i, o in enumerate(outcomes)]
    await _record(db, batch)
    waiting = _message(3, "bought", 3)
    await db.write(lambda c: queue_store.insert_messages(c, [waiting]))
    labels = {"stream": "marketing", "provider": "yahoo", "reason": "hard-bounce"}
    trips = _sample("gateway_breaker_trips_total", labels)
    guard = ReputationGuard(db, lambda: _rep(), clock=lambda: T0 + timedelta(minutes=1))

    found = await guard.evaluate(None)
    assert [d.key.campaign for d in found if d.action == "pause"][:1] == ["bought"]
    state = await db.read(lambda c: campaign_store.campaign_state(c, "bought"))
    assert state is not None and state.paused and state.changed_by == "breaker" and state.held == 3
    # Every bounce went to yahoo: 5 of its 10 (50%) is the worst key, and explains the pause.
    assert state.reason == "hard-bounce"
    assert state.detail == "hard bounces 5 of 10 sent (50%) at yahoo over the last 24h, limit 5%"
    assert await db.read(lambda c: campaign_store.campaign_state(c, "clean")) is None
    assert _sample("gateway_breaker_trips_total", labels) == trips + 1
    # Copies already handed to delivery are withdrawn before they are sent.
    assert guard.is_paused("bought") and not guard.is_paused("clean")

    await guard.evaluate(["bought"])  # already paused: no second event
    rows = (await db.read(lambda c: c.execute(select(events).where(events.c.kind == "paused")))).all()
    assert [(r.campaign, r.recipient, r.queue_id) for r in rows] == [("bought", None, "")]
    assert rows[0].reply == state.detail

    figures = await overview(db, _rep(), T0 + timedelta(minutes=1))
    by_name = {f.campaign: f for f in figures}
    assert by_name["bought"].paused and by_name["bought"].held == 3 and by_name["bought"].whole.sent == 20
    assert not by_name["clean"].paused and by_name["clean"].whole == Tally(sent=20)

    assert await resume(db, "bought", by="cli", now=T0 + timedelta(minutes=2)) == 3
    assert await resume(db, "bought", by="cli", now=T0 + timedelta(minutes=2)) is None
    # Counting restarted at the resume: the old figures do not pause it again.
    assert [d for d in await guard.evaluate(["bought"]) if d.key.campaign == "bought"] == []
    assert not guard.is_paused("bought")  # the resume, made elsewhere, is seen at the next judgement


async def test_warnings_are_given_once_per_window(db: Database) -> None:
    outcomes = await _claimed(db, _message(1, "meh", 40))
    await _record(db, [_bounced(o) if i < 4 else o for i, o in enumerate(outcomes)])  # 10%
    now = [T0 + timedelta(minutes=1)]
    guard = ReputationGuard(db, lambda: _rep(warn="5%", pause="20%"), clock=lambda: now[0])
    assert [d.action for d in await guard.evaluate(["meh"])].count("warn") >= 1
    await guard.evaluate(["meh"])
    warned = (await db.read(lambda c: c.execute(select(events.c.reply).where(events.c.kind == "warned")))).all()
    assert len(warned) == len({r.reply for r in warned}) >= 1
    assert await db.read(lambda c: campaign_store.campaign_state(c, "meh")) is None


async def test_manual_pause_keeps_the_first_reason(db: Database) -> None:
    await db.write(lambda c: queue_store.insert_messages(c, [_message(1, "spring", 2)]))
    assert await pause(db, "spring", note="checking the list", by="cli", now=T0) == 2
    assert await pause(db, "spring", note="again", by="cli", now=T0) is None
    state = await db.read(lambda c: campaign_store.campaign_state(c, "spring"))
    assert state is not None and state.reason == "manual" and state.detail == "checking the list"


async def test_complaints_arriving_later_pause_at_the_periodic_evaluation(db: Database) -> None:
    outcomes = await _claimed(db, _message(1, "spring", 40))
    await _record(db, outcomes)
    rep = Reputation.model_validate({"complaint": {"warn": "2%", "pause": "5%", "min_sent": 20, "min_events": 2}})
    now = [T0 + timedelta(hours=3)]
    guard = ReputationGuard(db, lambda: rep, clock=lambda: now[0])
    assert await guard.evaluate(None) == []
    for outcome in outcomes[:3]:  # three trusted complaints, hours after the send: 3 of 40 = 7.5%
        fact = ComplaintFact(now[0], outcome.recipient, "list", "arf", delivery_id=outcome.delivery_id,
                             queue_id=outcome.queue_id, list_key="news", campaign="spring",
                             provider=outcome.provider)
        await db.write(partial(feedback_store.apply_complaint, fact=fact))
    found = await guard.evaluate(None)
    assert [d.kind for d in found if d.action == "pause"][:1] == ["complaint"]
    state = await db.read(lambda c: campaign_store.campaign_state(c, "spring"))
    assert state is not None and state.paused and state.reason == "complaint"
    # Two of them at yahoo (2 of its 20, 10%) is the worst key; the whole campaign is at 7.5%.
    assert state.detail == "complaints 2 of 20 sent (10%) at yahoo over the last 24h, limit 5%"
    # Outside the window the same counts say nothing any more.
    now[0] = T0 + timedelta(days=2)
    assert await guard.evaluate(None) == []


async def test_campaign_events_reach_webhooks_with_the_campaign_and_figures(db: Database) -> None:
    await reputation_store_event(db)
    await db.write(lambda c: feedback_store.ensure_cursor(c, "crm", from_start=True))
    settle = await db.read(feedback_store.newest_event_id)
    await db.write(lambda c: feedback_store.feed_outbox(c, "crm", {"paused"}, T0, settle=settle))
    [item] = await db.read(lambda c: feedback_store.due_items(c, "crm", T0 + timedelta(minutes=1)))
    payload = json.loads(item.payload)
    assert payload["event"] == "paused" and payload["campaign"] == "spring"
    assert payload["recipient"] is None and payload["reply"] == "hard bounces 12 of 100 sent (12%)"


async def reputation_store_event(db: Database) -> None:
    await db.write(lambda c: reputation_store.add_campaign_events(
        c, [(T0, "paused", "spring", "hard bounces 12 of 100 sent (12%)")]))


async def test_a_processed_dsn_wakes_the_breakers_for_its_campaign(db: Database) -> None:
    """Without the hook a report about a copy was judged at the next full pass, up to a minute later."""
    outcomes = await _claimed(db, _message(1, "spring", 2))
    await _record(db, outcomes)
    first = outcomes[0]
    codec = TokenCodec({1: b"k" * 32}, 1)
    verp = f"{VERP_PREFIX}{codec.issue(Purpose.VERP, first.delivery_id, Binding(first.recipient, 'news', 'spring'))}"
    verp += "@bounces.example.com"
    await db.write(lambda c: queue_store.insert_inbound(c, InboundMessage(
        T0, "", (verp,), dsn(verp, first.recipient), "127.0.0.9")))
    heard: list[str] = []  # the runtime passes ReputationGuard.reported
    classifier = Classifier.from_policy_dir(ROOT / "policies")
    processor = InboundProcessor(db, codec, "bounces.example.com", on_report=heard.append,
                                 classifier=lambda: classifier)
    assert await processor.process_new() == 1
    assert heard == ["spring"]
    assert await _tallies(db) == {Key("marketing", "spring", "yahoo"): Tally(sent=1, hard=1),
                                  Key("marketing", "spring", "gmail"): Tally(sent=1)}
