"""The circuit breakers at work: judge the counts, pause campaigns, warn, export the rates.

The serving process runs one ``ReputationGuard``. Each delivery attempt notes its
campaign; shortly after (``debounce``, time for the outcome batch to commit) the guard
judges the noted campaigns from the shared counts (gateway/storage/reputation_store.py),
so a bad list is stopped within a batch or two; the inbound processor likewise reports
the campaign of each DSN or complaint it applied. Every ``period`` it also judges every
campaign (reports applied by another node, a threshold lowered by a reload), refreshes
the gauges and prunes old counts. Several nodes judge the same counts; a
pause is recorded once (campaign_states), warnings at most once per node and window.

The operator's verbs (`gateway campaign ...`, the admin API) use ``pause``, ``resume``,
``overview`` and ``report`` here, so that a manual pause leaves the same event as an
automatic one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial

from sqlalchemy.ext.asyncio import AsyncConnection

from gateway import metrics
from gateway.config.policy import Reputation
from gateway.feedback.breakers import (
    KINDS,
    Decision,
    Key,
    Tally,
    WarningMemory,
    bucket_of,
    counting_start,
    decide,
    pauses,
    with_totals,
)
from gateway.storage import campaign_store, reputation_store
from gateway.storage.database import Database
from gateway.storage.errors import StorageError
from gateway.storage.reputation_store import Mark
from gateway.wakeups import wake_or_timeout

log = logging.getLogger(__name__)
MANUAL = "manual"


def _utcnow() -> datetime:
    return datetime.now(UTC)


class ReputationGuard:
    def __init__(self, db: Database, settings: Callable[[], Reputation], *,
                 clock: Callable[[], datetime] = _utcnow, debounce: float = 0.5,
                 period: float = 60.0) -> None:
        self.db = db
        self.settings = settings  # read at each round, so that a policy reload applies at once
        self.clock = clock
        self.debounce = debounce
        self.period = period
        self.memory = WarningMemory()
        self._noted: set[str] = set()
        self._wake = asyncio.Event()
        self._paused: set[str] = set()  # as last read or decided here

    def is_paused(self, campaign: str) -> bool:
        """Asked before a copy that waited in a delivery lane is sent: a pause must also stop
        the copies already handed to delivery, not only those claimed after it. Refreshed at
        every judgement of the campaign, so a resume elsewhere is seen within a round."""
        return campaign in self._paused

    def note(self, stream: str, campaign: str) -> None:
        """An attempt of ``campaign`` is about to be recorded: judge it soon."""
        if stream in self.settings().streams:
            self.reported(campaign)

    def reported(self, campaign: str) -> None:
        """A DSN or a complaint about a copy of ``campaign`` has been committed: judge it now,
        not at the next full pass."""
        if campaign:
            self._noted.add(campaign)
            self._wake.set()

    async def run(self) -> None:
        """Until cancelled. A failed round is logged and the next one tries again (the notes
        it took are judged at the next full pass); cancellation always ends the task."""
        last_full = -self.period
        previous: set[str] = set()
        loop = asyncio.get_running_loop()
        while True:
            await self._idle(last_full + self.period - loop.time())
            try:
                if self._wake.is_set():
                    await asyncio.sleep(self.debounce)
                    self._wake.clear()
                    noted, self._noted = self._noted, set()
                    # Judged once more next round: the last batch may have committed after this one.
                    await self.evaluate(noted | previous)
                    previous = noted
                if loop.time() - last_full >= self.period:
                    last_full = loop.time()
                    await self.evaluate(None)
                    await self.refresh()
            except StorageError as exc:
                log.error("reputation breakers: %s", exc)
            except Exception:
                log.exception("reputation breakers: unexpected error; trying again at the next round")

    async def _idle(self, delay: float) -> None:
        """Wait for a note, at most ``delay`` seconds (see gateway/wakeups.py for why not
        asyncio.wait_for)."""
        await wake_or_timeout(self._wake, delay)

    async def evaluate(self, campaigns: Collection[str] | None) -> list[Decision]:
        """Judge ``campaigns`` (every campaign with counts when None): pause and warn."""
        rep = self.settings()
        if not rep.enabled or (campaigns is not None and not campaigns):
            return []
        now = self.clock()
        marks = await self.db.read(partial(reputation_store.campaign_marks, campaigns=campaigns))
        self._remember_paused(marks, campaigns)
        found = await judge_counts(self.db, rep, now, campaigns, marks)
        for campaign, decision in pauses(found).items():
            if not marks.get(campaign, Mark(False, None)).paused:
                await self._pause(campaign, decision, now)
        tripped = {c for c, m in marks.items() if m.paused} | set(pauses(found))
        for decision in self.memory.fresh([d for d in found if d.key.campaign not in tripped], now):
            await self._warn(decision, now)
        return found

    def _remember_paused(self, marks: dict[str, Mark], campaigns: Collection[str] | None) -> None:
        if campaigns is None:
            self._paused = {name for name, mark in marks.items() if mark.paused}
            return
        for name in campaigns:
            if name in marks and marks[name].paused:
                self._paused.add(name)
            else:
                self._paused.discard(name)

    async def _pause(self, campaign: str, decision: Decision, now: datetime) -> None:
        async def write(conn: AsyncConnection) -> int | None:
            held = await campaign_store.pause_campaign(conn, campaign, reason=decision.kind,
                                                       detail=decision.detail, by="breaker", now=now)
            state = await campaign_store.campaign_state(conn, campaign)
            if state is None or state.changed_by != "breaker" or state.changed_at != now:
                return None  # paused meanwhile (an operator, another node): theirs is the record
            await reputation_store.add_campaign_events(conn, [(now, "paused", campaign, decision.detail)])
            return held

        held = await self.db.write(write)
        self._paused.add(campaign)  # by this breaker or, when held is None, by someone else
        if held is None:
            return
        key = decision.key
        metrics.BREAKER_TRIPS.labels(key.stream, key.provider, decision.kind).inc()
        await _count_paused(self.db)
        self.memory.forget(campaign)
        log.warning("campaign %s paused by the %s breaker: %s; %d queued copies held until "
                    "`gateway campaign resume %s`", campaign, decision.kind, decision.detail, held, campaign,
                    extra=_fields("campaign_paused", decision, held=held))

    async def _warn(self, decision: Decision, now: datetime) -> None:
        key = decision.key
        await self.db.write(partial(reputation_store.add_campaign_events,
                                    rows=[(now, "warned", key.campaign, decision.detail)]))
        metrics.BREAKER_WARNINGS.labels(key.stream, key.provider, decision.kind).inc()
        log.warning("campaign %s: %s", key.campaign, decision.detail,
                    extra=_fields("breaker_warning", decision))

    async def refresh(self) -> None:
        """Gauges (paused campaigns, rolling rates) and pruning of counts out of every window."""
        rep = self.settings()
        now = self.clock()
        window = timedelta(seconds=rep.window)
        await _count_paused(self.db)
        start = bucket_of(now - window)
        rates = with_totals(await self.db.read(partial(reputation_store.rates, start=start)))
        metrics.REPUTATION_RATE.clear()
        for key, tally in rates.items():
            for kind in KINDS:
                rate = tally.rate(kind)
                if rate is not None:
                    metrics.REPUTATION_RATE.labels(key.stream, key.provider, kind).set(rate)
        await self.db.write(partial(reputation_store.prune, before=start))


def _fields(event: str, decision: Decision, **more: int) -> dict[str, object]:
    key = decision.key
    return {"event": event, "campaign": key.campaign, "stream": key.stream, "provider": key.provider,
            "reason": decision.kind, "bad": decision.bad, "sent": decision.sent,
            "rate": round(decision.rate, 6), "limit": decision.limit, **more}


async def judge_counts(db: Database, rep: Reputation, now: datetime, campaigns: Collection[str] | None,
                       marks: Mapping[str, Mark]) -> list[Decision]:
    window = timedelta(seconds=rep.window)
    tallies, since = await _tallies(db, rep, now, campaigns, marks)
    return decide(tallies, rep.thresholds, window=window, streams=rep.streams, since=since)


async def _tallies(db: Database, rep: Reputation, now: datetime, campaigns: Collection[str] | None,
                   marks: Mapping[str, Mark]) -> tuple[dict[Key, Tally], dict[str, datetime]]:
    """Counts of the window, each resumed campaign's only from its resume on."""
    window = timedelta(seconds=rep.window)
    start = counting_start(now, window, None)
    later = {c: counting_start(now, window, m.counted_since) for c, m in marks.items()
             if m.counted_since is not None}
    later = {c: at for c, at in later.items() if at > start}
    tallies = await db.read(partial(reputation_store.tallies, start=start, streams=rep.streams,
                                    campaigns=campaigns, later_starts=later))
    since = {c: marks[c].counted_since for c in later}
    return tallies, {c: at for c, at in since.items() if at is not None}


