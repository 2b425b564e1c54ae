"""Throttle state: connection counts, token buckets, suspensions, pauses, warm-up counters.

``ThrottleStore`` is the interface; ``MemoryThrottleStore`` keeps it in this process, which
is right for one node. A Redis implementation satisfies the same Protocol for several nodes
(counters with INCR/DECR and expiry, buckets as a small Lua script); every method is a
coroutine for that reason, even though the in-memory one never waits.

Keys: ``provider`` is a profile name, ``ip`` a source address (or "" for the OS's choice).
Times are seconds on the caller's clock (``time.time()`` in production, fake in tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Protocol

from gateway.shaping.rates import Rate, TokenBucket
from gateway.shaping.warmup import Hold


@dataclass(frozen=True)
class Slowdown:
    rate: Rate
    until: float


class ThrottleStore(Protocol):
    async def open_connection(self, provider: str, ip: str, per_ip: int, provider_limit: int | None) -> bool:
        """Count a new connection if both limits allow it; False leaves the counts alone."""
        ...

    async def close_connection(self, provider: str, ip: str) -> None: ...

    async def connections(self, provider: str, ip: str | None = None) -> int:
        """Open connections to ``provider`` from ``ip``, or from every IP when None."""
        ...

    async def take_token(self, key: str, rate: Rate, now: float) -> float:
        """0 when a message may go now (token taken), else seconds to wait."""
        ...

    async def refund_token(self, key: str, rate: Rate, now: float) -> None:
        """Put back a token taken by ``take_token`` for a message that did not go."""
        ...

    async def suspend(self, provider: str, ip: str, until: float) -> None: ...

    async def suspended_until(self, provider: str, ip: str, now: float) -> float | None: ...

    async def suspensions(self, now: float) -> dict[tuple[str, str], float]: ...

    async def slow_down(self, provider: str, ip: str, rate: Rate, until: float) -> None: ...

    async def slowdown(self, provider: str, ip: str, now: float) -> Slowdown | None: ...

    async def pause_provider(self, provider: str, until: float) -> None: ...

    async def provider_paused_until(self, provider: str, now: float) -> float | None: ...

    async def reserve_warmup(self, ip: str, provider: str, day: date, cap: int) -> bool:
        """Count one send against today's cap if it is not reached yet."""
        ...

    async def release_warmup(self, ip: str, provider: str, day: date) -> None:
        """Give back one send counted by ``reserve_warmup`` (the message went back unsent)."""
        ...

    async def warmup_count(self, ip: str, provider: str, day: date) -> int: ...

    async def record_health(self, ip: str, provider: str, day: date, deferred: bool) -> tuple[int, int]:
        """Count an attempt (and a deferral); returns today's (attempts, deferrals)."""
        ...

    async def held_days(self, ip: str, provider: str, on: date | None = None) -> int:
        """Held-back days in force ``on`` that day (a decision counts from the day after it);
        None: the latest decision's, the base for the next decision."""
        ...

    async def hold(self, ip: str, provider: str, day: date, held_days: int) -> bool:
        """Set ``held_days`` from the day after ``day`` on, unless a decision was already
        taken that day (or later); True if set."""
        ...


