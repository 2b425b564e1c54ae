"""The gateway at a glance: queue, providers, suspensions, warm-up, paused campaigns, backlogs.

Two sources. The database holds the queue, the paused campaigns, the webhook outbox, the
unapplied feedback and the warm-up counters (saved every few seconds). Open connections,
suspensions, provider pauses and slow-downs live only in the serving process's throttle
store, so ``live_status`` runs inside it (GET /status on the admin API) and
``database_status`` is what `gateway status` can still say when that process is down.
Both answer the same ``Status`` value; the parts that need the live process are None.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime

from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.config.policy import Policy
from gateway.records import PENDING_STATES
from gateway.shaping.matching import DEFAULT
from gateway.shaping.router import PoolSpec, Router
from gateway.shaping.warmup import day_index
from gateway.storage import campaign_store, feedback_store, shaping_store, status_store
from gateway.storage.database import Database

PENDING = frozenset(state.value for state in PENDING_STATES)
UNROUTED = ""
"""Provider of a delivery never routed yet (no attempt or postponement so far)."""


class QueueCount(BaseModel):
    state: str
    provider: str
    count: int
    oldest_due: datetime


class QueueSummary(BaseModel):
    total: int
    by_state: dict[str, int]
    oldest_due: datetime | None  # of the waiting (queued, deferred) ones: a held copy is not due
    groups: list[QueueCount]
    capped: list[str] = []  # states counted only up to scan_limit: their counts are lower bounds
    scan_limit: int = status_store.SCAN_LIMIT


class ProviderLive(BaseModel):
    """One provider profile as this node's throttle store sees it."""

    provider: str
    connections: int
    connections_by_ip: dict[str, int]
    paused_until: datetime | None
    slowed: dict[str, str]  # source IP -> "RATE until TIME"


class Suspension(BaseModel):
    provider: str
    source_ip: str
    until: datetime
    reason: str


class WarmupRow(BaseModel):
    source_ip: str
    provider: str
    day: int
    cap: int | None  # None: unlimited
    sent_today: int
    held_days: int


class PausedCampaign(BaseModel):
    campaign: str
    reason: str
    detail: str
    changed_by: str
    changed_at: datetime
    held: int


class Status(BaseModel):
    generated_at: datetime
    node: str | None
    live: bool  # False: read from the database only; providers and suspensions are then None
    queue: QueueSummary
    providers: list[ProviderLive] | None
    suspensions: list[Suspension] | None
    warmup: list[WarmupRow]
    paused_campaigns: list[PausedCampaign]
    webhook_backlog: int
    feedback_unapplied: int


# -- pure parts -------------------------------------------------------------------------------

def summarize_queue(scan: status_store.QueueScan) -> QueueSummary:
    """Totals per state and the soonest due time of what is waiting. Held copies keep the due
    time they had when held, which says nothing about when they will go: left out."""
    by_state: dict[str, int] = {}
    for group in scan.groups:
        by_state[group.state] = by_state.get(group.state, 0) + group.count
    waiting = [g.oldest_due for g in scan.groups if g.state in PENDING]
    return QueueSummary(
        total=sum(by_state.values()), by_state=by_state, oldest_due=min(waiting, default=None),
        groups=[QueueCount(state=g.state, provider=g.provider, count=g.count, oldest_due=g.oldest_due)
                for g in scan.groups],
        capped=sorted(scan.capped))


def warmup_rows(pools: Mapping[str, PoolSpec], policy: Policy, today: date,
                sent: Callable[[str, str], int], held: Callable[[str, str], int]) -> list[WarmupRow]:
    """Every warming IP (a ``warmup_start``) with every provider that has a schedule: the
    schedule's day (moved back by held days), today's cap and what was sent against it."""
    rows: dict[tuple[str, str], WarmupRow] = {}
    for pool in pools.values():
        for ip in pool.ips:
            if ip.warmup_start is None:
                continue
            for provider in _providers(policy):
                schedule = policy.warmup.schedule(provider)
                if schedule is None or (ip.key, provider) in rows:
                    continue
                held_days = held(ip.key, provider)
                day = day_index(ip.warmup_start, today, held_days)
                rows[(ip.key, provider)] = WarmupRow(
                    source_ip=ip.key, provider=provider, day=day, cap=schedule.cap(day),
                    sent_today=sent(ip.key, provider), held_days=held_days)
    return sorted(rows.values(), key=lambda row: (row.source_ip, row.provider))