# -- the operator's verbs ----------------------------------------------------------------------

async def pause(db: Database, campaign: str, *, note: str, by: str, now: datetime) -> int | None:
    """Pause by hand; None when it was paused already (the first reason stays)."""
    detail = note or f"paused by {by}"

    async def write(conn: AsyncConnection) -> int | None:
        if await campaign_store.paused_among(conn, [campaign]):
            return None
        held = await campaign_store.pause_campaign(conn, campaign, reason=MANUAL, detail=detail, by=by,
                                                   now=now)
        await reputation_store.add_campaign_events(conn, [(now, "paused", campaign, f"{MANUAL}: {detail}")])
        return held

    held = await db.write(write)
    await _count_paused(db)
    return held


async def resume(db: Database, campaign: str, *, by: str, now: datetime) -> int | None:
    """Resume and release the held copies; None when the campaign was not paused. Its counts
    start again from now, so the figures that tripped it do not trip it again at once."""
    async def write(conn: AsyncConnection) -> int | None:
        released = await campaign_store.resume_campaign(conn, campaign, by=by, now=now)
        if released is not None:
            await reputation_store.add_campaign_events(
                conn, [(now, "resumed", campaign, f"resumed by {by}, {released} held copies released")])
        return released

    released = await db.write(write)
    await _count_paused(db)
    return released


