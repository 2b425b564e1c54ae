"""The pure consent and suppression rules, one rule at a time, then the tables that chain them.

Every case builds its own :class:`Facts`; the clock is the fixed ``NOW`` below, never the
real one.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gateway.ingest import rules
from gateway.ingest.rules import (
    ANY_STREAM_REASONS,
    ANY_STREAM_RULES,
    DEFAULT_ACTIONS,
    DEFAULT_CAP_DAYS,
    MARKETING_RULES,
    REASONS,
    SUPPRESSION_REASONS,
    TRANSACTIONAL_RULES,
    Consent,
    Facts,
    ListInfo,
    Refusal,
    Suppression,
    campaign_suppression,
    consent,
    decide,
    default_action,
    frequency_cap,
    global_suppression,
    global_suppression_any_stream,
    is_role_account,
    known_list,
    list_suppression,
    role_account,
    rules_for,
)

NOW = datetime(2026, 11, 24, 9, 30, tzinfo=UTC)
LATER = NOW + timedelta(days=30)
EARLIER = NOW - timedelta(days=30)

# A double opt-in newsletter, and a list of receipts that needs no consent.
GARDEN = ListInfo("garden-tips", "marketing", double_opt_in=True)
RECEIPTS = ListInfo("receipts", "transactional", double_opt_in=False)
MARKETING_ONLY_REASONS = ("unsubscribe", "role-account", "soft-bounce")


def marketing(**changes: Any) -> Facts:
    """A recipient who may get the garden-tips newsletter; ``changes`` spoil that."""
    base = Facts(recipient="mirela.ionescu@allotment.example", now=NOW, stream="marketing",
                 list_key="garden-tips", campaign="seed-swap-2026", list_info=GARDEN,
                 consent=Consent("confirmed", "weekly"))
    return replace(base, **changes)


def transactional(**changes: Any) -> Facts:
    base = Facts(recipient="mirela.ionescu@allotment.example", now=NOW, stream="transactional")
    return replace(base, **changes)


def glob(reason: str, expires_at: datetime | None = None) -> Suppression:
    return Suppression("global", "", reason, expires_at)


# -- vocabulary -------------------------------------------------------------------------


def test_reason_vocabulary() -> None:
    assert len(set(REASONS)) == len(REASONS)
    assert set(SUPPRESSION_REASONS) < set(REASONS)
    assert set(REASONS) - set(SUPPRESSION_REASONS) == {"no-consent", "unknown-list", "frequency-cap"}
    assert sorted(ANY_STREAM_REASONS) == ["complaint", "hard-bounce", "import", "manual", "spam-trap"]
    assert set(SUPPRESSION_REASONS) - ANY_STREAM_REASONS == set(MARKETING_ONLY_REASONS)


def test_default_actions_reject_everything_but_a_frequency_cap() -> None:
    assert set(DEFAULT_ACTIONS) == set(REASONS)
    assert DEFAULT_ACTIONS["frequency-cap"] == "drop"
    assert {reason for reason, action in DEFAULT_ACTIONS.items() if action == "reject"} == (
        set(REASONS) - {"frequency-cap"})


def test_default_action_of_an_unlisted_reason_is_reject() -> None:
    assert default_action("something-new") == "reject"
    assert default_action("frequency-cap") == "drop"


def test_refusal_describe() -> None:
    assert Refusal("hard-bounce").describe() == "hard-bounce"
    assert Refusal("no-consent", "garden-tips").describe() == "no-consent (garden-tips)"
    assert Refusal("frequency-cap", "garden-tips, weekly").describe() == "frequency-cap (garden-tips, weekly)"


# -- suppressions -------------------------------------------------------------------------


def test_suppression_active_until_it_expires() -> None:
    assert Suppression("global", "", "manual").active(NOW)
    assert Suppression("global", "", "manual", expires_at=NOW + timedelta(seconds=1)).active(NOW)
    assert not Suppression("global", "", "manual", expires_at=NOW).active(NOW)
    assert not Suppression("global", "", "manual", expires_at=NOW - timedelta(seconds=1)).active(NOW)


@pytest.mark.parametrize("reason", SUPPRESSION_REASONS)
def test_global_suppression_refuses_marketing_for_every_reason(reason: str) -> None:
    facts = marketing(suppressions=[glob(reason)])
    assert global_suppression(facts) == Refusal(reason, "")
    assert decide(facts, MARKETING_RULES) == Refusal(reason)


@pytest.mark.parametrize("reason", SUPPRESSION_REASONS)
def test_expired_global_suppression_no_longer_counts(reason: str) -> None:
    facts = marketing(suppressions=[glob(reason, expires_at=EARLIER)])
    assert global_suppression(facts) is None
    assert global_suppression_any_stream(facts) is None
    assert decide(facts, MARKETING_RULES) is None
    assert decide(replace(facts, stream="transactional"), TRANSACTIONAL_RULES) is None


@pytest.mark.parametrize("reason", SUPPRESSION_REASONS)
def test_unexpired_temporary_suppression_counts(reason: str) -> None:
    facts = marketing(suppressions=[glob(reason, expires_at=LATER)])
    assert global_suppression(facts) == Refusal(reason)


@pytest.mark.parametrize("reason", sorted(ANY_STREAM_REASONS))
def test_transactional_mail_never_skips_the_serious_suppressions(reason: str) -> None:
    facts = transactional(suppressions=[glob(reason)])
    assert global_suppression_any_stream(facts) == Refusal(reason)
    assert decide(facts, TRANSACTIONAL_RULES) == Refusal(reason)
    assert decide(facts, ANY_STREAM_RULES) == Refusal(reason)


@pytest.mark.parametrize("reason", MARKETING_ONLY_REASONS)
def test_transactional_mail_skips_unsubscribe_and_role_account_suppressions(reason: str) -> None:
    facts = transactional(suppressions=[glob(reason)])
    assert global_suppression_any_stream(facts) is None
    assert decide(facts, TRANSACTIONAL_RULES) is None
    assert decide(facts, ANY_STREAM_RULES) is None
    # ... while the marketing table refuses the same person.
    assert decide(marketing(suppressions=[glob(reason)]), MARKETING_RULES) == Refusal(reason)


def test_any_stream_suppression_found_behind_a_marketing_only_one() -> None:
    facts = transactional(suppressions=[glob("unsubscribe"), glob("complaint")])
    assert decide(facts, TRANSACTIONAL_RULES) == Refusal("complaint")


def test_first_active_suppression_wins_and_expired_ones_are_passed_over() -> None:
    facts = marketing(suppressions=[glob("manual", expires_at=EARLIER), glob("complaint"), glob("hard-bounce")])
    assert global_suppression(facts) == Refusal("complaint")


def test_list_and_campaign_suppressions_are_not_global() -> None:
    facts = marketing(suppressions=[Suppression("list", "garden-tips", "unsubscribe"),
                                    Suppression("campaign", "seed-swap-2026", "unsubscribe")])
    assert global_suppression(facts) is None
    assert global_suppression_any_stream(facts) is None


def test_list_suppression_only_within_that_list() -> None:
    own = Suppression("list", "garden-tips", "unsubscribe")
    other = Suppression("list", "bird-watching", "unsubscribe")
    assert list_suppression(marketing(suppressions=[own])) == Refusal("unsubscribe", "list garden-tips")
    assert list_suppression(marketing(suppressions=[other])) is None
    assert decide(marketing(suppressions=[other]), MARKETING_RULES) is None
    assert list_suppression(marketing(suppressions=[replace(own, expires_at=EARLIER)])) is None
    assert list_suppression(marketing(suppressions=[replace(own, expires_at=LATER)])) is not None


def test_list_suppression_needs_a_list_on_the_message() -> None:
    facts = marketing(list_key="", list_info=None, suppressions=[Suppression("list", "", "unsubscribe")])
    assert list_suppression(facts) is None


def test_campaign_suppression_only_within_that_campaign() -> None:
    spring = Suppression("campaign", "spring", "complaint")
    assert campaign_suppression(marketing(campaign="spring", suppressions=[spring])) == Refusal(
        "complaint", "campaign spring")
    assert campaign_suppression(marketing(campaign="autumn", suppressions=[spring])) is None
    assert decide(marketing(campaign="autumn", suppressions=[spring]), MARKETING_RULES) is None
    assert campaign_suppression(marketing(campaign="", suppressions=[spring])) is None
    expired = replace(spring, expires_at=EARLIER)
    assert campaign_suppression(marketing(campaign="spring", suppressions=[expired])) is None


def test_campaign_suppression_also_holds_for_transactional_mail() -> None:
    spring = Suppression("campaign", "spring", "unsubscribe")
    assert decide(transactional(campaign="spring", suppressions=[spring]), TRANSACTIONAL_RULES) == Refusal(
        "unsubscribe", "campaign spring")
    assert decide(transactional(campaign="autumn", suppressions=[spring]), TRANSACTIONAL_RULES) is None


def test_a_list_suppression_is_not_a_campaign_suppression_of_the_same_name() -> None:
    facts = marketing(list_key="spring", list_info=replace(GARDEN, key="spring"), campaign="spring",
                      suppressions=[Suppression("list", "spring", "unsubscribe")])
    assert campaign_suppression(facts) is None
    assert list_suppression(facts) == Refusal("unsubscribe", "list spring")


def test_transactional_mail_ignores_list_suppressions() -> None:
    facts = transactional(list_key="receipts", list_info=RECEIPTS,
                          suppressions=[Suppression("list", "receipts", "unsubscribe")])
    assert decide(facts, TRANSACTIONAL_RULES) is None


# -- role accounts --------------------------------------------------------------------------


def test_role_account_rule() -> None:
    assert role_account(marketing(role_account=True)) == Refusal("role-account")
    assert role_account(marketing(role_account=False)) is None


def test_role_account_refused_for_marketing_only() -> None:
    assert decide(marketing(recipient="postmaster@allotment.example", role_account=True),
                  MARKETING_RULES) == Refusal("role-account")
    assert decide(transactional(recipient="postmaster@allotment.example", role_account=True),
                  TRANSACTIONAL_RULES) is None
    assert decide(transactional(role_account=True), ANY_STREAM_RULES) is None


@pytest.mark.parametrize("address", [
    "abuse@allotment.example", "Abuse@allotment.example", "POSTMASTER@ALLOTMENT.EXAMPLE",
    "No-Reply@shop.example", "noreply@shop.example", "MAILER-DAEMON@relay.example", "root@host.example",
    "hostmaster@zone.example", "webmaster@site.example", "noc@isp.example", "security@bank.example",
])
def test_is_role_account(address: str) -> None:
    assert is_role_account(address)


@pytest.mark.parametrize("address", [
    "mirela@allotment.example", "abuse.desk@isp.example", "ana@abuse.example", "rooted@host.example",
    "abuse", "", "@abuse.example",
])
def test_is_not_role_account(address: str) -> None:
    assert not is_role_account(address)


def test_is_role_account_with_own_local_parts() -> None:
    mine = frozenset({"info", "sales"})
    assert is_role_account("Info@shop.example", mine)
    assert is_role_account("SALES@shop.example", mine)
    assert not is_role_account("abuse@shop.example", mine)


def test_is_role_account_reads_the_local_part_before_the_last_at() -> None:
    assert is_role_account('abuse@shop.example@relay.example', frozenset({"abuse@shop.example"}))


# -- lists ------------------------------------------------------------------------------------


def test_known_list() -> None:
    assert known_list(marketing()) is None
    assert known_list(marketing(list_key="", list_info=None)) == Refusal(
        "unknown-list", "marketing mail names no list")
    assert known_list(marketing(list_key="gone-list", list_info=None)) == Refusal("unknown-list", "gone-list")


def test_unknown_list_refused_for_marketing_not_for_transactional() -> None:
    assert decide(marketing(list_key="gone-list", list_info=None), MARKETING_RULES) == Refusal(
        "unknown-list", "gone-list")
    assert decide(marketing(list_key="", list_info=None), MARKETING_RULES) == Refusal(
        "unknown-list", "marketing mail names no list")
    assert decide(transactional(list_key="gone-list"), TRANSACTIONAL_RULES) is None
    assert decide(transactional(), TRANSACTIONAL_RULES) is None


# -- consent ------------------------------------------------------------------------------------


def test_confirmed_consent_passes() -> None:
    assert consent(marketing()) is None
    assert decide(marketing(), MARKETING_RULES) is None


@pytest.mark.parametrize("given", [None, Consent("pending", "weekly"), Consent("withdrawn", "weekly"),
                                   Consent("withdrawn"), Consent("unknown-status")])
def test_marketing_without_confirmed_consent_refused(given: Consent | None) -> None:
    facts = marketing(consent=given)
    assert consent(facts) == Refusal("no-consent", "garden-tips")
    assert decide(facts, MARKETING_RULES) == Refusal("no-consent", "garden-tips")


def test_pending_is_not_enough_on_a_single_opt_in_list_either() -> None:
    single = replace(GARDEN, double_opt_in=False)
    assert consent(marketing(list_info=single, consent=Consent("pending"))) == Refusal(
        "no-consent", "garden-tips")


def test_transactional_kind_list_needs_no_consent() -> None:
    facts = marketing(list_key="receipts", list_info=RECEIPTS, consent=None)
    assert consent(facts) is None
    assert decide(facts, MARKETING_RULES) is None
    assert consent(replace(facts, consent=Consent("withdrawn"))) is None


def test_consent_rule_alone_leaves_unknown_lists_to_known_list() -> None:
    assert consent(marketing(list_key="gone-list", list_info=None, consent=None)) is None


def test_transactional_stream_needs_no_consent() -> None:
    assert decide(transactional(list_key="garden-tips", list_info=GARDEN, consent=None),
                  TRANSACTIONAL_RULES) is None


# -- frequency caps ------------------------------------------------------------------------------


def test_weekly_cap_refuses_six_days_after_the_last_send_and_allows_after_seven() -> None:
    refused = marketing(last_sent_at=NOW - timedelta(days=6))
    assert frequency_cap(refused) == Refusal("frequency-cap", "garden-tips, weekly")
    assert decide(refused, MARKETING_RULES) == Refusal("frequency-cap", "garden-tips, weekly")
    almost = marketing(last_sent_at=NOW - timedelta(days=7) + timedelta(seconds=1))
    assert frequency_cap(almost) is not None
    assert frequency_cap(marketing(last_sent_at=NOW - timedelta(days=7))) is None
    assert frequency_cap(marketing(last_sent_at=NOW - timedelta(days=8))) is None


def test_daily_cap() -> None:
    daily = Consent("confirmed", "daily")
    assert frequency_cap(marketing(consent=daily, last_sent_at=NOW - timedelta(hours=23))) == Refusal(
        "frequency-cap", "garden-tips, daily")
    assert frequency_cap(marketing(consent=daily, last_sent_at=NOW - timedelta(hours=24))) is None
    assert frequency_cap(marketing(consent=daily, last_sent_at=NOW - timedelta(days=2))) is None


@pytest.mark.parametrize(("frequency", "days"), sorted(DEFAULT_CAP_DAYS.items()))
def test_default_windows(frequency: str, days: float) -> None:
    given = Consent("confirmed", frequency)
    inside = marketing(consent=given, last_sent_at=NOW - timedelta(days=days) + timedelta(minutes=1))
    at_end = marketing(consent=given, last_sent_at=NOW - timedelta(days=days))
    assert frequency_cap(inside) == Refusal("frequency-cap", f"garden-tips, {frequency}")
    assert frequency_cap(at_end) is None


def test_default_windows_values() -> None:
    assert DEFAULT_CAP_DAYS == {"daily": 1, "weekly": 7, "biweekly": 14, "monthly": 30, "quarterly": 91}
    assert set(DEFAULT_CAP_DAYS) == set(rules.FREQUENCIES)


def test_per_list_cap_days_override_shortens_the_window() -> None:
    brisk = replace(GARDEN, cap_days={"weekly": 3})
    assert frequency_cap(marketing(list_info=brisk, last_sent_at=NOW - timedelta(days=2))) is not None
    assert frequency_cap(marketing(list_info=brisk, last_sent_at=NOW - timedelta(days=4))) is None


def test_per_list_cap_days_override_lengthens_the_window() -> None:
    slow = replace(GARDEN, cap_days={"weekly": 10.5})
    assert frequency_cap(marketing(list_info=slow, last_sent_at=NOW - timedelta(days=8))) is not None
    assert frequency_cap(marketing(list_info=slow, last_sent_at=NOW - timedelta(days=10, hours=11))) is not None
    assert frequency_cap(marketing(list_info=slow, last_sent_at=NOW - timedelta(days=10, hours=12))) is None


def test_override_of_one_frequency_leaves_the_others_at_their_defaults() -> None:
    brisk = replace(GARDEN, cap_days={"weekly": 3})
    daily = Consent("confirmed", "daily")
    assert frequency_cap(marketing(list_info=brisk, consent=daily,
                                   last_sent_at=NOW - timedelta(hours=12))) is not None
    assert brisk.cap("monthly") == timedelta(days=30)


def test_zero_days_override_switches_the_cap_off() -> None:
    uncapped = replace(GARDEN, cap_days={"weekly": 0})
    assert uncapped.cap("weekly") is None
    assert frequency_cap(marketing(list_info=uncapped, last_sent_at=NOW - timedelta(minutes=5))) is None


def test_no_consent_frequency_means_no_cap() -> None:
    facts = marketing(consent=Consent("confirmed", None), last_sent_at=NOW - timedelta(minutes=5))
    assert GARDEN.cap(None) is None
    assert frequency_cap(facts) is None
    assert decide(facts, MARKETING_RULES) is None


def test_unknown_frequency_means_no_cap() -> None:
    facts = marketing(consent=Consent("confirmed", "hourly"), last_sent_at=NOW - timedelta(minutes=5))
    assert GARDEN.cap("hourly") is None
    assert frequency_cap(facts) is None


def test_first_send_is_never_capped() -> None:
    assert frequency_cap(marketing(last_sent_at=None)) is None


def test_cap_needs_a_known_list_and_a_consent() -> None:
    assert frequency_cap(marketing(list_info=None, last_sent_at=NOW)) is None
    assert frequency_cap(marketing(consent=None, last_sent_at=NOW)) is None


def test_transactional_mail_is_never_capped() -> None:
    facts = transactional(list_key="garden-tips", list_info=GARDEN, consent=Consent("confirmed", "daily"),
                          last_sent_at=NOW - timedelta(minutes=1))
    assert decide(facts, TRANSACTIONAL_RULES) is None


def test_frequency_cap_is_dropped_not_rejected() -> None:
    refusal = decide(marketing(last_sent_at=NOW - timedelta(days=1)), MARKETING_RULES)
    assert refusal is not None
    assert DEFAULT_ACTIONS[refusal.reason] == "drop"


# -- tables and precedence ------------------------------------------------------------------------


def test_rules_for() -> None:
    assert rules_for("marketing") == MARKETING_RULES
    assert rules_for("transactional") == TRANSACTIONAL_RULES
    assert rules_for("") == TRANSACTIONAL_RULES
    assert rules_for("Marketing") == TRANSACTIONAL_RULES  # streams are matched exactly


def test_table_contents_and_order() -> None:
    assert list(MARKETING_RULES) == [global_suppression, role_account, known_list, list_suppression,
                                     campaign_suppression, consent, frequency_cap]
    assert list(TRANSACTIONAL_RULES) == [global_suppression_any_stream, campaign_suppression]
    assert list(ANY_STREAM_RULES) == [global_suppression_any_stream]


def test_hard_bounce_reported_before_missing_consent() -> None:
    facts = marketing(consent=None, suppressions=[glob("hard-bounce")])
    assert consent(facts) is not None
    assert decide(facts, MARKETING_RULES) == Refusal("hard-bounce")


def test_marketing_precedence_follows_the_table() -> None:
    """A recipient wrong in every way: each fix in turn uncovers the next rule's refusal."""
    facts = marketing(
        list_key="gone-list", list_info=None, campaign="spring", role_account=True, consent=None,
        last_sent_at=NOW - timedelta(hours=1),
        suppressions=[glob("unsubscribe"), Suppression("list", "garden-tips", "unsubscribe"),
                      Suppression("campaign", "spring", "complaint")])
    seen: list[Refusal | None] = []
    fixes: list[dict[str, Any]] = [
        {"suppressions": [s for s in facts.suppressions if s.scope != "global"]},
        {"role_account": False},
        {"list_key": "garden-tips", "list_info": GARDEN},
        {"suppressions": [Suppression("campaign", "spring", "complaint")]},
        {"suppressions": []},
        {"consent": Consent("confirmed", "weekly")},
        {"last_sent_at": None},
    ]
    for fix in fixes:
        seen.append(decide(facts, MARKETING_RULES))
        facts = replace(facts, **fix)
    seen.append(decide(facts, MARKETING_RULES))
    assert seen == [
        Refusal("unsubscribe"),
        Refusal("role-account"),
        Refusal("unknown-list", "gone-list"),
        Refusal("unsubscribe", "list garden-tips"),
        Refusal("complaint", "campaign spring"),
        Refusal("no-consent", "garden-tips"),
        Refusal("frequency-cap", "garden-tips, weekly"),
        None,
    ]


