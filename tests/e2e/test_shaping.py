"""Per-provider shaping end to end: fake providers on 127.0.1.x, an IP pool 127.0.0.10-13.

A 'gmail' (MX under google.com) refuses with 421 4.7.28 once a source IP sends more than
RATE_WINDOW_LIMIT messages within RATE_WINDOW seconds (Gmail's "unusual rate", scaled down);
the gateway may open 2 connections per source IP to it and send 5/s per IP. A 'yahoo'
disconnects at the end of DATA for its first messages. A slow provider answers DATA after
a delay. Unmatched domains go to a plain sink. One IP is on day 1 of its warm-up with a
small cap for gmail. The sinks record every connection and message; the assertions read them.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import smtplib
import subprocess
import sys
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiosmtpd.smtp import SMTP
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.config.policy import Policy
from gateway.config.schema import Settings
from gateway.runtime import Gateway
from gateway.sandbox.dnsserver import LoopbackDnsServer
from gateway.sandbox.sink import Action, ReplyScript, SinkServer, Stage
from gateway.storage import queue_store
from gateway.storage.migrate import upgrade
from gateway.storage.tables import feedback_records
from tests.e2e.conftest import SELECTOR, DkimFiles, StartGateway
from tests.e2e.test_bounces import BOUNCE_DOMAIN, arf, dsn, inbound_settled, metric, send_from_outside
from tests.e2e.test_consent import message as consent_message
from tests.e2e.test_consent import send

SHIPPED_BOUNCES = Path(__file__).resolve().parents[2] / "policies" / "bounces.toml"
POOL = ["127.0.0.10", "127.0.0.11", "127.0.0.12", "127.0.0.13"]
WARMING_IP = "127.0.0.13"
WARMUP_CAP = 15
RATE_WINDOW, RATE_WINDOW_LIMIT = 3.0, 12  # the sink's limit per source IP
GMAIL_RATE = 5.0  # the gateway's per-IP rate: above the sink's 4/s, so 421s happen
SUSPEND = 2.0
_RATE_CHECK = "rate check"
_REFUSAL = "421 4.7.28 Our system has detected an unusual rate of unsolicited mail originating from your IP"


class GmailSink(SinkServer):
    """Refuses DATA with 421 4.7.28 past RATE_WINDOW_LIMIT messages per source IP in a window."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port, script=ReplyScript(), keep_messages=True)
        self.accepted_at: dict[str, deque[float]] = defaultdict(deque)
        self.refusals: list[tuple[float, str]] = []

    def decide(self, stage: Stage, addresses: Sequence[str]) -> Action:
        return Action(reply=_RATE_CHECK) if stage == "data" else Action()

    async def act(self, action: Action, smtp: SMTP) -> str | None:
        if action.reply != _RATE_CHECK:
            return await super().act(action, smtp)
        peer = str(smtp.session.peer[0]) if smtp.session and smtp.session.peer else "?"
        now, recent = time.monotonic(), self.accepted_at[peer]
        while recent and recent[0] < now - RATE_WINDOW:
            recent.popleft()
        if len(recent) >= RATE_WINDOW_LIMIT:
            self.refusals.append((time.time(), peer))
            return _REFUSAL
        recent.append(now)
        return None


@dataclass
class World:
    gateway: Gateway
    gmail: GmailSink
    yahoo: SinkServer
    slow: SinkServer
    other: SinkServer


DOMAINS = {"gmail.test": ("gmail-smtp-in.l.google.com", "127.0.1.21"),
           "workspace.test": ("aspmx.l.google.com", "127.0.1.21"),
           "yahoo.test": ("mta5.am0.yahoodns.net", "127.0.1.22"),
           "slow.test": ("mx.slowmail.test", "127.0.1.23"),
           "other.test": ("mx.other.test", "127.0.1.24")}


def _policy() -> Policy:
    return Policy.model_validate({
        "providers": {
            "default": {"retry_first": "1s", "retry_max": "2s", "idle_close": "1s", "connection_limit": 3,
                        "provider_pause": "2s"},
            "gmail": {"match_mx": ["google.com"], "connection_limit": 2, "provider_connection_limit": 6,
                      "max_message_rate": f"{GMAIL_RATE:g}/s", "max_deliveries_per_connection": 50,
                      "rules": [{"match": r"4\.7\.28", "action": "suspend", "duration": f"{SUSPEND:g}s"}]},
            "yahoo": {"match_mx": ["yahoodns.net"], "connection_limit": 2},
            "slowmail": {"match_mx": ["slowmail.test"], "connection_limit": 2, "provider_connection_limit": 3},
        },
        "warmup": {"schedules": {"default": {"1": 1000}, "gmail": {"1": WARMUP_CAP, "2": "unlimited"}}},
    })


