"""Reputation circuit breakers: when a campaign's bounces or complaints say stop (pure).

Counts come in per (stream, campaign, provider) over a rolling window; the whole campaign
is evaluated too, as provider ``all``, because a bad list spread over ten providers trips
no single provider as early as it trips the sum. A key is judged only once it has a
base large enough to mean something (``min_sent`` copies with a final answer) AND enough
bad events (``min_events``): three hard bounces out of the first twenty copies are
noise, not a bought list. Reasoning and defaults: docs/reputation.md.

Nothing here reads a clock, the database or the settings: tallies, thresholds and the
current time come in, decisions go out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

ALL = "all"  # the provider label of a campaign's whole tally
Kind = Literal["hard-bounce", "complaint"]
HARD_BOUNCE: Kind = "hard-bounce"
COMPLAINT: Kind = "complaint"
KINDS: tuple[Kind, ...] = (HARD_BOUNCE, COMPLAINT)
PAUSABLE_STREAMS = frozenset({"marketing"})  # transactional mail is never paused
BUCKET = timedelta(minutes=1)  # the granularity of stored counts (reputation_store)


@dataclass(frozen=True)
class Limits:
    """One kind's thresholds: rates are shares (0.003 = 0.3%), judged at or above."""

    warn: float
    pause: float
    min_sent: int
    min_events: int


DEFAULT_HARD_BOUNCE = Limits(warn=0.02, pause=0.05, min_sent=100, min_events=10)
DEFAULT_COMPLAINT = Limits(warn=0.001, pause=0.003, min_sent=1000, min_events=5)


@dataclass(frozen=True)
class Thresholds:
    """The limits of each kind, with per-provider replacements (provider -> kind -> limits)."""

    hard_bounce: Limits = DEFAULT_HARD_BOUNCE
    complaint: Limits = DEFAULT_COMPLAINT
    providers: Mapping[str, Mapping[Kind, Limits]] = field(default_factory=dict)

    def limits(self, kind: Kind, provider: str) -> Limits:
        override = self.providers.get(provider, {}).get(kind)
        if override is not None:
            return override
        return self.hard_bounce if kind == HARD_BOUNCE else self.complaint


@dataclass(frozen=True)
class Tally:
    """Copies with a final answer from the remote (delivered + bounced), and the bad ones."""

    sent: int = 0
    hard: int = 0
    complaints: int = 0

    def __add__(self, other: Tally) -> Tally:
        return Tally(self.sent + other.sent, self.hard + other.hard, self.complaints + other.complaints)

    def count(self, kind: Kind) -> int:
        return self.hard if kind == HARD_BOUNCE else self.complaints

    def rate(self, kind: Kind) -> float | None:
        return self.count(kind) / self.sent if self.sent else None


@dataclass(frozen=True)
class Key:
    stream: str
    campaign: str
    provider: str


def with_totals(tallies: Mapping[Key, Tally]) -> dict[Key, Tally]:
    """The tallies plus one ``all`` key per stream and campaign (their sum)."""
    out = {key: tally for key, tally in tallies.items() if key.provider != ALL}
    totals: dict[Key, Tally] = {}
    for key, tally in out.items():
        whole = Key(key.stream, key.campaign, ALL)
        totals[whole] = totals.get(whole, Tally()) + tally
    return out | totals


@dataclass(frozen=True)
class Decision:
    action: Literal["warn", "pause"]
    key: Key
    kind: Kind
    bad: int
    sent: int
    limit: float
    window: timedelta
    since: datetime | None = None  # counting restarted here (a resume) inside the window
    note: str = ""

    @property
    def rate(self) -> float:
        return self.bad / self.sent

    @property
    def detail(self) -> str:
        """The figures, as an operator reads them in a log line, an event or `campaign list`."""
        what = "hard bounces" if self.kind == HARD_BOUNCE else "complaints"
        where = "across all providers" if self.key.provider == ALL else f"at {self.key.provider}"
        span = (f"since the resume at {self.since:%Y-%m-%d %H:%M} UTC" if self.since is not None
                else f"over the last {duration_text(self.window)}")
        limit = "limit" if self.action == "pause" else "warning at"
        text = (f"{what} {self.bad} of {self.sent} sent ({percent(self.rate)}) {where} {span}, "
                f"{limit} {percent(self.limit)}")
        return f"{text} ({self.note})" if self.note else text

    @property
    def severity(self) -> float:
        """How far over its limit: the worst decision explains a pause."""
        return self.rate / self.limit if self.limit else float("inf")


