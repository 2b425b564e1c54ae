"""The attempt result a shaped delivery reports: which provider it was for, or a postponement."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from gateway.records import AttemptResult

POSTPONED = "postponed"


@dataclass(frozen=True)
class ShapedResult(AttemptResult):
    """``provider`` picks the retry schedule; kind ``postponed`` (no attempt was made:
    warm-up cap, suspension, provider pause, backlog) carries ``postpone_until``."""

    provider: str = "default"
    postpone_until: datetime | None = None


def shaped(result: AttemptResult, provider: str) -> ShapedResult:
    return ShapedResult(result.kind, result.reply, result.remote, result.source_ip, provider)


def postponed(provider: str, until: float, reason: str, source_ip: str | None = None) -> ShapedResult:
    return ShapedResult(POSTPONED, reason, None, source_ip, provider,
                        datetime.fromtimestamp(until, UTC))