@pytest.fixture
async def world(tmp_path: Path, dkim_files: DkimFiles) -> AsyncIterator[World]:
    gmail = GmailSink("127.0.1.21", 0)
    await gmail.start()
    port = gmail.port
    yahoo = SinkServer("127.0.1.22", port, script=ReplyScript().disconnect("data", times=40))
    slow = SinkServer("127.0.1.23", port, script=ReplyScript().delay("data", 0.05))
    other = SinkServer("127.0.1.24", port)
    for sink in (yahoo, slow, other):
        await sink.start()
    records: dict[tuple[str, str], list[str]] = {
        ("s1._domainkey.example.com", "TXT"): [dkim_files.records["rsa"]]}
    for domain, (mx, address) in DOMAINS.items():
        records[(domain, "MX")] = [f"10 {mx}."]
        records[(mx, "A")] = [address]
    dns = LoopbackDnsServer(records, host="127.0.0.53", port=0)
    await dns.start()
    today = datetime.now(UTC).date().isoformat()
    policies = tmp_path / "policies"  # the shaping policy is given below; no bounce rules
    policies.mkdir()
    (policies / "bounces.toml").touch()
    settings = Settings.model_validate({
        "smtp": {"listen": ["127.0.0.1:0"], "hostname": "gw.example.com"},
        "storage": {"url": f"sqlite:///{tmp_path}/gateway.db", "node_name": "shaping-node"},
        "http": {"admin_listen": "off", "public_listen": "off"},
        "dns": {"nameservers": [f"127.0.0.53:{dns.port}"], "timeout": "2s", "mx_port": port},
        "bounce": {"domain": "bounces.example.com"},
        "domains": [{"name": "example.com", "dkim": [
            {"selector": SELECTOR, "algorithm": "rsa", "key_file": str(dkim_files.rsa)}]}],
        "tokens": {"default_secret_file": str(tmp_path / "token.key")},
        "policy": {"dir": str(policies)},
        "pools": [{"name": "default", "ips": [
            {"address": ip, "helo": f"mta{n}.example.com",
             **({"warmup_start": today} if ip == WARMING_IP else {})} for n, ip in enumerate(POOL)]}],
    })
    await upgrade(settings.storage.url)
    gateway = Gateway(settings, _policy())
    await gateway.start()
    yield World(gateway, gmail, yahoo, slow, other)
    await gateway.stop()
    await dns.stop()
    for sink in (gmail, yahoo, slow, other):
        await sink.stop()


def _submit(port: int, recipients: list[str]) -> None:
    message = (b"From: <shop@example.com>\r\nTo: <list@example.com>\r\nSubject: shaping\r\n"
               b"X-Gateway-Stream: transactional\r\n\r\nhello\r\n")
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        for start in range(0, len(recipients), 100):
            client.sendmail("shop@example.com", recipients[start:start + 100], message)


def _campaign() -> dict[str, list[str]]:
    sizes = {"gmail.test": 150, "workspace.test": 150, "yahoo.test": 300, "slow.test": 300, "other.test": 1100}
    return {domain: [f"user{n}@{domain}" for n in range(size)] for domain, size in sizes.items()}


def _max_in_window(times: list[float], window: float) -> int:
    times, best, first = sorted(times), 0, 0
    for last, at in enumerate(times):
        while at - times[first] >= window:
            first += 1
        best = max(best, last - first + 1)
    return best