def _providers(policy: Policy) -> list[str]:
    return sorted(set(policy.providers) | {DEFAULT})


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


# -- gathering --------------------------------------------------------------------------------

async def _database_part(conn: AsyncConnection) -> tuple[QueueSummary, list[PausedCampaign], int, int]:
    queue = summarize_queue(await status_store.queue_groups(conn))
    paused = [PausedCampaign(campaign=c.campaign, reason=c.reason or "", detail=c.detail or "",
                             changed_by=c.changed_by or "", changed_at=c.changed_at, held=c.held)
              for c in await campaign_store.campaign_states(conn) if c.paused]
    return (queue, paused, await feedback_store.backlog(conn), await feedback_store.count_unapplied(conn))


async def database_status(db: Database, policy: Policy, pools: Mapping[str, PoolSpec],
                          now: datetime) -> Status:
    """What the database alone says (the gateway may be stopped): warm-up from the counters
    the gateway last saved, no connections or suspensions."""
    today = now.astimezone(UTC).date()

    async def read(conn: AsyncConnection) -> Status:
        queue, paused, backlog, unapplied = await _database_part(conn)
        sends, holds = await shaping_store.load_warmup(conn, today)
        warmup = warmup_rows(pools, policy, today, lambda ip, p: sends.get((ip, p), 0),
                             lambda ip, p: holds.get((ip, p), (0, today))[0])
        return Status(generated_at=now, node=None, live=False, queue=queue, providers=None,
                      suspensions=None, warmup=warmup, paused_campaigns=paused,
                      webhook_backlog=backlog, feedback_unapplied=unapplied)

    return await db.read(read)


async def live_status(db: Database, router: Router, node: str, now: datetime) -> Status:
    """Inside the serving process: the database part plus this node's throttle store."""
    queue, paused, backlog, unapplied = await db.read(_database_part)
    return Status(generated_at=now, node=node, live=True, queue=queue,
                  providers=await _providers_live(router, now.timestamp()),
                  suspensions=await _suspensions(router, now.timestamp()),
                  warmup=await _warmup_live(router, now.astimezone(UTC).date()), paused_campaigns=paused,
                  webhook_backlog=backlog, feedback_unapplied=unapplied)


def _source_ips(router: Router) -> list[str]:
    return sorted({ip.key for pool in router.pools.values() for ip in pool.ips})


async def _providers_live(router: Router, epoch: float) -> list[ProviderLive]:
    store, ips, found = router.store, _source_ips(router), []
    for provider in _providers(router.policy):
        by_ip = {ip: n for ip in ips if (n := await store.connections(provider, ip))}
        slowed = {ip: f"{slow.rate} until {_utc(slow.until):%H:%M:%S}" for ip in ips
                  if (slow := await store.slowdown(provider, ip, epoch)) is not None}
        paused_until = await store.provider_paused_until(provider, epoch)
        found.append(ProviderLive(provider=provider, connections=await store.connections(provider),
                                  connections_by_ip=by_ip, slowed=slowed,
                                  paused_until=None if paused_until is None else _utc(paused_until)))
    return found


async def _suspensions(router: Router, epoch: float) -> list[Suspension]:
    return [Suspension(provider=provider, source_ip=ip, until=_utc(until),
                       reason=router.suspension_reason(provider, ip))
            for (provider, ip), until in sorted((await router.store.suspensions(epoch)).items())]


async def _warmup_live(router: Router, today: date) -> list[WarmupRow]:
    """From the throttle store, which is ahead of what was last saved to the database."""
    keys = [(ip, provider) for ip in _source_ips(router) for provider in _providers(router.policy)]
    sent = {key: await router.store.warmup_count(*key, today) for key in keys}
    held = {key: await router.store.held_days(*key, today) for key in keys}
    return warmup_rows(router.pools, router.policy, today, lambda ip, p: sent[(ip, p)],
                       lambda ip, p: held[(ip, p)])
