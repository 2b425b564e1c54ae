"""When to try a deferred delivery again, and when to give up (pure).

The default follows Postfix's shape (first retry after minimal_backoff_time 300s,
give up after maximal_queue_lifetime 5d) with a 4h cap on the wait instead of
Postfix's 4000s, to spare receivers that are down for days: waits double from the
first retry up to the cap, and a delivery still failing after ``max_age`` expires.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class RetrySchedule:
    first: float = 300.0
    factor: float = 2.0
    maximum: float = 4 * 3600.0
    max_age: float = 5 * 86400.0

    def delay(self, attempts_done: int) -> float:
        """Seconds to wait after the ``attempts_done``-th failed attempt (1-based)."""
        exponent = max(attempts_done - 1, 0)
        # Cap the exponent too: factor**exponent overflows long before the cap matters.
        if self.factor > 1 and self.first * self.factor ** min(exponent, 64) >= self.maximum:
            return self.maximum
        return min(self.first * self.factor**exponent, self.maximum)

    def next_attempt(self, *, attempts_done: int, received_at: datetime,
                     now: datetime) -> datetime | None:
        """The next try after a temporary failure, or None when the message has expired."""
        if (now - received_at).total_seconds() >= self.max_age:
            return None
        return now + timedelta(seconds=self.delay(attempts_done))
