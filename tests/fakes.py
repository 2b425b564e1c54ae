"""Stand-ins shared by tests."""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class FakeClock(Generic[T]):
    """A clock the test moves by hand: ``clock.now = ...``; calling it reads the time.

    ``T`` is whatever the code under test takes as time: a float (monotonic seconds) or an
    aware datetime.
    """

    def __init__(self, now: T) -> None:
        self.now = now

    def __call__(self) -> T:
        return self.now