def test_transactional_precedence() -> None:
    facts = transactional(campaign="spring", suppressions=[Suppression("campaign", "spring", "complaint"),
                                                           glob("spam-trap")])
    assert decide(facts, TRANSACTIONAL_RULES) == Refusal("spam-trap")
    assert decide(replace(facts, suppressions=facts.suppressions[:1]), TRANSACTIONAL_RULES) == Refusal(
        "complaint", "campaign spring")


def test_transactional_mail_passes_every_marketing_only_obstacle() -> None:
    facts = transactional(list_key="garden-tips", list_info=GARDEN, role_account=True, consent=None,
                          last_sent_at=NOW,
                          suppressions=[glob("unsubscribe"), glob("role-account"),
                                        Suppression("list", "garden-tips", "unsubscribe")])
    assert decide(facts, TRANSACTIONAL_RULES) is None
    assert decide(replace(facts, stream="marketing"), MARKETING_RULES) == Refusal("unsubscribe")


def test_decide_stops_at_the_first_refusal() -> None:
    called: list[str] = []

    def passes(facts: Facts) -> Refusal | None:
        called.append("passes")
        return None

    def refuses(facts: Facts) -> Refusal | None:
        called.append("refuses")
        return Refusal("manual", "first")

    def never(facts: Facts) -> Refusal | None:
        called.append("never")
        return Refusal("complaint", "second")

    assert decide(marketing(), [passes, refuses, never]) == Refusal("manual", "first")
    assert called == ["passes", "refuses"]


def test_decide_with_no_rules_allows() -> None:
    assert decide(marketing(consent=None, suppressions=[glob("hard-bounce")]), ()) is None


def test_rules_read_no_clock_but_facts_now() -> None:
    """The same facts at another ``now``: a temporary suppression and a cap both lapse."""
    facts = marketing(suppressions=[glob("manual", expires_at=NOW + timedelta(days=2))],
                      last_sent_at=NOW - timedelta(days=1))
    assert decide(facts, MARKETING_RULES) == Refusal("manual")
    assert decide(replace(facts, now=NOW + timedelta(days=2)), MARKETING_RULES) == Refusal(
        "frequency-cap", "garden-tips, weekly")
    assert decide(replace(facts, now=NOW + timedelta(days=6)), MARKETING_RULES) is None
