"""The admin API's operations endpoints (status, trace, queue, campaigns) on SQLite and
PostgreSQL, driven in-process through ASGI like tests/integration/test_admin_api.py; and
the database-only status `gateway status` falls back to."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.config.policy import Policy
from gateway.operations.status import database_status, live_status, summarize_queue
from gateway.records import NewMessage, new_queue_id
from gateway.rewrite.tokens import TokenCodec
from gateway.shaping.router import PoolSpec, Router, SourceIp
from gateway.shaping.store import MemoryThrottleStore
from gateway.storage import campaign_store, queue_store, shaping_store, status_store
from gateway.storage.database import Database
from gateway.storage.tables import events
from gateway.web.admin import admin_app
from gateway.web.api import ApiContext, admin_api
from gateway.web.operations_api import OperationsContext, include_operations
from tests.fakes import FakeClock

TOKEN = "t0k3n-" + "b" * 40
T0 = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
NODE = "node-a"
POLICY = Policy.model_validate({
    "providers": {"default": {}, "gmail": {"match_domains": ["gmail.test"], "rules": [
        {"match": r"4\.7\.28", "action": "suspend", "duration": "1h", "name": "gmail-rate"}]}},
    "warmup": {"schedules": {"gmail": {"1": 50, "2": 100}}}})
POOLS = {"default": PoolSpec("default", (SourceIp("127.0.0.10", "mta1.example.com"),
                                         SourceIp("127.0.0.11", "mta2.example.com",
                                                  warmup_start=date(2026, 3, 1))))}


@dataclass
class Ops:
    client: httpx.AsyncClient
    anonymous: httpx.AsyncClient
    db: Database
    router: Router
    clock: FakeClock[datetime]
    woken: list[int] = field(default_factory=list)

    async def get(self, path: str, **params: str | int) -> httpx.Response:
        return await self.client.get(f"/api{path}", params=params)

    async def post(self, path: str, body: object) -> httpx.Response:
        return await self.client.post(f"/api{path}", json=body)


@pytest.fixture
async def ops(db_url: str) -> AsyncIterator[Ops]:
    db = Database(db_url)
    await db.start()
    clock = FakeClock(T0)
    router = Router(POLICY, POOLS, MemoryThrottleStore(), lambda: clock.now.timestamp())
    api = admin_api(ApiContext(db, TokenCodec({1: b"k" * 32}, 1), "https://mail.example.com", TOKEN, clock=clock))
    woken: list[int] = []
    include_operations(api, OperationsContext(db, lambda now: live_status(db, router, NODE, now),
                                              wake=lambda: woken.append(1), clock=clock))
    transport = httpx.ASGITransport(app=admin_app(lambda: True, api=api))
    async with (httpx.AsyncClient(transport=transport, base_url="http://test",
                                  headers={"Authorization": f"Bearer {TOKEN}"}) as client,
                httpx.AsyncClient(transport=transport, base_url="http://test") as anonymous):
        yield Ops(client, anonymous, db, router, clock, woken)
    await db.close()


async def _queue(db: Database, *recipients: str, campaign: str = "", n: int = 0) -> str:
    queue_id = new_queue_id(T0 + timedelta(milliseconds=n))
    message = NewMessage(queue_id=queue_id, received_at=T0, mail_from="news@example.com",
                         recipients=recipients, body=b"Subject: hi\r\n\r\nhi\r\n", client_ip="127.0.0.1",
                         helo="client", header_message_id=f"<{n}@example.com>", stream="marketing",
                         campaign=campaign)
    await db.write(lambda conn: queue_store.insert_messages(conn, [message]))
    return queue_id


async def _route_to_gmail(db: Database, due: datetime) -> None:
    """What the scheduler does when shaping postpones a claimed delivery: it names the provider."""
    async def route(conn: AsyncConnection) -> None:
        claimed = await queue_store.claim_due(conn, node=NODE, now=T0, lease_until=T0 + timedelta(minutes=5),
                                              limit=100)
        await shaping_store.postpone(conn, NODE, [(c.delivery_id, due, "gmail") for c in claimed
                                                  if c.domain == "gmail.test"])
        await queue_store.release_claims(conn, NODE)
    await db.write(route)


async def test_status_shows_queue_connections_suspensions_warmup_and_paused_campaigns(ops: Ops) -> None:
    await _queue(ops.db, "a@gmail.test", "b@gmail.test", "c@other.test", n=1)
    await _route_to_gmail(ops.db, T0 + timedelta(minutes=10))
    await _queue(ops.db, "d@other.test", campaign="spring", n=2)
    await ops.db.write(lambda conn: campaign_store.pause_campaign(
        conn, "spring", reason="hard-bounce", detail="6% hard bounces at gmail", by="breaker", now=T0))
    store = ops.router.store
    assert await store.open_connection("gmail", "127.0.0.10", 5, None)
    assert await store.reserve_warmup("127.0.0.11", "gmail", T0.date(), 100)
    await ops.router.observe("gmail", "127.0.0.10", "421 4.7.28 unusual rate of mail", "transient")

    response = await ops.get("/status")
    assert response.status_code == 200, response.text
    status = response.json()
    assert (status["node"], status["live"]) == (NODE, True)
    queue = status["queue"]
    assert (queue["total"], queue["by_state"]) == (4, {"queued": 3, "held": 1})
    groups = {(g["state"], g["provider"]): g["count"] for g in queue["groups"]}
    assert groups == {("queued", "gmail"): 2, ("queued", ""): 1, ("held", ""): 1}
    gmail = next(p for p in status["providers"] if p["provider"] == "gmail")
    assert (gmail["connections"], gmail["connections_by_ip"]) == (1, {"127.0.0.10": 1})
    assert status["suspensions"] == [{"provider": "gmail", "source_ip": "127.0.0.10",
                                      "until": "2026-03-02T10:30:00Z",
                                      "reason": "rule gmail-rate: 421 4.7.28 unusual rate of mail"}]
    assert status["warmup"] == [{"source_ip": "127.0.0.11", "provider": "gmail", "day": 2, "cap": 100,
                                 "sent_today": 1, "held_days": 0}]
    [paused] = status["paused_campaigns"]
    assert (paused["campaign"], paused["reason"], paused["changed_by"], paused["held"]) == (
        "spring", "hard-bounce", "breaker", 1)
    assert (status["webhook_backlog"], status["feedback_unapplied"]) == (0, 0)
    assert (await ops.anonymous.get("/api/status")).status_code == 401


async def test_database_status_reads_what_survives_the_gateway(ops: Ops) -> None:
    await _queue(ops.db, "a@gmail.test", n=1)
    await _route_to_gmail(ops.db, T0 - timedelta(minutes=3))
    await ops.db.write(lambda conn: shaping_store.save_warmup(
        conn, T0.date(), {("127.0.0.11", "gmail"): 40}, {("127.0.0.11", "gmail"): (1, date(2026, 3, 1))}))

    status = await database_status(ops.db, POLICY, POOLS, T0)
    assert (status.live, status.node, status.providers, status.suspensions) == (False, None, None, None)
    assert [(g.state, g.provider, g.count, g.oldest_due) for g in status.queue.groups] == [
        ("queued", "gmail", 1, T0 - timedelta(minutes=3))]
    assert status.queue.oldest_due == T0 - timedelta(minutes=3)
    assert [(w.source_ip, w.provider, w.day, w.cap, w.sent_today, w.held_days) for w in status.warmup] == [
        ("127.0.0.11", "gmail", 1, 50, 40, 1)]  # day 2 held back one day


async def test_queue_read_stops_at_the_scan_limit_and_ignores_held_due_times(ops: Ops) -> None:
    await _queue(ops.db, "a@gmail.test", "b@gmail.test", "c@other.test", n=1)
    await _queue(ops.db, "d@other.test", campaign="spring", n=2)
    await ops.db.write(lambda conn: queue_store.retry_now(conn, T0 - timedelta(days=2), campaign="spring"))
    await ops.db.write(lambda conn: campaign_store.pause_campaign(
        conn, "spring", reason="manual", detail="", by="cli", now=T0))  # held, due two days ago

    scan = await ops.db.read(lambda conn: status_store.queue_groups(conn, limit=2))
    assert [(g.state, g.count) for g in scan.groups] == [("held", 1), ("queued", 2)]
    assert scan.capped == {"queued"}  # three queued, two read: a lower bound
    summary = summarize_queue(await ops.db.read(status_store.queue_groups))
    assert (summary.by_state, summary.capped, summary.oldest_due) == ({"held": 1, "queued": 3}, [], T0)


async def test_trace_and_queue_views(ops: Ops) -> None:
    queue_id = await _queue(ops.db, "a@gmail.test", "b@other.test", n=1)
    await _route_to_gmail(ops.db, T0 + timedelta(minutes=10))

    trace = await ops.get(f"/trace/{queue_id.lower()}")
    assert trace.status_code == 200, trace.text
    assert trace.json()["steps"][0]["kind"] == "received"
    assert (await ops.get("/trace/<1@example.com>")).json()["steps"][0]["queue_id"] == queue_id
    missing = await ops.get("/trace/nobody@example.org")
    assert (missing.status_code, missing.json()) == (404, {"error": "nothing recorded for nobody@example.org"})

    listed = (await ops.get("/queue", provider="gmail")).json()["deliveries"]
    assert [(d["recipient"], d["provider"], d["state"]) for d in listed] == [("a@gmail.test", "gmail", "queued")]
    assert [d["recipient"] for d in (await ops.get("/queue", domain="OTHER.test")).json()["deliveries"]] == [
        "b@other.test"]
    assert (await ops.get("/queue", state="deferred")).json() == {"deliveries": []}
    bad = await ops.get("/queue", state="delivered", limit=0)
    assert bad.status_code == 422
    assert {p["field"] for p in bad.json()["problems"]} == {"state", "limit"}

    shown = await ops.get(f"/queue/{queue_id}")
    assert shown.status_code == 200
    assert [d["recipient"] for d in shown.json()["deliveries"]] == ["a@gmail.test", "b@other.test"]
    assert (await ops.get("/queue/01NOSUCHQUEUEID0000000000X")).status_code == 404


async def test_retry_and_purge_take_json_filters(ops: Ops) -> None:
    first = await _queue(ops.db, "a@gmail.test", "b@other.test", n=1)
    await _queue(ops.db, "c@other.test", n=2)
    await _route_to_gmail(ops.db, T0 + timedelta(minutes=10))

    retried = await ops.post("/queue/retry", {"domain": "gmail.test"})
    assert (retried.status_code, retried.json(), ops.woken) == (200, {"changed": 1}, [1])
    assert (await ops.get("/queue", provider="gmail")).json()["deliveries"][0]["next_attempt_at"] == \
        "2026-03-02T09:30:00Z"

    for action in ("retry", "hold", "release", "purge"):  # an empty body never spans the whole queue
        refused = await ops.post(f"/queue/{action}", {})
        assert (refused.status_code, refused.json()["error"]) == (
            422, f'refusing to {action} the whole queue without "all": true'), action
    only_state = await ops.post("/queue/purge", {"state": "queued"})  # every domain: not a narrowing filter
    assert (only_state.status_code, only_state.json()["error"]) == (
        422, 'refusing to purge every queued delivery without "all": true')
    assert only_state.json()["problems"] == [
        {"field": "body", "message": 'give queue_id, domain, provider or campaign, or "all": true'}]
    both = await ops.post("/queue/purge", {"all": True, "domain": "gmail.test"})
    assert both.status_code == 422 and "not both" in both.json()["error"]
    assert (await ops.post("/queue/purge", {"all": True, "state": "deferred"})).json() == {"changed": 0}
    assert ops.woken == [1]
    unknown = await ops.post("/queue/purge", {"recipient": "a@gmail.test"})
    assert unknown.status_code == 422 and unknown.json()["problems"] == [
        {"field": "recipient", "message": "unknown field"}]

    assert (await ops.post("/queue/purge", {"queue_id": first})).json() == {"changed": 2}
    assert (await ops.post("/queue/purge", {"all": True})).json() == {"changed": 1}
    assert (await ops.get("/queue")).json() == {"deliveries": []}
    states = {d["state"] for d in (await ops.get(f"/queue/{first}")).json()["deliveries"]}
    assert states == {"expired"}


async def test_hold_release_and_campaigns(ops: Ops) -> None:
    await _queue(ops.db, "a@gmail.test", "b@other.test", n=1)
    await _queue(ops.db, "c@other.test", campaign="spring", n=2)

    assert (await ops.post("/queue/hold", {})).status_code == 422
    held = await ops.post("/queue/hold", {"domain": "other.test", "campaign": ""})
    assert held.json() == {"changed": 1}
    assert [d["recipient"] for d in (await ops.get("/queue", state="held")).json()["deliveries"]] == ["b@other.test"]
    wrong = await ops.post("/queue/release", {"state": "queued"})
    assert wrong.status_code == 422 and wrong.json()["problems"][0]["field"] == "state"
    assert (await ops.post("/queue/release", {"all": True})).json() == {"changed": 1}
    assert ops.woken == [1]

    paused = await ops.post("/campaigns/spring/pause", {"detail": "wrong list uploaded"})
    assert paused.status_code == 200, paused.text
    assert {k: paused.json()[k] for k in ("campaign", "paused", "reason", "detail", "changed_by", "held")} == {
        "campaign": "spring", "paused": True, "reason": "manual", "detail": "wrong list uploaded",
        "changed_by": "api", "held": 1}
    again = await ops.post("/campaigns/spring/pause", None)  # no body: the first reason stays
    assert (again.status_code, again.json()["detail"]) == (200, "wrong list uploaded")
    listed = (await ops.get("/campaigns")).json()["campaigns"]
    assert [(c["campaign"], c["paused"], c["held"]) for c in listed] == [("spring", True, 1)]
    assert [d["recipient"] for d in (await ops.get("/queue", campaign="spring")).json()["deliveries"]] == [
        "c@other.test"]

    ops.clock.now = T0 + timedelta(hours=1)
    resumed = await ops.post("/campaigns/spring/resume", {})
    assert resumed.status_code == 200, resumed.text
    assert (resumed.json()["paused"], resumed.json()["held"], resumed.json()["counted_since"]) == (
        False, 0, "2026-03-02T10:30:00Z")
    assert ops.woken == [1, 1]
    assert await ops.db.read(_campaign_events) == [("paused", "manual: wrong list uploaded"),
                                                   ("resumed", "resumed by api, 1 held copies released")]
    not_paused = await ops.post("/campaigns/spring/resume", {})
    assert (not_paused.status_code, not_paused.json()) == (409, {"error": "campaign spring is not paused"})
    assert (await ops.post("/campaigns/never-seen/resume", {})).status_code == 409
    assert (await ops.post(f"/campaigns/{'x' * 65}/pause", {})).status_code == 422


async def test_campaign_names_are_those_mail_can_carry(ops: Ops) -> None:
    """A name X-Gateway-Campaign cannot hold would pause nothing while the operator believes
    the send stopped; a control character in it would reach the log as is."""
    for name in ("spring%20sale", "spring%0D%1B[2J", "-spring"):
        refused = await ops.post(f"/campaigns/{name}/pause", {})
        assert refused.status_code == 422, name
        assert refused.json()["problems"] == [{"field": "name", "message": "not a campaign name: 1-64 letters, "
                                               "digits, '.', '_' or '-', starting with a letter or digit"}]
    assert (await ops.get("/campaigns")).json() == {"campaigns": []}
    bad_filter = await ops.post("/queue/hold", {"campaign": "spring sale"})
    assert (bad_filter.status_code, bad_filter.json()["problems"][0]["field"]) == (422, "campaign")
    assert (await ops.get("/queue", campaign="spring sale")).status_code == 422


async def test_the_provider_filter_takes_mail_not_routed_yet(ops: Ops) -> None:
    await _queue(ops.db, "a@gmail.test", "b@other.test", n=1)
    await _route_to_gmail(ops.db, T0 + timedelta(minutes=10))
    unrouted = (await ops.get("/queue", provider="")).json()["deliveries"]
    assert [d["recipient"] for d in unrouted] == ["b@other.test"]
    assert (await ops.post("/queue/hold", {"provider": ""})).json() == {"changed": 1}


async def test_every_operations_route_needs_the_token(ops: Ops) -> None:
    queue_id = await _queue(ops.db, "a@gmail.test", campaign="spring", n=1)
    paths = [("GET", "/status"), ("GET", f"/trace/{queue_id}"), ("GET", "/queue"), ("GET", f"/queue/{queue_id}"),
             ("GET", "/campaigns"), ("POST", "/campaigns/spring/pause"), ("POST", "/campaigns/spring/resume"),
             *(("POST", f"/queue/{action}") for action in ("retry", "hold", "release", "purge"))]
    wrong = {"Authorization": "Bearer " + "x" * 46}
    for method, path in paths:
        for headers in ({}, wrong):
            answer = await ops.anonymous.request(method, f"/api{path}", json={"all": True}, headers=headers)
            assert answer.status_code == 401, (method, path, headers)
            assert "Bearer" in answer.headers["WWW-Authenticate"]
    still = (await ops.get(f"/queue/{queue_id}")).json()["deliveries"]
    assert [(d["state"], d["next_attempt_at"]) for d in still] == [("queued", "2026-03-02T09:30:00Z")]
    assert (await ops.get("/campaigns")).json() == {"campaigns": []}


async def _campaign_events(conn: AsyncConnection) -> list[tuple[str, str]]:
    """What webhooks and `gateway trace` see of a pause or resume made through the API."""
    rows = await conn.execute(select(events.c.kind, events.c.reply).where(events.c.campaign == "spring")
                              .order_by(events.c.id))
    return [(row.kind, row.reply) for row in rows]