async def _count_paused(db: Database) -> None:
    """The paused-campaigns gauge, read from the database: a breaker's pause and an operator's
    change (admin API) show at once in the serving process, not only at the next full pass."""
    metrics.CAMPAIGNS_PAUSED.set(await db.read(reputation_store.paused_count))


@dataclass(frozen=True)
class CampaignFigures:
    """A campaign as `gateway campaign list|show` prints it."""

    campaign: str
    paused: bool
    held: int
    reason: str
    detail: str
    whole: Tally  # every provider
    providers: dict[str, Tally] = field(default_factory=dict)
    streams: tuple[str, ...] = ()


async def overview(db: Database, rep: Reputation, now: datetime,
                   campaign: str | None = None) -> list[CampaignFigures]:
    """Every campaign that was paused or has counts in the window (or just ``campaign``)."""
    wanted = None if campaign is None else [campaign]
    states = await db.read(campaign_store.campaign_states if campaign is None
                           else partial(_one_state, campaign=campaign))
    marks = {s.campaign: Mark(s.paused, s.counted_since) for s in states}
    tallies, _ = await _tallies(db, rep, now, wanted, marks)
    names = sorted({s.campaign for s in states} | {k.campaign for k in tallies})
    by_name = {s.campaign: s for s in states}
    out = []
    for name in names:
        mine = {k: t for k, t in tallies.items() if k.campaign == name}
        providers: dict[str, Tally] = {}
        for key, tally in mine.items():
            providers[key.provider] = providers.get(key.provider, Tally()) + tally
        whole = sum(providers.values(), Tally())
        state = by_name.get(name)
        out.append(CampaignFigures(
            name, bool(state and state.paused), state.held if state else 0,
            (state.reason or "") if state and state.paused else "",
            (state.detail or "") if state and state.paused else "", whole, providers,
            tuple(sorted({k.stream for k in mine}))))
    return out


async def _one_state(conn: AsyncConnection, campaign: str) -> list[campaign_store.CampaignState]:
    state = await campaign_store.campaign_state(conn, campaign)
    return [] if state is None else [state]

