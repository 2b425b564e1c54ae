"""Message rates ("100/min", "5/s") and the token bucket that enforces them (pure)."""

from __future__ import annotations

import re
from dataclasses import dataclass

_PER = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "hour": 3600.0,
        "d": 86400.0, "day": 86400.0}
_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*([a-z]+)\s*$")


@dataclass(frozen=True)
class Rate:
    """``count`` messages per ``seconds``; the burst a bucket allows is ``count`` capped at
    one second's worth plus one, so "6000/h" does not mean 6000 at once."""

    count: float
    seconds: float

    @property
    def per_second(self) -> float:
        return self.count / self.seconds

    @property
    def burst(self) -> float:
        return max(1.0, min(self.count, self.per_second + 1.0))

    def __str__(self) -> str:
        unit = {1.0: "s", 60.0: "min", 3600.0: "h", 86400.0: "d"}[self.seconds]
        count = int(self.count) if self.count == int(self.count) else self.count
        return f"{count}/{unit}"


def parse_rate(text: object) -> Rate:
    if isinstance(text, Rate):
        return text
    match = _RATE_RE.match(text) if isinstance(text, str) else None
    if match is None or match.group(2) not in _PER:
        raise ValueError(f"bad rate {text!r}: expected e.g. \"100/min\", \"5/s\", \"3600/h\", \"10000/d\"")
    count = float(match.group(1))
    if count <= 0:
        raise ValueError(f"bad rate {text!r}: the count must be above zero")
    return Rate(count, _PER[match.group(2)])


@dataclass
class TokenBucket:
    """A bucket of ``burst`` tokens refilled at ``rate`` per second; one token per message."""

    rate: float
    burst: float
    tokens: float
    updated: float

    @classmethod
    def full(cls, rate: Rate, now: float) -> TokenBucket:
        return cls(rate.per_second, rate.burst, rate.burst, now)

    def retune(self, rate: Rate) -> None:
        """A new rate (policy reload, automation slow-down) keeps the tokens already earned."""
        self.rate, self.burst = rate.per_second, rate.burst
        self.tokens = min(self.tokens, self.burst)

    def take(self, now: float) -> float:
        """Take a token and return 0, or take nothing and return the seconds until one is due."""
        self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self.updated)
        self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
        self.updated = max(self.updated, now)
