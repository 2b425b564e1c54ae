"""Warm-up arithmetic (pure): which day of its schedule an IP is on, and today's cap.

An IP with a ``warmup_start`` date is on day 1 that day (and before it), day 2 the next,
and so on; ``held_days`` moves it back. The schedule lists caps from a day on: the cap of
day N is the one of the highest listed day <= N, and None means unlimited.

Health: the gateway counts, per IP, provider and day, attempts and deferrals (4xx replies
and automation-rule matches). When the share of deferrals passes ``max_deferral_share``
after at least ``min_attempts`` attempts, the schedule for that IP and provider pauses
(tomorrow repeats today's day) or steps back (tomorrow is ``step_back_days`` days before
today's day). A decision takes effect the day after it is taken, never on the day itself:
mail already let through today under today's cap is not suddenly over it. The decision is
taken at most once per IP, provider and day.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Literal

Decision = Literal["healthy", "pause", "step_back"]


@dataclass(frozen=True)
class WarmupSchedule:
    caps: tuple[tuple[int, int | None], ...]  # (from day, cap or None), ascending days

    @classmethod
    def from_days(cls, days: Mapping[int, int | None]) -> WarmupSchedule:
        return cls(tuple(sorted(days.items())))

    def cap(self, day: int) -> int | None:
        found: int | None = self.caps[0][1] if self.caps else None
        for first, cap in self.caps:
            if first > day:
                break
            found = cap
        return found

    @property
    def last_day(self) -> int:
        return self.caps[-1][0] if self.caps else 1


def day_index(start: date, today: date, held_days: int = 0) -> int:
    return max(1, (today - start).days + 1 - held_days)


@dataclass(frozen=True)
class HealthRule:
    max_deferral_share: float = 0.1
    min_attempts: int = 20
    action: Literal["pause", "step_back"] = "pause"
    step_back_days: int = 3


def assess(rule: HealthRule, attempts: int, deferrals: int) -> Decision:
    if attempts < rule.min_attempts or attempts == 0:
        return "healthy"
    if deferrals / attempts <= rule.max_deferral_share:
        return "healthy"
    return rule.action


def held_after(rule: HealthRule, decision: Decision, held_days: int) -> int:
    """``held_days`` from tomorrow on: a pause makes tomorrow's day equal today's (one more
    held day); a step back makes it ``step_back_days`` before today's (that many more)."""
    if decision == "pause":
        return held_days + 1
    if decision == "step_back":
        return held_days + 1 + rule.step_back_days
    return held_days


@dataclass(frozen=True)
class Hold:
    """A health decision for one IP and provider: ``before`` held days apply up to and
    including ``decided_on``, ``after`` from the next day on."""

    before: int
    after: int
    decided_on: date

    def held_on(self, day: date) -> int:
        return self.after if day > self.decided_on else self.before


def held_on(hold: Hold | None, day: date) -> int:
    return 0 if hold is None else hold.held_on(day)


def counts_as_deferral(kind: str, rule_action: str | None) -> bool:
    """Whether a reply counts against warm-up health: a temporary failure, or a reply that
    matched a suspend or throttle rule. A reply matching a ``bounce`` rule (even a 4xx one)
    fails that message for good (bad authentication, say); it is not a sign that the
    provider wants less volume from the IP."""
    if rule_action == "bounce":
        return False
    return kind == "transient" or rule_action in ("suspend", "throttle")