class MemoryThrottleStore:
    """ThrottleStore for one node: dictionaries, pruned as entries expire."""

    def __init__(self) -> None:
        self._conns: dict[tuple[str, str], int] = {}
        self._provider_conns: dict[str, int] = {}
        self._buckets: dict[str, TokenBucket] = {}
        self._suspended: dict[tuple[str, str], float] = {}
        self._slow: dict[tuple[str, str], Slowdown] = {}
        self._paused: dict[str, float] = {}
        self._warm: dict[tuple[str, str, date], int] = {}
        self._health: dict[tuple[str, str, date], tuple[int, int]] = {}
        self._holds: dict[tuple[str, str], Hold] = {}

    async def open_connection(self, provider: str, ip: str, per_ip: int, provider_limit: int | None) -> bool:
        if self._conns.get((provider, ip), 0) >= per_ip:
            return False
        if provider_limit is not None and self._provider_conns.get(provider, 0) >= provider_limit:
            return False
        self._conns[(provider, ip)] = self._conns.get((provider, ip), 0) + 1
        self._provider_conns[provider] = self._provider_conns.get(provider, 0) + 1
        return True

    async def close_connection(self, provider: str, ip: str) -> None:
        self._conns[(provider, ip)] = max(0, self._conns.get((provider, ip), 0) - 1)
        self._provider_conns[provider] = max(0, self._provider_conns.get(provider, 0) - 1)

    async def connections(self, provider: str, ip: str | None = None) -> int:
        if ip is None:
            return self._provider_conns.get(provider, 0)
        return self._conns.get((provider, ip), 0)

    async def take_token(self, key: str, rate: Rate, now: float) -> float:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket.full(rate, now)
        elif bucket.rate != rate.per_second:
            bucket.retune(rate)
        return bucket.take(now)

    async def refund_token(self, key: str, rate: Rate, now: float) -> None:
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket.tokens = min(bucket.burst, bucket.tokens + 1.0)

    async def suspend(self, provider: str, ip: str, until: float) -> None:
        self._suspended[(provider, ip)] = max(until, self._suspended.get((provider, ip), 0.0))

    async def suspended_until(self, provider: str, ip: str, now: float) -> float | None:
        until = self._suspended.get((provider, ip))
        if until is not None and until <= now:
            del self._suspended[(provider, ip)]
            return None
        return until

    async def suspensions(self, now: float) -> dict[tuple[str, str], float]:
        for key in [key for key, until in self._suspended.items() if until <= now]:
            del self._suspended[key]
        return dict(self._suspended)

    async def slow_down(self, provider: str, ip: str, rate: Rate, until: float) -> None:
        self._slow[(provider, ip)] = Slowdown(rate, until)

    async def slowdown(self, provider: str, ip: str, now: float) -> Slowdown | None:
        found = self._slow.get((provider, ip))
        if found is not None and found.until <= now:
            del self._slow[(provider, ip)]
            return None
        return found

    async def pause_provider(self, provider: str, until: float) -> None:
        self._paused[provider] = max(until, self._paused.get(provider, 0.0))

    async def provider_paused_until(self, provider: str, now: float) -> float | None:
        if len(self._paused) > 1000:  # per-site pauses of unmatched domains add up: drop old ones
            for key in [key for key, until in self._paused.items() if until <= now]:
                del self._paused[key]
        until = self._paused.get(provider)
        if until is not None and until <= now:
            del self._paused[provider]
            return None
        return until

    async def reserve_warmup(self, ip: str, provider: str, day: date, cap: int) -> bool:
        key = (ip, provider, day)
        if self._warm.get(key, 0) >= cap:
            return False
        self._prune_days(day)
        self._warm[key] = self._warm.get(key, 0) + 1
        return True

    async def release_warmup(self, ip: str, provider: str, day: date) -> None:
        key = (ip, provider, day)
        if self._warm.get(key, 0) > 0:
            self._warm[key] -= 1

    async def warmup_count(self, ip: str, provider: str, day: date) -> int:
        return self._warm.get((ip, provider, day), 0)

    async def record_health(self, ip: str, provider: str, day: date, deferred: bool) -> tuple[int, int]:
        attempts, deferrals = self._health.get((ip, provider, day), (0, 0))
        counts = (attempts + 1, deferrals + int(deferred))
        self._health[(ip, provider, day)] = counts
        return counts

    async def held_days(self, ip: str, provider: str, on: date | None = None) -> int:
        hold = self._holds.get((ip, provider))
        if hold is None:
            return 0
        return hold.after if on is None else hold.held_on(on)

    async def hold(self, ip: str, provider: str, day: date, held_days: int) -> bool:
        earlier = self._holds.get((ip, provider))
        if earlier is not None and earlier.decided_on >= day:
            return False
        before = 0 if earlier is None else earlier.held_on(day)
        self._holds[(ip, provider)] = Hold(before, held_days, day)
        return True

    # -- persistence (this class only; a shared store keeps its own state) ----------------------

    def warmup_snapshot(self, day: date) -> tuple[dict[tuple[str, str], int],
                                                  dict[tuple[str, str], tuple[int, date]]]:
        """Today's sends per (ip, provider) and every hold: the held days of its latest
        decision and the day that decision was taken."""
        sends = {(ip, provider): n for (ip, provider, on), n in self._warm.items() if on == day}
        holds = {key: (hold.after, hold.decided_on) for key, hold in self._holds.items()}
        return sends, holds

    def restore_warmup(self, day: date, sends: dict[tuple[str, str], int],
                       holds: dict[tuple[str, str], tuple[int, date]]) -> None:
        for (ip, provider), count in sends.items():
            day_key = (ip, provider, day)
            self._warm[day_key] = max(self._warm.get(day_key, 0), count)
        for pair, (held, on) in holds.items():
            known = self._holds.get(pair)
            if known is None or on > known.decided_on:
                # The days in force before a decision taken today are not saved: after a
                # restart on that day the decision applies at once (a lower cap, never higher).
                self._holds[pair] = Hold(held, held, on)

    def _prune_days(self, today: date) -> None:
        """Counters of earlier days are never read again."""
        if len(self._warm) < 10_000:
            return
        for table in (self._warm, self._health):
            for key in [key for key in table if key[2] < today]:
                del table[key]
