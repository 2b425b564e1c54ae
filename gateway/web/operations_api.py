"""Operations on the admin API: status, trace, the queue and campaigns (issue 9).

Included in the /api application (gateway.web.api.admin_api) by the runtime, so the same
bearer token, error style ({"error", "problems"}) and 503-on-storage-trouble apply. These
run inside the serving process: a retry or release wakes its scheduler at once, and its
metrics show the change.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, FastAPI, Path, Query
from pydantic import AfterValidator, Field, StrictBool, StrictStr, model_validator

from gateway.config.units import KEY_RULE, is_key
from gateway.feedback import reputation
from gateway.operations.status import Status
from gateway.storage import campaign_store, queue_store
from gateway.storage.database import Database
from gateway.storage.errors import StorageError
from gateway.web.api import CONFLICT, INVALID, NOT_FOUND, ApiError, Body, Out, Problem

log = logging.getLogger(__name__)
QUEUE_PAGE = 1000
NARROWING = "queue_id, domain, provider or campaign"
QueueState = Literal["queued", "deferred", "held"]  # gateway.records.QUEUE_STATES


@dataclass(frozen=True)
class OperationsContext:
    """What the operations endpoints work with; the runtime builds it from the running gateway."""

    db: Database
    status: Callable[[datetime], Awaitable[Status]]  # gateway.operations.status.live_status, bound
    wake: Callable[[], None] = lambda: None  # the scheduler: retried or released mail is due now
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    pool_of: Mapping[str, str] = field(default_factory=dict)  # source IP -> pool name(s), for traces


def _campaign(value: str) -> str:
    """As X-Gateway-Campaign takes it at intake: a name that no mail can carry would pause
    nothing (and must not reach the log as is)."""
    if value and not is_key(value):
        raise ValueError(f"not a campaign name: {KEY_RULE}")
    return value


Name = Annotated[StrictStr, Field(min_length=1, max_length=255)]
ProviderName = Annotated[StrictStr, Field(max_length=64,
                                          description='provider profile; "" for not routed yet')]
CampaignFilter = Annotated[StrictStr, AfterValidator(_campaign),
                           Field(description='"" for mail without X-Gateway-Campaign')]
CampaignName = Annotated[str, AfterValidator(_campaign),
                         Path(min_length=1, description="X-Gateway-Campaign value (mail without one is never "
                                                        "paused)")]
TraceKey = Annotated[str, Path(min_length=1, max_length=1000,
                               description="a queue id, a Message-ID (with or without <>) or an address")]


class QueueQuery(Body):
    provider: ProviderName | None = None
    domain: Name | None = None
    campaign: CampaignFilter | None = None
    state: QueueState | None = Field(default=None, description="default: every state still in the queue")
    limit: int = Field(default=100, ge=1, le=QUEUE_PAGE)


class QueueSelection(Body):
    """Which deliveries still in the queue an action applies to; filters combine with AND.

    One of queue_id, domain, provider or campaign, or ``"all": true``, is required: a body
    sent empty by mistake (or with only a state, which still spans every domain) must not
    change the whole queue, as ``postsuper -d ALL deferred`` wants its ALL."""

    queue_id: Annotated[StrictStr, Field(min_length=1, max_length=26)] | None = None
    domain: Name | None = None
    provider: ProviderName | None = None
    campaign: CampaignFilter | None = None
    state: QueueState | None = Field(default=None, description="default: every state the action applies to")
    all: StrictBool = Field(default=False, description=f"every delivery (of state, if given); required "
                                                       f"when none of {NARROWING} is given")

    @model_validator(mode="after")
    def _filters_or_all(self) -> QueueSelection:
        if self.all and self.narrowed:
            raise ValueError(f"give {NARROWING} or all, not both")
        return self

    @property
    def narrowed(self) -> bool:
        return any(value is not None for value in (self.queue_id, self.domain, self.provider, self.campaign))


class ChangedOut(Out):
    changed: int


class DeliveryOut(Out):
    queue_id: str
    recipient: str
    state: str
    attempts: int
    provider: str
    next_attempt_at: datetime
    last_reply: str | None


class QueueOut(Out):
    deliveries: list[DeliveryOut]


class MessageOut(Out):
    queue_id: str
    received_at: datetime
    mail_from: str
    stream: str
    deliveries: list[DeliveryOut]


class TraceStep(Out):
    at: datetime
    queue_id: str
    recipient: str | None
    kind: str
    detail: str


class TraceOut(Out):
    key: str
    steps: list[TraceStep]


class CampaignOut(Out):
    campaign: str
    paused: bool
    reason: str | None = Field(description="hard-bounce, complaint or manual")
    detail: str | None = Field(description="the figures that tripped the breaker, or the operator's note")
    changed_by: str | None = Field(description="breaker, cli or api")
    changed_at: datetime
    counted_since: datetime | None = Field(
        description="reputation counts before this are ignored (set on resume)")
    held: int


class CampaignsOut(Out):
    campaigns: list[CampaignOut]


class PauseIn(Body):
    detail: Annotated[StrictStr, Field(max_length=2000)] = Field(default="",
                                                                 description="why, for the record")


def include_operations(api: FastAPI, ctx: OperationsContext) -> None:
    """Add the operations endpoints to the /api application."""
    api.include_router(_routes(ctx))


def _routes(ctx: OperationsContext) -> APIRouter:
    routes = APIRouter()
    db = ctx.db

    @routes.get("/status", response_model=Status, summary="queue, providers, suspensions, warm-up, "
                "paused campaigns and backlogs (what `gateway status` shows)")
    async def status() -> Status:
        return await ctx.status(ctx.clock())

    @routes.get("/trace/{key:path}", response_model=TraceOut, responses={**NOT_FOUND, **INVALID},
                summary="every recorded step of a queue id, a Message-ID or an address (`gateway trace`)")
    async def trace(key: TraceKey) -> TraceOut:
        rows = await db.read(lambda conn: queue_store.trace(conn, key, pool_of=ctx.pool_of))
        if not rows:
            raise ApiError(404, f"nothing recorded for {key}")
        return TraceOut(key=key, steps=[TraceStep.model_validate(r, from_attributes=True) for r in rows])

    @routes.get("/queue", response_model=QueueOut, responses=INVALID,
                summary="deliveries still in the queue, soonest due first")
    async def list_queue(query: Annotated[QueueQuery, Query()]) -> QueueOut:
        found = await db.read(lambda conn: queue_store.list_queue(
            conn, domain=query.domain, provider=query.provider, campaign=query.campaign,
            states=[query.state] if query.state else None, limit=query.limit))
        return QueueOut(deliveries=[_delivery_out(view) for view in found])

    @routes.get("/queue/{queue_id}", response_model=MessageOut, responses=NOT_FOUND,
                summary="one message and each of its deliveries, in any state")
    async def show_message(queue_id: str) -> MessageOut:
        found = await db.read(lambda conn: queue_store.show_message(conn, queue_id))
        if found is None:
            raise ApiError(404, f"no message with queue id {queue_id}")
        return MessageOut(queue_id=found.queue_id, received_at=found.received_at, mail_from=found.mail_from,
                          stream=found.stream, deliveries=[_delivery_out(d) for d in found.deliveries])

    for action, (summary, *_) in _ACTIONS.items():
        routes.add_api_route(f"/queue/{action}", _queue_action(ctx, action), methods=["POST"],
                             response_model=ChangedOut, responses=INVALID, summary=summary,
                             name=f"queue_{action}")

    @routes.get("/campaigns", response_model=CampaignsOut,
                summary="every campaign ever paused: whether it is now, why, and how many copies are held")
    async def campaigns() -> CampaignsOut:
        found = await db.read(campaign_store.campaign_states)
        return CampaignsOut(campaigns=[_campaign_out(c) for c in found])

    @routes.post("/campaigns/{name}/pause", response_model=CampaignOut, responses=INVALID,
                 summary="pause a campaign: its waiting and new copies are held, not lost")
    async def pause(name: CampaignName, body: PauseIn | None = None) -> CampaignOut:
        detail = (body.detail if body is not None else "") or "paused by an operator (admin API)"
        held = await reputation.pause(db, name, note=detail, by="api", now=ctx.clock())
        if held is not None:
            log.warning("campaign %s paused through the admin API: %d deliveries held", name, held)
        return await _campaign_now(ctx, name)

    @routes.post("/campaigns/{name}/resume", response_model=CampaignOut,
                 responses={**CONFLICT, **INVALID},
                 summary="resume a paused campaign: its held copies are due now, reputation counted afresh")
    async def resume(name: CampaignName) -> CampaignOut:
        released = await reputation.resume(db, name, by="api", now=ctx.clock())
        if released is None:
            raise ApiError(409, f"campaign {name} is not paused")
        log.warning("campaign %s resumed through the admin API: %d deliveries released", name, released)
        if released:
            ctx.wake()
        return await _campaign_now(ctx, name)

    return routes


async def _campaign_now(ctx: OperationsContext, name: str) -> CampaignOut:
    found = await ctx.db.read(lambda conn: campaign_store.campaign_state(conn, name))
    if found is None:
        raise StorageError(f"campaign {name} has no recorded state after the change")
    return _campaign_out(found)


def _campaign_out(state: campaign_store.CampaignState) -> CampaignOut:
    return CampaignOut.model_validate(state, from_attributes=True)


_Action = Callable[..., Awaitable[int]]
_ACTIONS: dict[str, tuple[str, _Action]] = {  # states each applies to: queue_store.ACTION_STATES
    "retry": ("make waiting (queued or deferred) deliveries due now", queue_store.retry_now),
    "hold": ("keep waiting deliveries unsent until released", queue_store.hold),
    "release": ("make held deliveries due now (a paused campaign's are held again: resume it)",
                queue_store.release),
    "purge": ("give up on deliveries (they become expired)", queue_store.purge),
}


def _queue_action(ctx: OperationsContext, action: str) -> Callable[[QueueSelection], Awaitable[ChangedOut]]:
    async def change(body: QueueSelection) -> ChangedOut:
        return await _change(ctx, body, action)
    return change


async def _change(ctx: OperationsContext, body: QueueSelection, action: str) -> ChangedOut:
    _summary, change = _ACTIONS[action]
    valid = sorted(s.value for s in queue_store.ACTION_STATES[action])
    if body.state is not None and body.state not in valid:
        message = f"{action} applies to {' or '.join(valid)} deliveries, not {body.state}"
        raise ApiError(422, f"invalid request: state: {message}", [Problem(field="state", message=message)])
    if not body.narrowed and not body.all:
        which = f"every {body.state} delivery" if body.state else "the whole queue"
        raise ApiError(422, f'refusing to {action} {which} without "all": true',
                       [Problem(field="body", message=f'give {NARROWING}, or "all": true')])
    now = ctx.clock()
    changed = await ctx.db.write(lambda conn: change(
        conn, now, queue_id=body.queue_id, domain=body.domain, provider=body.provider,
        campaign=body.campaign, states=[body.state] if body.state else None))
    if changed and action in ("retry", "release"):
        ctx.wake()
    return ChangedOut(changed=changed)


def _delivery_out(view: queue_store.DeliveryView) -> DeliveryOut:
    return DeliveryOut.model_validate(view, from_attributes=True)
