"""Pure parts of bounce handling: soft-bounce arithmetic on a fake clock, webhook
signatures and back-off, the outbox's gap rule, complaint trust, inbound addressing."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from datetime import UTC, datetime, timedelta

from gateway.feedback.inbound import from_domain, is_automatic, is_fbl_address, unsubscribe_tokens, verp_token
from gateway.feedback.softbounce import SoftBounceRule, SoftCount, add_soft_bounce, counts_toward_limit
from gateway.feedback.trust import judge
from gateway.feedback.verdicts import BounceClass, Severity, Verdict
from gateway.feedback.webhooks import GAP_GRACE_SECONDS, Settle, backoff, give_up, settled_limit, signature
from gateway.storage.feedback_store import OutboxItem
from gateway.storage.queue_store import blocking_reason

T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
RULE = SoftBounceRule(limit=5, span=timedelta(days=7), suppress_for=timedelta(days=30), decay=timedelta(days=14))


def _run(days: list[float], rule: SoftBounceRule = RULE) -> tuple[SoftCount | None, datetime | None]:
    count: SoftCount | None = None
    for day in days:
        step = add_soft_bounce(count, T0 + timedelta(days=day), rule)
        if step.suppress_until is not None:
            return step.count, step.suppress_until
        count = step.count
    return count, None


def test_five_soft_bounces_over_a_week_suppress_for_thirty_days() -> None:
    count, until = _run([0, 1.75, 3.5, 5.25, 7])
    assert until == T0 + timedelta(days=37)
    assert count == SoftCount(5, T0, T0 + timedelta(days=7))


def test_many_soft_bounces_within_a_day_are_not_enough() -> None:
    count, until = _run([0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    assert until is None and count is not None and count.count == 7


def test_the_limit_is_reached_once_the_span_is_covered_too() -> None:
    _, until = _run([0, 0.1, 0.2, 0.3, 0.4, 7])
    assert until == T0 + timedelta(days=37)


def test_a_long_quiet_gap_starts_the_count_again() -> None:
    count, until = _run([0, 1, 2, 3, 20])
    assert until is None and count == SoftCount(1, T0 + timedelta(days=20), T0 + timedelta(days=20))


def test_only_mailbox_classes_count() -> None:
    def verdict(cls: BounceClass, severity: Severity = Severity.SOFT) -> Verdict:
        return Verdict(cls, severity, "r")

    assert counts_toward_limit(verdict(BounceClass.MAILBOX_FULL))
    assert counts_toward_limit(verdict(BounceClass.NO_MX))
    for ours in (BounceClass.SPAM_BLOCK, BounceClass.POLICY, BounceClass.RATE_LIMIT, BounceClass.AUTH_FAILURE,
                 BounceClass.TLS, BounceClass.NETWORK, BounceClass.CONTENT, BounceClass.RELAY_DENIED,
                 BounceClass.EXPIRED, BounceClass.OTHER):
        assert not counts_toward_limit(verdict(ours)), ours
    assert not counts_toward_limit(verdict(BounceClass.USER_UNKNOWN, Severity.HARD))  # hard is not counted


def test_the_signature_is_hmac_sha256_of_time_dot_body() -> None:
    body = b'{"id":1}'
    value = signature(b"s" * 32, 1_800_000_000, body)
    expected = hmac.new(b"s" * 32, b"1800000000." + body, hashlib.sha256).hexdigest()
    assert value == f"t=1800000000,v1={expected}"


def test_back_off_doubles_up_to_the_cap() -> None:
    assert [backoff(n, 1, 300).total_seconds() for n in (1, 2, 3, 9, 10, 1000)] == [1, 2, 4, 256, 300, 300]


def test_a_young_gap_in_event_ids_holds_the_cursor_and_an_old_one_is_passed() -> None:
    gaps: dict[int, float] = {}
    # No gap: as far as the ids read, never further (a later id may not be visible yet).
    assert settled_limit(10, [11, 12, 13], 100.0, gaps) == Settle(13)
    assert settled_limit(10, [11, 13, 14], 100.0, gaps) == Settle(11)
    assert settled_limit(10, [11, 13, 14], 100.0 + GAP_GRACE_SECONDS - 1, gaps) == Settle(11)
    # After the grace period the missing id is given up, and reported as such.
    assert settled_limit(10, [11, 13, 14], 100.0 + GAP_GRACE_SECONDS, gaps) == Settle(14, (12,))
    assert GAP_GRACE_SECONDS == 60


def test_a_complaint_is_trusted_by_dkim_for_an_fbl_domain_or_by_network() -> None:
    nets = [ipaddress.ip_network("192.0.2.0/24")]
    passed = judge([("fbl.mail.example", "pass")], "198.51.100.7", dkim_domains=["fbl.mail.example"],
                   networks=nets, authserv_id="gw.example.com", from_domain="reports.fbl.mail.example")
    assert passed.trusted and passed.auth_results == (
        "Authentication-Results: gw.example.com; dkim=pass header.d=fbl.mail.example")
    # d= must be a configured domain itself, and the report's From must be under it.
    below = judge([("fbl.mail.example", "pass")], "198.51.100.7", dkim_domains=["mail.example"], networks=nets,
                  authserv_id="gw.example.com", from_domain="fbl.mail.example")
    assert not below.trusted
    elsewhere = judge([("fbl.mail.example", "pass")], "198.51.100.7", dkim_domains=["fbl.mail.example"],
                      networks=nets, authserv_id="gw.example.com", from_domain="attacker.example")
    assert not elsewhere.trusted and "From domain attacker.example" in elsewhere.why
    partial = judge([("fbl.mail.example", "policy")], "198.51.100.7", dkim_domains=["fbl.mail.example"],
                    networks=nets, authserv_id="gw.example.com", from_domain="fbl.mail.example")
    assert not partial.trusted and not partial.temporary and "l=" in partial.why
    later = judge([("fbl.mail.example", "temperror")], "198.51.100.7", dkim_domains=["fbl.mail.example"],
                  networks=nets, authserv_id="gw.example.com", from_domain="fbl.mail.example")
    assert not later.trusted and later.temporary
    other = judge([("evil.example", "pass")], "198.51.100.7", dkim_domains=["mail.example"], networks=nets,
                  authserv_id="gw.example.com")
    assert not other.trusted and "evil.example" in other.why
    failing = judge([("mail.example", "fail")], "198.51.100.7", dkim_domains=["mail.example"], networks=nets,
                    authserv_id="gw.example.com")
    assert not failing.trusted
    unsigned = judge([], "192.0.2.9", dkim_domains=["mail.example"], networks=nets, authserv_id="gw.example.com")
    assert unsigned.trusted and unsigned.auth_results == "Authentication-Results: gw.example.com; none"


def test_inbound_addresses() -> None:
    domain = "bounces.example.com"
    assert verp_token(["B+ABC@Bounces.Example.com"], domain) == "ABC"
    assert verp_token(["fbl@bounces.example.com"], domain) is None
    assert unsubscribe_tokens(("unsubscribe+x@bounces.example.com", "b+y@bounces.example.com"), domain) is None
    assert is_fbl_address("FBL@bounces.example.com", ("fbl",), domain)
    assert is_fbl_address("arf@other.example", ("arf@other.example",), domain)
    assert not is_fbl_address("fbl@other.example", ("fbl",), domain)


def test_dkim_on_a_report_is_verified_with_the_lookup_it_is_given() -> None:
    import dkim

    from gateway.feedback.trust import verified_dkim_domains
    from gateway.signing import keys

    key = keys.generate_key("rsa")
    report = (b"From: fbl@fbl.example\r\nTo: fbl@bounces.example.com\r\nSubject: complaint\r\n\r\n"
              b"Feedback-Type: abuse\r\n")
    signed = dkim.sign(report, b"s1", b"fbl.example", keys.private_pem(key), include_headers=[b"from", b"subject"])
    asked: list[bytes] = []

    def lookup(name: bytes, timeout: float = 5) -> bytes | None:
        asked.append(name)
        return keys.txt_value(key).encode() if name.startswith(b"s1._domainkey.fbl.example") else None

    assert verified_dkim_domains(signed + report, lookup) == [("fbl.example", "pass")]
    assert asked and asked[0].startswith(b"s1._domainkey.fbl.example")
    assert verified_dkim_domains(signed + report.replace(b"abuse", b"other"), lookup) == [("fbl.example", "fail")]
    assert verified_dkim_domains(report, lookup) == []


def test_a_webhook_item_is_parked_after_too_many_tries_or_too_long() -> None:
    item = OutboxItem(1, 7, 48, "{}", T0)
    assert not give_up(item, T0 + timedelta(hours=1), max_attempts=50, max_age=86400)
    assert give_up(OutboxItem(1, 7, 49, "{}", T0), T0 + timedelta(hours=1), max_attempts=50, max_age=86400)
    assert give_up(item, T0 + timedelta(days=1), max_attempts=50, max_age=86400)


def test_which_global_suppressions_stop_a_queued_copy() -> None:
    assert blocking_reason(["hard-bounce"], "transactional") == "hard-bounce"
    assert blocking_reason(["complaint", "unsubscribe"], "transactional") == "complaint"
    assert blocking_reason(["soft-bounce", "unsubscribe"], "transactional") is None
    assert blocking_reason(["soft-bounce"], "marketing") == "soft-bounce"
    assert blocking_reason([], "marketing") is None


def test_auto_replies_and_the_from_domain_are_read_from_the_headers() -> None:
    assert is_automatic(b"Auto-Submitted: auto-replied\r\nFrom: a@b.example\r\n\r\nbody")
    assert not is_automatic(b"Auto-Submitted: no\r\n\r\nbody")
    assert not is_automatic(b"From: a@b.example\r\n\r\nAuto-Submitted: auto-replied\r\n")
    assert from_domain(b"From: Loop <Reports@FBL.Mail.Example>\r\n\r\n") == "fbl.mail.example"
    assert from_domain(b"Subject: none\r\n\r\n") == ""


async def test_a_webhook_post_is_bounded_by_its_timeout_overall() -> None:
    import asyncio

    import httpx

    from gateway.feedback.webhooks import Endpoint, WebhookDispatcher

    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5)
        return httpx.Response(200)

    endpoint = Endpoint("hook", "http://hook.invalid/e", b"s" * 32, frozenset({"delivered"}), 0.1, 1, 2)
    dispatcher = WebhookDispatcher(None, [endpoint], transport=httpx.MockTransport(slow))  # type: ignore[arg-type]
    started = asyncio.get_running_loop().time()
    error = await dispatcher._post(endpoint, OutboxItem(1, 1, 0, "{}", T0))
    assert error == "no answer within 0.1 s" and asyncio.get_running_loop().time() - started < 1
    await dispatcher._client.aclose()
