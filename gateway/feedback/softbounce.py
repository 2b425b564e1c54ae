"""When soft bounces add up to a temporary suppression (pure: values in, values out).

A soft bounce says that one message failed, not that the address is dead; a mailbox that
stays full for a week, though, is as good as abandoned. So soft bounces are counted per
address, and ``limit`` of them spread over at least ``span`` - with no delivery in between,
which deletes the count - suppress the address for ``suppress_for``. The span matters:
five bounces within an hour of one campaign say little about next week. A gap longer than
``decay`` since the last counted bounce starts the count again, so that bounces months
apart never add up.

Only classes that say something about the *mailbox* count. A refusal caused by the
sender - spam blocks, policy or reputation, rate limits, authentication, TLS, relaying,
content, size - or by the network says nothing about whether the person still reads
the mail; counting those would let our own bad day suppress live addresses.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from gateway.feedback.verdicts import BounceClass, Severity, Verdict

COUNTED_CLASSES = frozenset({
    BounceClass.USER_UNKNOWN,  # a soft "unknown" (4.1.1 during a migration, say)
    BounceClass.MAILBOX_FULL,
    BounceClass.MAILBOX_DISABLED,
    BounceClass.DOMAIN_NOT_FOUND,
    BounceClass.NO_MX,
})


def counts_toward_limit(verdict: Verdict) -> bool:
    return verdict.severity is Severity.SOFT and verdict.bounce_class in COUNTED_CLASSES


@dataclass(frozen=True)
class SoftBounceRule:
    limit: int = 5
    span: timedelta = timedelta(days=7)
    suppress_for: timedelta = timedelta(days=30)
    decay: timedelta = timedelta(days=14)


@dataclass(frozen=True)
class SoftCount:
    count: int
    first_at: datetime
    last_at: datetime

    def describe(self, rule: SoftBounceRule) -> str:
        days = (self.last_at - self.first_at).total_seconds() / 86400
        return f"soft bounce {self.count} of {rule.limit} over {days:.1f} days"


@dataclass(frozen=True)
class SoftStep:
    """The new count and, when it reached the limit, the suppression's end (the stored
    count is then forgotten: after the suppression an address starts afresh)."""

    count: SoftCount
    suppress_until: datetime | None = None


def add_soft_bounce(current: SoftCount | None, at: datetime, rule: SoftBounceRule) -> SoftStep:
    """Count one more soft bounce at ``at``."""
    if current is None or at - current.last_at > rule.decay:
        new = SoftCount(1, at, at)
    else:
        new = SoftCount(current.count + 1, min(current.first_at, at), max(current.last_at, at))
    if new.count >= rule.limit and new.last_at - new.first_at >= rule.span:
        return SoftStep(new, at + rule.suppress_for)
    return SoftStep(new)