def judge(key: Key, tally: Tally, kind: Kind, limits: Limits, window: timedelta,
          since: datetime | None = None) -> Decision | None:
    """Pause at or above ``limits.pause``, warn at or above ``limits.warn``: only on a base of
    at least ``min_sent`` with at least ``min_events`` bad events."""
    bad = tally.count(kind)
    if tally.sent < limits.min_sent or bad < limits.min_events:
        return None
    rate = bad / tally.sent
    if rate >= limits.pause:
        return Decision("pause", key, kind, bad, tally.sent, limits.pause, window, since)
    if rate >= limits.warn:
        return Decision("warn", key, kind, bad, tally.sent, limits.warn, window, since)
    return None


def decide(tallies: Mapping[Key, Tally], thresholds: Thresholds, *, window: timedelta,
           streams: Iterable[str] = PAUSABLE_STREAMS,
           since: Mapping[str, datetime] | None = None) -> list[Decision]:
    """Every warning and pause the tallies call for, worst first, for the guarded ``streams``.

    Tallies are per provider; the campaign's ``all`` key is added here. A campaign without
    a name is never judged (it cannot be paused). A stream that may not be paused
    (transactional) gets a warning where marketing would be paused. ``since`` maps a
    resumed campaign to the instant its counting restarted (for the wording only: the
    counts themselves must already start there).
    """
    guarded = set(streams)
    resumed = since or {}
    found: list[Decision] = []
    for key, tally in sorted(with_totals(tallies).items(), key=lambda item: _order(item[0])):
        if not key.campaign or key.stream not in guarded:
            continue
        for kind in KINDS:
            limits = thresholds.limits(kind, key.provider)
            decision = judge(key, tally, kind, limits, window, resumed.get(key.campaign))
            if decision is None:
                continue
            if decision.action == "pause" and key.stream not in PAUSABLE_STREAMS:
                decision = Decision("warn", key, kind, decision.bad, decision.sent, limits.pause, window,
                                    decision.since, note=f"{key.stream} mail is never paused")
            found.append(decision)
    found.sort(key=lambda d: (d.action != "pause", -d.severity))
    return found


def _order(key: Key) -> tuple[str, str, bool, str]:
    return (key.campaign, key.stream, key.provider != ALL, key.provider)


def pauses(decisions: Iterable[Decision]) -> dict[str, Decision]:
    """The decision that pauses each campaign: its worst (decisions come worst first)."""
    chosen: dict[str, Decision] = {}
    for decision in decisions:
        if decision.action == "pause":
            chosen.setdefault(decision.key.campaign, decision)
    return chosen


class WarningMemory:
    """Warn once per campaign, key and kind per window, not on every evaluated batch.

    Kept in the process: a restart (or a second node) may repeat a warning once, which is
    cheap; a missed pause would not be, and pauses live in the database.
    """

    def __init__(self) -> None:
        self._last: dict[tuple[Key, Kind], datetime] = {}

    def fresh(self, decisions: Iterable[Decision], now: datetime) -> list[Decision]:
        """The warnings not given within their window; they count as given from ``now``."""
        out = []
        for decision in decisions:
            if decision.action != "warn":
                continue
            mark = (decision.key, decision.kind)
            last = self._last.get(mark)
            if last is not None and now - last < decision.window:
                continue
            self._last[mark] = now
            out.append(decision)
        self._last = {mark: at for mark, at in self._last.items() if now - at < timedelta(days=7)}
        return out

    def forget(self, campaign: str) -> None:
        """A resumed campaign starts afresh: its warnings may be given again."""
        self._last = {mark: at for mark, at in self._last.items() if mark[0].campaign != campaign}


def bucket_of(at: datetime) -> datetime:
    """The start of the stored bucket an event at ``at`` is counted in."""
    return at.replace(second=0, microsecond=0)


def counting_start(now: datetime, window: timedelta, counted_since: datetime | None) -> datetime:
    """The first bucket that counts: the window's, or a later resume's. The bucket a resume
    fell into mixes counts from before it, so counting starts at the next whole bucket."""
    start = bucket_of(now - window)
    if counted_since is None:
        return start
    after_resume = bucket_of(counted_since)
    if after_resume < counted_since:
        after_resume += BUCKET
    return max(start, after_resume)


def percent(share: float) -> str:
    """0.128 -> "12.8%", 0.003 -> "0.3%", 0.0033 -> "0.33%", 0.05 -> "5%"."""
    value = share * 100
    text = f"{value:.1f}" if value >= 1 else f"{value:.2f}"
    return text.rstrip("0").rstrip(".") + "%"


def duration_text(span: timedelta) -> str:
    seconds = int(span.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0 and not (unit == "d" and seconds <= 86400):
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
