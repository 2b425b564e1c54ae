"""Bounce state in storage on SQLite and PostgreSQL: what one outcome changes in the same
transaction (suppression, dropped queue, soft counts), and the webhook outbox's order."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import REGISTRY
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from gateway.feedback.inbound import InboundProcessor
from gateway.feedback.softbounce import SoftBounceRule
from gateway.feedback.verdicts import BounceClass, Severity, Verdict
from gateway.ingest.addresses import address_hash
from gateway.queue.retry import RetrySchedule
from gateway.queue.scheduler import outcome_for
from gateway.records import AttemptResult, ClaimedDelivery, NewMessage, new_queue_id
from gateway.rewrite.tokens import TokenCodec
from gateway.storage import consent_store, feedback_store, queue_store
from gateway.storage.database import Database
from gateway.storage.queue_store import DEFAULT_SOFT_RULE
from gateway.storage.tables import deliveries, events, webhook_outbox

T0 = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)
ALL = 10**9  # the feed's bound on event ids: every id these tests wrote was committed
USER_UNKNOWN = Verdict(BounceClass.USER_UNKNOWN, Severity.HARD, "user-unknown", "5.1.1")
MAILBOX_FULL = Verdict(BounceClass.MAILBOX_FULL, Severity.SOFT, "mailbox-full", "5.2.2")
SPAM_BLOCK = Verdict(BounceClass.SPAM_BLOCK, Severity.SOFT, "spam-block", "5.7.1")


def _message(n: int, recipient: str, at: datetime = T0, stream: str = "marketing") -> NewMessage:
    return NewMessage(queue_id=new_queue_id(at + timedelta(milliseconds=n)), received_at=at,
                      mail_from="news@example.com", recipients=(recipient,), body=b"Subject: x\r\n\r\nhi\r\n",
                      client_ip="127.0.0.1", helo="client", stream=stream, list_key="news", campaign="c1")


async def _attempt(db: Database, message: NewMessage, reply: str, kind: str, verdict: Verdict | None,
                   now: datetime, rule: SoftBounceRule = DEFAULT_SOFT_RULE) -> ClaimedDelivery:
    await db.write(lambda c: queue_store.insert_messages(c, [message]))
    [claim] = await db.write(lambda c: queue_store.claim_due(c, node="n1", now=now,
                                                             lease_until=now + timedelta(minutes=5), limit=1))
    outcome = outcome_for(claim, AttemptResult(kind, reply), RetrySchedule(), now, lambda _: verdict)
    assert await db.write(lambda c: queue_store.record_outcomes(c, "n1", [outcome], soft_rule=rule)) == 1
    return claim


async def _suppressions(db: Database, address: str) -> list[consent_store.SuppressionRecord]:
    found = await db.read(lambda c: consent_store.find_suppressions(c, address_hash=address_hash(address)))
    return [record for _, record in found]


async def test_a_hard_bounce_suppresses_and_drops_queued_mail_in_the_same_transaction(db_url: str) -> None:
    db = Database(db_url)
    await db.start()
    try:
        waiting = _message(2, "gone@example.net", stream="transactional")
        await db.write(lambda c: queue_store.insert_messages(c, [waiting]))
        await db.write(lambda c: queue_store.retry_now(c, T0 + timedelta(days=1), queue_id=waiting.queue_id))
        # The waiting copy is not due yet: push it into the future so only the first is claimed.
        first = _message(1, "gone@example.net")
        await db.write(lambda c: queue_store.insert_messages(c, [first]))
        [claim] = await db.write(lambda c: queue_store.claim_due(
            c, node="n1", now=T0, lease_until=T0 + timedelta(minutes=5), limit=1))
        outcome = outcome_for(claim, AttemptResult("permanent", "550 5.1.1 user unknown"), RetrySchedule(), T0,
                              lambda _: USER_UNKNOWN)
        await db.write(lambda c: queue_store.record_outcomes(c, "n1", [outcome]))
        [record] = await _suppressions(db, "gone@example.net")
        assert (record.scope, record.reason, record.expires_at) == ("global", "hard-bounce", None)
        assert await db.read(queue_store.count_pending) == {}
        rows = await db.read(lambda c: queue_store.trace(c, "gone@example.net"))
        kinds = [row.kind for row in rows]
        assert kinds.count("bounced") == 1 and kinds.count("suppressed") == 1 and kinds.count("bounce") == 1
        [dropped] = [row for row in rows if row.kind == "suppressed"]
        assert dropped.detail.startswith("suppressed: hard-bounce")
    finally:
        await db.close()


async def test_soft_bounces_suppress_only_after_the_limit_over_the_span(db_url: str) -> None:
    db = Database(db_url)
    await db.start()
    rule = SoftBounceRule(limit=3, span=timedelta(days=2), suppress_for=timedelta(days=30))
    try:
        for n, hours in enumerate((0, 1, 2)):  # three in two hours: not enough days
            await _attempt(db, _message(n, "full@example.net"), "552 5.2.2 full", "permanent", MAILBOX_FULL,
                           T0 + timedelta(hours=hours), rule)
        assert await _suppressions(db, "full@example.net") == []
        count = await db.read(lambda c: feedback_store.soft_count(c, "full@example.net"))
        assert count is not None and count.count == 3
        await _attempt(db, _message(9, "full@example.net"), "552 5.2.2 full", "permanent", MAILBOX_FULL,
                       T0 + timedelta(days=2), rule)
        [record] = await _suppressions(db, "full@example.net")
        assert (record.reason, record.expires_at) == ("soft-bounce", T0 + timedelta(days=32))
        assert await db.read(lambda c: feedback_store.soft_count(c, "full@example.net")) is None
    finally:
        await db.close()


async def test_a_delivery_resets_the_count_and_sender_side_refusals_never_count(db_url: str) -> None:
    db = Database(db_url)
    await db.start()
    try:
        await _attempt(db, _message(1, "ok@example.net"), "552 5.2.2 full", "permanent", MAILBOX_FULL, T0)
        await _attempt(db, _message(2, "ok@example.net"), "250 ok", "delivered", None, T0 + timedelta(hours=1))
        assert await db.read(lambda c: feedback_store.soft_count(c, "ok@example.net")) is None
        await _attempt(db, _message(3, "ok@example.net"), "554 5.7.1 spam", "permanent", SPAM_BLOCK, T0)
        assert await db.read(lambda c: feedback_store.soft_count(c, "ok@example.net")) is None
        rows = await db.read(lambda c: queue_store.trace(c, "ok@example.net"))
        [spam] = [row for row in rows if row.kind == "bounce" and "spam-block" in row.detail]
        assert "not counted" in spam.detail
    finally:
        await db.close()


async def test_the_outbox_sends_one_item_per_recipient_at_a_time(db_url: str) -> None:
    db = Database(db_url)
    await db.start()
    try:
        for n, recipient in enumerate(("a@example.net", "a@example.net", "b@example.net")):
            await _attempt(db, _message(n, recipient), "250 ok", "delivered", None, T0)
        fed = await db.write(lambda c: feedback_store.feed_outbox(c, "hook", {"delivered"}, T0, settle=ALL, from_start=True))
        assert fed == 3
        heads = await db.read(lambda c: feedback_store.due_items(c, "hook", T0))
        assert len(heads) == 2  # a's second event waits for its first
        await db.write(lambda c: feedback_store.failed(c, heads[0].id, T0 + timedelta(minutes=1), "down"))
        assert [h.id for h in await db.read(lambda c: feedback_store.due_items(c, "hook", T0))] == [heads[1].id]
        await db.write(lambda c: feedback_store.sent(c, [heads[1].id]))
        later = await db.read(lambda c: feedback_store.due_items(c, "hook", T0 + timedelta(minutes=1)))
        assert [h.id for h in later] == [heads[0].id]
        assert await db.write(lambda c: feedback_store.feed_outbox(c, "hook", {"delivered"}, T0, settle=ALL, from_start=True)) == 0
        assert await db.read(feedback_store.backlog) == 2
        lease = T0 + timedelta(minutes=2)
        claimed = await db.write(lambda c: feedback_store.claim_items(c, "hook", T0 + timedelta(minutes=1), lease))
        assert [h.id for h in claimed] == [heads[0].id]  # leased: nobody else sends it meanwhile
        assert await db.write(lambda c: feedback_store.claim_items(c, "hook", T0 + timedelta(minutes=1), lease)) == []
    finally:
        await db.close()


async def test_a_bounced_event_reaches_the_outbox_with_its_explanation(db_url: str) -> None:
    db = Database(db_url)
    await db.start()
    try:
        await _attempt(db, _message(1, "gone@example.net"), "550 5.1.1 user unknown", "permanent", USER_UNKNOWN, T0)
        await db.write(lambda c: feedback_store.feed_outbox(c, "hook", {"bounced", "delivered"}, T0, settle=ALL, from_start=True))
        [item] = await db.read(lambda c: feedback_store.due_items(c, "hook", T0))
        body = json.loads(item.payload)
        assert (body["event"], body["recipient"], body["reply"]) == ("bounced", "gone@example.net",
                                                                      "550 5.1.1 user unknown")
        assert body["feedback"] == {"class": "user-unknown", "severity": "hard", "rule": "user-unknown",
                                    "status": "5.1.1", "source": "sync",
                                    "action": "suppressed globally (hard-bounce)"}
    finally:
        await db.close()


async def test_the_dispatcher_retries_a_failing_receiver_and_keeps_each_recipients_order(db_url: str) -> None:
    import asyncio

    import httpx

    from gateway.feedback.webhooks import Endpoint, WebhookDispatcher

    db = Database(db_url)
    await db.start()
    answers = iter([500, 503])  # the first two POSTs fail, then every one is taken
    received: list[dict[str, object]] = []

    def receive(request: httpx.Request) -> httpx.Response:
        status = next(answers, 200)
        if status == 200:
            received.append(json.loads(request.content))
        return httpx.Response(status)

    try:
        for n, recipient in enumerate(("a@example.net", "a@example.net", "b@example.net", "a@example.net")):
            await _attempt(db, _message(n, recipient), "250 ok", "delivered", None, T0)
        endpoint = Endpoint("hook", "http://hook.invalid/e", b"s" * 32, frozenset({"delivered"}), 5.0, 0.05, 0.2,
                            from_start=True)
        dispatcher = WebhookDispatcher(db, [endpoint], poll=0.05, transport=httpx.MockTransport(receive))
        task = asyncio.create_task(dispatcher.run())
        for _ in range(100):
            if len(received) == 4:
                break
            await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert [(b["recipient"], b["event"]) for b in received].count(("a@example.net", "delivered")) == 3
        a_ids = [b["id"] for b in received if b["recipient"] == "a@example.net"]
        assert a_ids == sorted(a_ids) and len({b["id"] for b in received}) == 4
        assert await db.read(feedback_store.backlog) == 0
    finally:
        await db.close()


async def test_a_complaint_is_list_scoped_or_global_and_recorded_with_its_campaign(db_url: str) -> None:
    db = Database(db_url)
    await db.start()
    try:
        listed = feedback_store.ComplaintFact(T0, "ann@example.net", "list", "Authentication-Results: gw; none",
                                              delivery_id=1, queue_id="Q1", list_key="news", campaign="c1")
        everywhere = feedback_store.ComplaintFact(T0, "bob@example.net", "global", "evidence", list_key="news")
        assert await db.write(lambda c: feedback_store.apply_complaint(c, listed)) == "news"
        assert await db.write(lambda c: feedback_store.apply_complaint(c, everywhere)) == ""
        [ann] = await _suppressions(db, "ann@example.net")
        [bob] = await _suppressions(db, "bob@example.net")
        assert (ann.scope, ann.scope_key, ann.reason) == ("list", "news", "complaint")
        assert (bob.scope, bob.scope_key, bob.reason) == ("global", "", "complaint")
        [row] = await db.read(lambda c: feedback_store.trace_rows(c, recipient="ann@example.net"))
        assert row.kind == "complaint" and "suppressed list news (complaint)" in row.detail
    finally:
        await db.close()


async def _queue(db: Database, message: NewMessage) -> None:
    await db.write(lambda c: queue_store.insert_messages(c, [message]))


async def _suppress(db: Database, address: str, reason: str, expires: datetime | None = None) -> None:
    record = consent_store.SuppressionRecord(address, address_hash(address), "global", "", reason, "test", T0,
                                             expires, None)
    await db.write(lambda c: consent_store.add_suppressions(c, [record]))


async def _states(db: Database) -> list[tuple[str, str, str | None]]:
    rows = await db.read(lambda c: c.execute(select(deliveries.c.recipient, deliveries.c.state,
                                                    deliveries.c.last_reply).order_by(deliveries.c.id)))
    return [(r.recipient, r.state, r.last_reply) for r in rows]


async def test_a_claimed_copy_to_a_suppressed_address_is_finished_instead_of_sent(db_url: str) -> None:
    db = Database(db_url)
    await db.start()
    try:
        await _queue(db, _message(1, "Gone@example.net", stream="transactional"))
        await _queue(db, _message(2, "paused@example.net", stream="transactional"))
        await _queue(db, _message(3, "paused@example.net", stream="marketing"))
        await _suppress(db, "gone@example.net", "hard-bounce")
        await _suppress(db, "paused@example.net", "soft-bounce", T0 + timedelta(days=30))
        claimed = await db.write(lambda c: queue_store.claim_due(c, node="n1", now=T0,
                                                                 lease_until=T0 + timedelta(minutes=5), limit=10))
        # Only the receipt to the paused address goes: soft-bounce holds for marketing only.
        assert [(c.recipient, c.stream) for c in claimed] == [("paused@example.net", "transactional")]
        assert await _states(db) == [("Gone@example.net", "suppressed", "suppressed: hard-bounce"),
                                     ("paused@example.net", "queued", None),
                                     ("paused@example.net", "suppressed", "suppressed: soft-bounce")]
        kinds = await db.read(lambda c: c.execute(select(events.c.kind, events.c.recipient)))
        assert sorted((r.kind, r.recipient) for r in kinds) == [("suppressed", "Gone@example.net"),
                                                                ("suppressed", "paused@example.net")]
        later = T0 + timedelta(minutes=1)
        assert await db.write(lambda c: queue_store.claim_due(c, node="n1", now=later, lease_until=later,
                                                              limit=10)) == []  # nothing is left to claim
    finally:
        await db.close()


async def test_queued_mail_is_dropped_whatever_the_case_and_a_claimed_copy_is_left_alone(db_url: str) -> None:
    db = Database(db_url)
    await db.start()
    try:
        await _queue(db, _message(1, "Gone@Example.net"))
        [claim] = await db.write(lambda c: queue_store.claim_due(c, node="n2", now=T0, lease_until=T0, limit=1))
        await _queue(db, _message(2, "gone@example.net", stream="transactional"))
        await _queue(db, _message(3, "GONE@example.net"))
        dropped = await db.write(lambda c: queue_store.drop_pending_to(c, "gone@example.net",
                                                                       "suppressed: hard-bounce", T0))
        assert dropped == 2  # the copy another node is sending is its to finish
        assert [s for _, s, _ in await _states(db)] == ["queued", "suppressed", "suppressed"]
        rows = await db.read(lambda c: c.execute(select(events.c.delivery_id)))
        assert sorted(r.delivery_id for r in rows) == sorted(
            d for d in await _ids(db) if d != claim.delivery_id)
    finally:
        await db.close()


async def _ids(db: Database) -> list[int]:
    return [r.id for r in await db.read(lambda c: c.execute(select(deliveries.c.id)))]


async def test_a_soft_bounce_suppression_drops_the_queued_marketing_mail(db_url: str) -> None:
    db = Database(db_url)
    await db.start()
    rule = SoftBounceRule(limit=2, span=timedelta(hours=1), suppress_for=timedelta(days=30))
    try:
        await _attempt(db, _message(1, "full@example.net"), "552 5.2.2 full", "permanent", MAILBOX_FULL, T0, rule)
        waiting = [_message(5, "full@example.net"), _message(6, "full@example.net", stream="transactional")]
        for message in waiting:
            await _queue(db, message)
            await db.write(lambda c, m=message: queue_store.retry_now(c, T0 + timedelta(days=9), queue_id=m.queue_id))
        await _attempt(db, _message(2, "full@example.net"), "552 5.2.2 full", "permanent", MAILBOX_FULL,
                       T0 + timedelta(hours=2), rule)
        [record] = await _suppressions(db, "full@example.net")
        assert record.reason == "soft-bounce"
        states = [(s, r) for _, s, r in await _states(db)]
        assert ("suppressed", "suppressed: soft-bounce") in states and ("queued", None) in states
    finally:
        await db.close()


async def test_bounce_bookkeeping_that_fails_is_kept_and_applied_later(db_url: str, monkeypatch: Any) -> None:
    db = Database(db_url)
    await db.start()
    try:
        async def broken(conn: Any, facts: Any, rule: Any) -> Any:
            raise SQLAlchemyError("simulated failure")

        monkeypatch.setattr(feedback_store, "apply_bounces", broken)
        await _attempt(db, _message(1, "dead@example.net"), "550 5.1.1 user unknown", "permanent", USER_UNKNOWN, T0)
        monkeypatch.undo()
        assert await _suppressions(db, "dead@example.net") == []
        assert await db.read(feedback_store.count_unapplied) == 1
        [marker] = await db.read(feedback_store.unapplied_ids)
        assert await db.write(lambda c: queue_store.reapply_marker(c, marker, DEFAULT_SOFT_RULE)) is True
        [record] = await _suppressions(db, "dead@example.net")
        assert (record.reason, record.source) == ("hard-bounce", "bounce-sync")
        assert await db.read(feedback_store.count_unapplied) == 0
        assert await db.write(lambda c: queue_store.reapply_marker(c, marker, DEFAULT_SOFT_RULE)) is False
        # The inbound processor's sweep does the same, and publishes what is left.
        monkeypatch.setattr(feedback_store, "apply_bounces", broken)
        await _attempt(db, _message(2, "dead2@example.net"), "550 5.1.1 user unknown", "permanent",
                       USER_UNKNOWN, T0)
        monkeypatch.undo()
        processor = InboundProcessor(db, TokenCodec({1: b"k" * 32}, 1), "bounces.example.com",
                                     classifier=lambda: None)  # type: ignore[arg-type,return-value]
        assert await processor.sweep() == 1
        assert REGISTRY.get_sample_value("gateway_feedback_unapplied") == 0
        assert [r.reason for r in await _suppressions(db, "dead2@example.net")] == ["hard-bounce"]
    finally:
        await db.close()


async def test_a_soft_bounce_of_one_delivery_counts_once(db_url: str) -> None:
    db = Database(db_url)
    await db.start()
    try:
        claim = await _attempt(db, _message(1, "full@example.net"), "552 5.2.2 full", "permanent", MAILBOX_FULL, T0)
        fact = feedback_store.BounceFact(T0, "full@example.net", MAILBOX_FULL, "dsn", "DSN", True, claim.delivery_id)
        [effect] = await db.write(lambda c: queue_store.apply_feedback(c, [fact], DEFAULT_SOFT_RULE))
        assert "counted already" in effect.action
        count = await db.read(lambda c: feedback_store.soft_count(c, "full@example.net"))
        assert count is not None and count.count == 1
    finally:
        await db.close()


async def test_an_inbound_row_is_applied_once_even_if_handled_twice(db_url: str) -> None:
    from gateway.feedback.inbound import Handled, _commit
    from gateway.records import InboundMessage

    db = Database(db_url)
    await db.start()
    applied: list[int] = []
    try:
        await db.write(lambda c: queue_store.insert_inbound(c, InboundMessage(
            T0, "", ("fbl@bounces.example.com",), b"x", "127.0.0.9")))
        [row] = await db.read(lambda c: queue_store.new_inbound(c))

        async def effect(conn: Any) -> None:
            applied.append(row.id)

        handled = Handled("arf", "complaint", writes=[effect])
        assert await db.write(lambda c: _commit(c, row.id, handled)) is True
        assert await db.write(lambda c: _commit(c, row.id, handled)) is False
        assert applied == [row.id]
    finally:
        await db.close()


async def test_a_parked_webhook_item_no_longer_holds_back_its_recipient(db_url: str) -> None:
    db = Database(db_url)
    await db.start()
    try:
        for n in range(2):
            await _attempt(db, _message(n, "a@example.net"), "250 ok", "delivered", None, T0)
        await db.write(lambda c: feedback_store.feed_outbox(c, "hook", {"delivered"}, T0, settle=ALL, from_start=True))
        [head] = await db.read(lambda c: feedback_store.due_items(c, "hook", T0))
        await db.write(lambda c: feedback_store.park(c, head.id, "HTTP 500"))
        [following] = await db.read(lambda c: feedback_store.due_items(c, "hook", T0))
        assert following.event_id > head.event_id
        assert await db.read(feedback_store.backlog) == 1
    finally:
        await db.close()


async def test_a_new_webhook_starts_after_the_newest_event(db_url: str) -> None:
    db = Database(db_url)
    await db.start()
    try:
        await _attempt(db, _message(1, "a@example.net"), "250 ok", "delivered", None, T0)
        await db.write(lambda c: feedback_store.ensure_cursor(c, "late"))
        assert await db.write(lambda c: feedback_store.feed_outbox(c, "late", {"delivered"}, T0, settle=ALL)) == 0
        await _attempt(db, _message(2, "b@example.net"), "250 ok", "delivered", None, T0)
        assert await db.write(lambda c: feedback_store.feed_outbox(c, "late", {"delivered"}, T0, settle=ALL)) == 1
    finally:
        await db.close()


async def test_a_row_that_keeps_failing_is_marked_failed_and_later_rows_go_on(db_url: str) -> None:
    from gateway.feedback import inbound as inbound_module
    from gateway.feedback.classify import Classifier
    from gateway.records import InboundMessage
    from gateway.rewrite.tokens import TokenCodec
    from gateway.storage.errors import StorageError
    from gateway.storage.tables import inbound

    db = Database(db_url)
    await db.start()
    try:
        for body in (b"poison", b"Subject: hello\r\n\r\njust mail\r\n"):
            await db.write(lambda c, b=body: queue_store.insert_inbound(c, InboundMessage(
                T0, "a@example.org", ("postmaster@bounces.example.com",), b, "127.0.0.9")))
        processor = inbound_module.InboundProcessor(db, TokenCodec({1: b"k" * 32}, 1), "bounces.example.com",
                                                    classifier=lambda: Classifier([]))
        real_handle = processor._handle

        async def handle(row: Any, *, last_try: bool = False) -> Any:
            if row.id == 1:
                raise StorageError("value the database refuses")
            return await real_handle(row, last_try=last_try)

        processor._handle = handle  # type: ignore[method-assign]
        for _ in range(inbound_module.MAX_ATTEMPTS + 1):
            await processor.process_new()
            processor._later.clear()  # do not wait RETRY_AFTER_SECONDS between tries
        rows = await db.read(lambda c: c.execute(select(inbound.c.id, inbound.c.state, inbound.c.attempts)
                                                 .order_by(inbound.c.id)))
        assert [(r.state, r.attempts) for r in rows] == [("failed", inbound_module.MAX_ATTEMPTS + 1), ("ignored", 1)]
    finally:
        await db.close()


ARF = (b"From: Loop <fbl@fbl.example>\r\nTo: fbl@bounces.example.com\r\nSubject: complaint\r\n"
       b"Message-ID: <arf-9@fbl.example>\r\nMIME-Version: 1.0\r\n"
       b'Content-Type: multipart/report; report-type=feedback-report; boundary="f1"\r\n\r\n'
       b"--f1\r\nContent-Type: text/plain\r\n\r\nAn abuse report.\r\n\r\n"
       b"--f1\r\nContent-Type: message/feedback-report\r\n\r\n"
       b"Feedback-Type: abuse\r\nUser-Agent: FBL/1.0\r\nVersion: 1\r\nOriginal-Rcpt-To: <>\r\n\r\n"
       b"--f1\r\nContent-Type: text/rfc822-headers\r\n\r\nFrom: Shop <news@example.com>\r\nSubject: offers\r\n\r\n"
       b"--f1--\r\n")


async def test_a_complaint_whose_key_lookup_fails_for_now_is_judged_later(db_url: str) -> None:
    import dkim
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from gateway.feedback import inbound as inbound_module
    from gateway.feedback.trust import TemporaryDnsFailure
    from gateway.records import InboundMessage
    from gateway.rewrite.tokens import TokenCodec
    from gateway.storage.tables import inbound

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())
    signed = dkim.sign(ARF, b"s1", b"fbl.example", key, include_headers=[b"from", b"subject"]) + ARF

    def failing(name: bytes, timeout: float = 5.0) -> bytes | None:
        raise TemporaryDnsFailure("SERVFAIL")

    db = Database(db_url)
    await db.start()
    try:
        await db.write(lambda c: queue_store.insert_inbound(c, InboundMessage(
            T0, "", ("fbl@bounces.example.com",), signed, "127.0.0.9")))
        rules = inbound_module.FeedbackRules(dkim_domains=("fbl.example",), dkim_lookup=failing)
        processor = inbound_module.InboundProcessor(db, TokenCodec({1: b"k" * 32}, 1), "bounces.example.com",
                                                    classifier=lambda: None, rules=rules)  # type: ignore[arg-type,return-value]

        async def row_state() -> tuple[str, int]:
            row = (await db.read(lambda c: c.execute(select(inbound.c.state, inbound.c.attempts)))).one()
            return row.state, row.attempts

        await processor.process_new()
        assert await row_state() == ("new", 1)
        await processor.process_new()
        assert await row_state() == ("new", 1)  # waits before the next try
        for _ in range(inbound_module.MAX_ATTEMPTS - 1):
            processor._later.clear()
            await processor.process_new()
        assert await row_state() == ("untrusted", inbound_module.MAX_ATTEMPTS)
    finally:
        await db.close()


async def test_two_nodes_counting_an_addresses_first_soft_bounce_both_count(db_url: str) -> None:
    import asyncio

    import pytest

    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite has one writer at a time")
    db = Database(db_url)
    facts = [feedback_store.BounceFact(T0 + timedelta(minutes=n), "full@example.net", MAILBOX_FULL, "sync",
                                       "552 full", True, 100 + n) for n in range(2)]
    try:
        async with db.engine.connect() as first, db.engine.connect() as second:
            await first.begin()
            await second.begin()
            await feedback_store.apply_bounces(first, [facts[0]], DEFAULT_SOFT_RULE)
            waiting = asyncio.create_task(feedback_store.apply_bounces(second, [facts[1]], DEFAULT_SOFT_RULE))
            await asyncio.sleep(0.3)
            assert not waiting.done()  # it queues on the address's row instead of reading "none"
            await first.commit()
            await waiting
            await second.commit()
        count = await db.read(lambda c: feedback_store.soft_count(c, "full@example.net"))
        assert count is not None and count.count == 2
    finally:
        await db.close()


async def test_the_feed_never_passes_an_event_id_that_is_not_committed_yet(db_url: str) -> None:
    import pytest
    from sqlalchemy import insert

    from gateway.feedback.webhooks import Endpoint, WebhookDispatcher

    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite ids are commit order")

    def event(recipient: str) -> dict[str, Any]:
        return {"at": T0, "kind": "delivered", "queue_id": "Q", "recipient": recipient, "reply": "250"}

    db = Database(db_url)
    await db.start()
    endpoint = Endpoint("hook", "http://hook.invalid/e", b"s" * 32, frozenset({"delivered"}), 5.0, 1, 2,
                        from_start=True)
    dispatcher = WebhookDispatcher(db, [endpoint])
    try:
        await db.write(lambda c: c.execute(insert(events), [event("a@example.net")]))
        assert await dispatcher._feed(endpoint) == 1
        async with db.engine.connect() as slow:
            await slow.begin()
            await slow.execute(insert(events), [event("b@example.net")])  # id 2, not visible yet
            await db.write(lambda c: c.execute(insert(events), [event("c@example.net")]))  # id 3
            assert await dispatcher._feed(endpoint) == 0  # held at 1: id 2 may still come
            await slow.commit()
        assert await dispatcher._feed(endpoint) == 2
        payloads = await db.read(lambda c: c.execute(select(webhook_outbox.c.event_id)))
        assert sorted(r.event_id for r in payloads) == [1, 2, 3]
    finally:
        await dispatcher._client.aclose()
        await db.close()
