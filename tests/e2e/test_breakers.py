"""Reputation circuit breakers over real sockets: a bought list is stopped after the first
few hundred answers, its mail is held (not lost), another campaign keeps flowing, and
`gateway campaign resume` releases the held copies."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.records import DeliveryState
from gateway.sandbox.sink import ReplyScript
from gateway.storage import campaign_store, queue_store
from gateway.storage.tables import deliveries, events, messages
from tests.e2e.conftest import Running, StartGateway
from tests.e2e.test_consent import message, send

ROOT = Path(__file__).resolve().parents[2]
RECIPIENTS = 1000
DEAD_EVERY = 5  # 20% dead, spread evenly through the list
RATE = "50/s"  # the sink answers in microseconds; a real provider's pace makes the bound meaningful


def _address(n: int) -> str:
    return f"{'dead' if n % DEAD_EVERY == 0 else 'ok'}{n:04d}@example.net"


async def _states(running: Running, campaign: str) -> dict[str, int]:
    """How many copies of ``campaign`` are in each state."""
    query = (select(deliveries.c.state, func.count())
             .select_from(deliveries.join(messages, messages.c.queue_id == deliveries.c.queue_id))
             .where(messages.c.campaign == campaign).group_by(deliveries.c.state))

    async def count(conn: AsyncConnection) -> dict[str, int]:
        return {row[0]: int(row[1]) for row in await conn.execute(query)}

    return await running.gateway.db.read(count)


async def _attempted(running: Running, campaign: str) -> int:
    """Copies of ``campaign`` that got at least one attempt (an answer from the sink)."""
    query = (select(func.count())
             .select_from(deliveries.join(messages, messages.c.queue_id == deliveries.c.queue_id))
             .where(messages.c.campaign == campaign, deliveries.c.attempts > 0))

    async def count(conn: AsyncConnection) -> int:
        return int((await conn.execute(query)).scalar_one())

    return await running.gateway.db.read(count)


async def _wait(check: Callable[[], Awaitable[bool]], what: str, seconds: float = 30.0) -> None:
    for _ in range(int(seconds * 20)):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


async def test_a_bought_list_is_paused_early_held_and_released_on_resume(
        start_gateway: StartGateway, tmp_path: Path) -> None:
    running = await start_gateway({"http": {"admin_listen": "127.0.0.1:0"}},
                                  policy={"max_message_rate": RATE, "connection_limit": 4})
    running.gateway.breakers.debounce = 0.1
    everyone = [_address(n) for n in range(RECIPIENTS)]
    clean = [f"fan{n:02d}@example.net" for n in range(40)]
    await running.consent("news", *everyone, *clean)
    running.sink.script = ReplyScript().on_rcpt(re.compile(r"^dead\d+@"), "550 5.1.1 user unknown")

    for start in range(0, RECIPIENTS, 100):
        await asyncio.to_thread(send, running.port, everyone[start:start + 100], message(campaign="bought"))

    async def paused() -> bool:
        state = await running.gateway.db.read(lambda c: campaign_store.campaign_state(c, "bought"))
        return state is not None and state.paused
    await _wait(paused, "the breaker to pause the campaign")
    await asyncio.to_thread(send, running.port, clean, message(campaign="clean"))

    async def clean_delivered() -> bool:
        return sum(1 for m in running.sink.messages if m.rcpt_tos[0].startswith("fan")) == len(clean)
    await _wait(clean_delivered, "the clean campaign to be delivered")

    # Nothing of the bought list moved since the pause: every copy is answered or held.
    state = await running.gateway.db.read(lambda c: campaign_store.campaign_state(c, "bought"))
    assert state is not None and state.paused and state.changed_by == "breaker" and state.reason == "hard-bounce"
    attempted = await _attempted(running, "bought")
    # Trips at >= 100 answers with >= 10 hard bounces (about 100 here); then at most a debounce
    # (0.1 s) plus an outcome batch pass at 50/s; copies already waiting in a delivery lane are
    # withdrawn unsent. About 110 here; the bound leaves room for a slow machine.
    assert 100 <= attempted < 250, attempted
    reached = sum(1 for m in running.sink.messages if not m.rcpt_tos[0].startswith("fan"))
    assert reached < 250
    # Not lost: every copy is answered, held, or (postponed by the rate limit before the
    # pause, or withdrawn from a delivery lane) still waiting, held when it is next claimed.
    states = await _states(running, "bought")
    assert sum(states.values()) == RECIPIENTS and set(states) <= {"delivered", "bounced", "held", "queued"}
    assert states["held"] == state.held and state.held + states.get("queued", 0) >= RECIPIENTS - 250
    assert re.fullmatch(r"hard bounces \d+ of \d+ sent \(\d+(\.\d)?%\) (at default|across all providers) "
                        r"over the last 24h, limit 5%", state.detail or ""), state.detail
    counts = await running.gateway.db.read(queue_store.count_pending)
    assert counts.get(DeliveryState.HELD.value) == state.held  # the clean campaign holds nothing

    [event] = (await running.gateway.db.read(
        lambda c: c.execute(select(events).where(events.c.kind == "paused")))).all()
    assert (event.campaign, event.recipient, event.reply) == ("bought", None, state.detail)
    admin = running.gateway.admin
    assert admin is not None and admin.port is not None
    scraped = await asyncio.to_thread(_metrics, admin.port)
    assert "gateway_campaigns_paused 1.0" in scraped
    assert re.search(r'gateway_breaker_trips_total\{provider="(default|all)",reason="hard-bounce",'
                     r'stream="marketing"\} [1-9]', scraped), scraped

    config = tmp_path / "cli.toml"
    config.write_text(f'[storage]\nurl = "{running.gateway.settings.storage.url}"\n[policy]\ndir = "{ROOT / "policies"}"\n')
    resumed = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "gateway", "campaign", "resume", "bought",
                                                       "-c", str(config)],
                                      capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert resumed.returncode == 0, resumed.stderr
    released = re.match(r"campaign bought resumed: (\d+) held copies released", resumed.stdout)
    assert released is not None and int(released.group(1)) >= state.held, resumed.stdout
    assert (await _states(running, "bought")).get("held", 0) == 0
    running.gateway.scheduler.wake()

    async def sending_again() -> bool:
        return await _attempted(running, "bought") > attempted
    await _wait(sending_again, "released copies to be sent")