async def test_campaign_follows_each_providers_rules(world: World, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.shaping.router")
    campaign = _campaign()
    everyone = [address for addresses in campaign.values() for address in addresses]
    await asyncio.to_thread(_submit, world.gateway.listeners[0].port, everyone)
    await world.other.wait_for(1100, timeout=30)
    other_done = time.time()
    await world.slow.wait_for(300, timeout=40)
    await world.yahoo.wait_for(300, timeout=40)
    await world.gmail.wait_for(300, timeout=55)
    gmail_done = time.time()

    # Every message arrived exactly once.
    for sink, domains in ((world.gmail, ["gmail.test", "workspace.test"]), (world.yahoo, ["yahoo.test"]),
                          (world.slow, ["slow.test"]), (world.other, ["other.test"])):
        got = sorted(r for m in sink.messages for r in m.rcpt_tos)
        assert got == sorted(a for d in domains for a in campaign[d])

    # Gmail: 2 connections per source IP, 6 in all; 5/s per IP (burst 5); the rule suspended IPs.
    assert max(world.gmail.max_concurrent_by_peer.values()) <= 2
    assert world.gmail.max_concurrent_connections <= 6
    by_ip: dict[str, list[float]] = defaultdict(list)
    for message in world.gmail.messages:
        by_ip[message.peer_ip].append(message.received_at)
    assert set(by_ip) == set(POOL)  # Workspace and gmail.com rolled up to one provider over the pool
    for times in by_ip.values():
        assert _max_in_window(times, 1.0) <= GMAIL_RATE + 5  # rate per second plus the burst
    assert world.gmail.refusals, "the fake gmail never answered 421 4.7.28"
    assert any("suspending" in r.getMessage() and "gmail" in r.getMessage() for r in caplog.records)
    for refused_at, ip in world.gmail.refusals:
        later = [at for at in by_ip[ip] if refused_at + 0.5 < at < refused_at + SUSPEND - 0.2]
        assert not later, f"{ip} sent to gmail while suspended"
    # The warming IP sent exactly today's cap to gmail (every attempt counts, a refused one too:
    # it was sent); the warm IPs took the rest.
    refused_warming = sum(1 for _, ip in world.gmail.refusals if ip == WARMING_IP)
    assert len(by_ip[WARMING_IP]) + refused_warming == WARMUP_CAP

    # The others: per-IP limits held, the slow provider's pool-wide cap held, and they were not
    # held up by gmail's throttling: the plain provider got mail while gmail IPs were
    # suspended, and finished before gmail.
    assert max(world.slow.max_concurrent_by_peer.values()) <= 2
    assert world.slow.max_concurrent_connections <= 3
    assert max(world.other.max_concurrent_by_peer.values()) <= 3
    assert max(world.yahoo.max_concurrent_by_peer.values()) <= 2
    assert other_done < gmail_done
    other_times = [m.received_at for m in world.other.messages]
    assert any(refused_at < at < refused_at + SUSPEND for refused_at, _ in world.gmail.refusals
               for at in other_times)


async def test_reload_swaps_the_policy_atomically(world: World, tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    gateway = world.gateway
    (policies / "providers.toml").write_text(
        '[providers.default]\n\n[providers.gmail]\nmatch_mx = ["google.com"]\nmax_message_rate = "2/s"\n')
    assert gateway.reload_policy(policies)
    assert str(gateway.router.policy.profile("gmail").max_message_rate) == "2/s"
    assert gateway.router.route("x.test", ["aspmx.l.google.com"], "marketing").profile.max_message_rate

    (policies / "providers.toml").write_text('[providers.default]\nconnection_limit = "many"\n')
    assert not gateway.reload_policy(policies)
    (policies / "providers.toml").write_text('[providers.default]\npool = "nowhere"\n')
    assert not gateway.reload_policy(policies)  # a pool the settings do not have
    assert str(gateway.router.policy.profile("gmail").max_message_rate) == "2/s"


def _write_providers(policies: Path, other_rate: str) -> None:
    (policies / "providers.toml").write_text(
        '[providers.default]\nretry_first = "1s"\nretry_max = "2s"\nidle_close = "1s"\n\n'
        f'[providers.other]\nmatch_mx = ["other.test"]\nprovider_max_message_rate = "{other_rate}"\n')


async def _send_and_time(world: World, addresses: list[str]) -> list[float]:
    before = len(world.other.messages)
    await asyncio.to_thread(_submit, world.gateway.listeners[0].port, addresses)
    await world.other.wait_for(before + len(addresses), timeout=30)
    return sorted(m.received_at for m in world.other.messages[before:])


async def test_reload_inside_a_running_gateway_changes_the_rate_it_sends_at(world: World, tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    _write_providers(policies, "2/s")
    assert world.gateway.reload_policy(policies)  # what SIGHUP calls in `gateway serve`
    slow = await _send_and_time(world, [f"slow{n}@other.test" for n in range(9)])
    # 2/s over the pool with a burst of 3: the last of 9 leaves about 3 s after the first.
    assert slow[-1] - slow[0] >= 2.5
    assert _max_in_window(slow, 1.0) <= 2 + 3

    _write_providers(policies, "100/s")
    assert world.gateway.reload_policy(policies)
    fast = await _send_and_time(world, [f"fast{n}@other.test" for n in range(30)])
    assert fast[-1] - fast[0] < 2.5  # 30 messages: at 2/s this would take 14 s
    assert _max_in_window(fast, 1.0) > 2 + 3


def _gateway_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args, "-c", str(config)], capture_output=True,
                          text=True, timeout=60, cwd=Path(__file__).resolve().parents[2])


async def test_queue_list_and_show_name_the_provider(world: World, tmp_path: Path) -> None:
    """yahoo drops the connection at the end of DATA for its first 40 messages: they wait deferred."""
    recipients = [f"wait{n}@yahoo.test" for n in range(3)]
    await asyncio.to_thread(_submit, world.gateway.listeners[0].port, recipients)
    deadline = time.monotonic() + 20
    while True:
        rows = await world.gateway.db.read(lambda c: queue_store.list_queue(c, provider="yahoo",
                                                                            states=["deferred"]))
        if {row.recipient for row in rows} == set(recipients) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert {row.recipient for row in rows} == set(recipients)
    config = tmp_path / "cli.toml"
    config.write_text(f'[storage]\nurl = "sqlite:///{tmp_path}/gateway.db"\n')

    listing = await asyncio.to_thread(_gateway_cli, config, "queue", "list", "--provider", "yahoo",
                                      "--state", "deferred")
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert lines[0].split() == ["QUEUE", "ID", "STATE", "TRIES", "PROVIDER", "NEXT", "ATTEMPT", "(UTC)",
                                "RECIPIENT", "/", "LAST", "REPLY"]
    listed = [line.split() for line in lines[1:] if "@yahoo.test" in line]
    assert sorted(fields[-1] for fields in listed) == sorted(recipients)
    assert {fields[1] for fields in listed} == {"deferred"} and {fields[3] for fields in listed} == {"yahoo"}
    none = await asyncio.to_thread(_gateway_cli, config, "queue", "list", "--provider", "gmail")
    assert none.stdout.strip() == "queue is empty"

    queue_id = rows[0].queue_id
    shown = await asyncio.to_thread(_gateway_cli, config, "queue", "show", queue_id.lower())
    assert shown.returncode == 0, shown.stderr
    assert f"queue id: {queue_id}" in shown.stdout
    assert "from <shop@example.com>, stream transactional, 3 recipient(s)" in shown.stdout
    for recipient in recipients:
        line = next(line for line in shown.stdout.splitlines() if line.strip().startswith(recipient))
        assert ", provider yahoo, " in line and " attempt(s)" in line
    assert "    last reply: " in shown.stdout
    unknown = await asyncio.to_thread(_gateway_cli, config, "queue", "show", "01NOSUCHQUEUEID0000000000X")
    assert unknown.returncode == 1 and "no message with queue id" in unknown.stdout


async def test_bounces_and_complaints_name_the_provider_of_their_delivery(
        start_gateway: StartGateway, tmp_path: Path) -> None:
    running = await start_gateway({"complaints": {"trusted_networks": ["127.0.0.98/32"]}})
    policies = tmp_path / "named-policies"
    policies.mkdir()
    shutil.copy(SHIPPED_BOUNCES, policies)
    (policies / "providers.toml").write_text(
        '[providers.default]\nretry_first = "1s"\n\n[providers.examplenet]\nmatch_mx = ["example.net"]\n')
    assert running.gateway.reload_policy(policies)
    await running.consent("news", "eve@example.net", "fay@example.net")
    for address in ("eve@example.net", "fay@example.net"):
        await asyncio.to_thread(send, running.port, [address], consent_message(campaign="one"))
    await running.sink.wait_for(2, timeout=15)
    verp = {m.rcpt_tos[0]: m.mail_from for m in running.sink.messages}
    complaints = metric("gateway_complaints_total", provider="examplenet")

    await asyncio.to_thread(send_from_outside, running.port, "", verp["eve@example.net"],
                            dsn(verp["eve@example.net"], "eve@example.net"))

    def complain() -> None:
        with smtplib.SMTP("127.0.0.1", running.port, source_address=("127.0.0.98", 0), timeout=10) as client:
            client.sendmail("", [f"fbl@{BOUNCE_DOMAIN}"], arf(verp["fay@example.net"], "fay@example.net"))

    await asyncio.to_thread(complain)
    await inbound_settled(running)
    rows = await running.gateway.db.read(lambda c: _feedback_providers(c))
    assert rows == {("eve@example.net", "bounce"): "examplenet", ("fay@example.net", "complaint"): "examplenet"}
    assert metric("gateway_complaints_total", provider="examplenet") == complaints + 1


async def _feedback_providers(conn: AsyncConnection) -> dict[tuple[str, str], str]:
    rows = await conn.execute(select(feedback_records.c.address, feedback_records.c.kind,
                                     feedback_records.c.provider))
    return {(row.address, row.kind): row.provider for row in rows}
