"""Warm-up arithmetic (pure): which day of its schedule an IP is on, and today's cap.

An IP with a ``warmup_start`` date is on day 1 that day (and before it), day 2 the next,
and so on; ``held_days`` moves it back. The schedule lists caps from a day on: the cap of
day N is the one of the highest listed day <= N, and None means unlimited.

Health: the gateway counts, per IP, provider and day, attempts and deferrals (4xx replies
and automation-rule matches). When the share of deferrals passes ``max_deferral_share``
after at least ``min_attempts`` attempts, the schedule for that IP and provider pauses
(tomorrow repeats today's day) or steps back ``step_back_days`` (today's cap drops now).
The decision is taken at most once per IP, provider and day.
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
    """New ``held_days``: a pause repeats today's day tomorrow; a step back also lowers today."""
    if decision == "pause":
        return held_days + 1
    if decision == "step_back":
        return held_days + 1 + rule.step_back_days
    return held_days
