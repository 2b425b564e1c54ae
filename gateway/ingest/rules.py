"""Who may receive a message (pure): each rule a small named function, chained by a table.

A rule looks at the :class:`Facts` about one recipient of one message and returns a
:class:`Refusal` or None. The first refusal wins, so the table's order is the order of
precedence: a hard bounce is reported as a hard bounce even when consent is missing too.
Facts are gathered by :mod:`gateway.ingest.gate` (the thin I/O part); nothing here reads a
clock or a database.

When the rules run:
- at RCPT, the stream is not known yet (the control headers come with DATA), so only
  :data:`ANY_STREAM_RULES` apply - suppressions that hold whatever the mail is - unless
  the account pins a default list, whose marketing rules then run at RCPT too;
- at end of DATA, the rules of the message's stream: :data:`MARKETING_RULES` or
  :data:`TRANSACTIONAL_RULES`. Transactional mail skips consent, caps, role accounts and
  global unsubscribes, but never a hard bounce, complaint or spam trap; a campaign's own
  suppressions ("do not send this campaign twice") hold whatever the stream.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

Action = Literal["reject", "drop"]
# Why a recipient can be refused; the suppression reasons are also refusal reasons.
# A "soft-bounce" suppression (repeated mailbox-full and the like, with an expiry) holds for
# marketing mail only: a receipt may still get through once the mailbox has room.
SUPPRESSION_REASONS = ("hard-bounce", "complaint", "unsubscribe", "manual", "import", "role-account",
                       "spam-trap", "soft-bounce")
REASONS = (*SUPPRESSION_REASONS, "no-consent", "unknown-list", "frequency-cap")


def default_action(reason: str) -> Action:
    """Refuse at once (5xx), except for a frequency cap: that message is only dropped."""
    return "drop" if reason == "frequency-cap" else "reject"


DEFAULT_ACTIONS: Mapping[str, Action] = {reason: default_action(reason) for reason in REASONS}
# Suppressions that keep any mail away; the others (unsubscribe, role-account) only marketing.
ANY_STREAM_REASONS = frozenset({"hard-bounce", "complaint", "spam-trap", "manual", "import"})
FREQUENCIES = ("daily", "weekly", "biweekly", "monthly", "quarterly")
DEFAULT_CAP_DAYS: Mapping[str, float] = {"daily": 1, "weekly": 7, "biweekly": 14, "monthly": 30,
                                         "quarterly": 91}


@dataclass(frozen=True)
class Suppression:
    scope: str  # global | list | campaign
    scope_key: str
    reason: str
    expires_at: datetime | None = None

    def active(self, now: datetime) -> bool:
        return self.expires_at is None or self.expires_at > now


@dataclass(frozen=True)
class ListInfo:
    key: str
    kind: str  # marketing | transactional
    double_opt_in: bool
    cap_days: Mapping[str, float] = field(default_factory=dict)

    def cap(self, frequency: str | None) -> timedelta | None:
        if frequency is None:
            return None
        days = self.cap_days.get(frequency, DEFAULT_CAP_DAYS.get(frequency))
        return timedelta(days=days) if days else None


@dataclass(frozen=True)
class Consent:
    status: str  # pending | confirmed | withdrawn
    frequency: str | None = None


@dataclass(frozen=True)
class Facts:
    """Everything the rules may look at for one recipient of one message."""

    recipient: str
    now: datetime
    stream: str = "transactional"
    list_key: str = ""
    campaign: str = ""
    suppressions: Sequence[Suppression] = ()
    role_account: bool = False
    list_info: ListInfo | None = None
    consent: Consent | None = None
    last_sent_at: datetime | None = None


@dataclass(frozen=True)
class Refusal:
    reason: str
    detail: str = ""  # for people: which list, campaign or scope

    def describe(self) -> str:
        return f"{self.reason} ({self.detail})" if self.detail else self.reason


Rule = Callable[[Facts], Refusal | None]


def _suppressed(facts: Facts, scope: str, key: str, reasons: frozenset[str] | None = None) -> Refusal | None:
    for suppression in facts.suppressions:
        if (suppression.scope == scope and suppression.scope_key == key and suppression.active(facts.now)
                and (reasons is None or suppression.reason in reasons)):
            return Refusal(suppression.reason, f"{scope} {key}".strip() if scope != "global" else "")
    return None


def global_suppression_any_stream(facts: Facts) -> Refusal | None:
    return _suppressed(facts, "global", "", ANY_STREAM_REASONS)


def global_suppression(facts: Facts) -> Refusal | None:
    return _suppressed(facts, "global", "")


def role_account(facts: Facts) -> Refusal | None:
    return Refusal("role-account") if facts.role_account else None


def known_list(facts: Facts) -> Refusal | None:
    if not facts.list_key:
        return Refusal("unknown-list", "marketing mail names no list")
    return None if facts.list_info is not None else Refusal("unknown-list", facts.list_key)


def consent(facts: Facts) -> Refusal | None:
    """Marketing lists need confirmed consent; a pending double opt-in is not enough."""
    if facts.list_info is None or facts.list_info.kind != "marketing":
        return None
    if facts.consent is None or facts.consent.status != "confirmed":
        return Refusal("no-consent", facts.list_key)
    return None


def list_suppression(facts: Facts) -> Refusal | None:
    return _suppressed(facts, "list", facts.list_key) if facts.list_key else None


def campaign_suppression(facts: Facts) -> Refusal | None:
    return _suppressed(facts, "campaign", facts.campaign) if facts.campaign else None


def frequency_cap(facts: Facts) -> Refusal | None:
    """At most one message per list per the window of the contact's chosen frequency."""
    if facts.list_info is None or facts.consent is None or facts.last_sent_at is None:
        return None
    window = facts.list_info.cap(facts.consent.frequency)
    if window is not None and facts.now - facts.last_sent_at < window:
        return Refusal("frequency-cap", f"{facts.list_key}, {facts.consent.frequency}")
    return None


ANY_STREAM_RULES: tuple[Rule, ...] = (global_suppression_any_stream,)
MARKETING_RULES: tuple[Rule, ...] = (global_suppression, role_account, known_list, list_suppression,
                                     campaign_suppression, consent, frequency_cap)
TRANSACTIONAL_RULES: tuple[Rule, ...] = (global_suppression_any_stream, campaign_suppression)


def rules_for(stream: str) -> tuple[Rule, ...]:
    return MARKETING_RULES if stream == "marketing" else TRANSACTIONAL_RULES


def decide(facts: Facts, rules: Sequence[Rule]) -> Refusal | None:
    """The first refusal in table order, or None: the recipient may get the message."""
    for rule in rules:
        refusal = rule(facts)
        if refusal is not None:
            return refusal
    return None


DEFAULT_ROLE_LOCAL_PARTS = frozenset({
    "abuse", "postmaster", "hostmaster", "webmaster", "noc", "security", "mailer-daemon",
    "noreply", "no-reply", "root",
})


def is_role_account(address: str, local_parts: frozenset[str] = DEFAULT_ROLE_LOCAL_PARTS) -> bool:
    return address.rpartition("@")[0].lower() in local_parts
