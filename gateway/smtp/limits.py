"""Per-client-IP admission state: connection counts and AUTH failure lockouts.

This is throttle state: in memory for one node, behind small classes whose
methods a shared (Redis) implementation can provide for several nodes. The clock
is passed in, so the arithmetic is tested without sleeping.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from gateway.smtp import replies
from gateway.smtp.replies import Reply

MAX_LOCKOUT = 3600.0
PRUNE_ABOVE = 1024  # records kept before stale ones are swept (bounds the sweep's cost)
FORGET_AFTER = 3600.0  # an IP's failure history is dropped after this long without failures


class ConnectionCounter:
    def __init__(self, max_total: int, max_per_ip: int) -> None:
        self.max_total = max_total
        self.max_per_ip = max_per_ip
        self._by_ip: Counter[str] = Counter()
        self.total = 0

    def open(self, ip: str) -> Reply | None:
        """Admit a connection (and count it) or return the 421 reply refusing it."""
        if self.total >= self.max_total:
            return replies.TOO_MANY_CONNECTIONS
        if self._by_ip[ip] >= self.max_per_ip:
            return replies.TOO_MANY_CONNECTIONS_FROM_IP
        self._by_ip[ip] += 1
        self.total += 1
        return None

    def close(self, ip: str) -> None:
        self.total = max(self.total - 1, 0)
        self._by_ip[ip] -= 1
        if self._by_ip[ip] <= 0:
            del self._by_ip[ip]

    def count(self, ip: str) -> int:
        return self._by_ip[ip]


@dataclass
class _FailureRecord:
    failures: int = 0
    lockouts: int = 0
    locked_until: float = 0.0
    last_failure: float = 0.0


class AuthLockout:
    """After ``max_failures`` bad passwords an IP is locked out; each lockout doubles."""

    def __init__(self, max_failures: int, base_lockout: float) -> None:
        self.max_failures = max_failures
        self.base_lockout = base_lockout
        self._records: dict[str, _FailureRecord] = {}

    def locked(self, ip: str, now: float) -> bool:
        record = self._records.get(ip)
        return record is not None and record.locked_until > now

    def failure(self, ip: str, now: float) -> bool:
        """Record a failed AUTH; True when this failure starts a lockout."""
        if len(self._records) > PRUNE_ABOVE:
            self._forget_stale(now)
        record = self._records.setdefault(ip, _FailureRecord())
        record.failures += 1
        record.last_failure = now
        if record.failures < self.max_failures:
            return False
        duration = min(self.base_lockout * 2**record.lockouts, MAX_LOCKOUT)
        record.locked_until = now + duration
        record.lockouts += 1
        record.failures = 0
        return True

    def success(self, ip: str) -> None:
        self._records.pop(ip, None)

    def _forget_stale(self, now: float) -> None:
        stale = [ip for ip, r in self._records.items()
                 if r.locked_until <= now and now - r.last_failure > FORGET_AFTER]
        for ip in stale:
            del self._records[ip]
