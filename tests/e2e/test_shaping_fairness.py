"""Fairness under shaping, end to end: transactional mail is not stuck behind a campaign to a
rate-limited provider, and one unreachable site (a Microsoft 365 tenant) does not stop the
provider's other sites.

A fake 'apple' (MX under icloud.com) allows 50 messages a second over the pool; a fake
'microsoft' hosts two tenants: tenant-a's MX address has nobody listening (connection
refused), tenant-b's is a sink.
"""

from __future__ import annotations

import asyncio
import smtplib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.config.policy import Policy
from gateway.config.schema import Settings
from gateway.ingest.addresses import address_hash
from gateway.runtime import Gateway
from gateway.sandbox.dnsserver import LoopbackDnsServer
from gateway.sandbox.sink import SinkServer
from gateway.storage import consent_store
from gateway.storage.migrate import upgrade

POOL = ["127.0.0.10", "127.0.0.11"]
APPLE_RATE = 50
CAMPAIGN = 800  # 16 s at apple's rate: far more than its lanes may hold (the rest is postponed)
DOMAINS = {"icloud.test": ("mx01.mail.icloud.com", "127.0.1.61"),
           "tenant-a.test": ("tenant-a.mail.protection.outlook.com", "127.0.1.62"),  # nobody listens
           "tenant-b.test": ("tenant-b.mail.protection.outlook.com", "127.0.1.63")}


@dataclass
class World:
    gateway: Gateway
    apple: SinkServer
    tenant_b: SinkServer

    @property
    def port(self) -> int:
        return self.gateway.listeners[0].port


def _policy() -> Policy:
    return Policy.model_validate({"providers": {
        "default": {"retry_first": "1s", "retry_max": "2s", "idle_close": "1s", "connect_timeout": "2s"},
        "apple": {"match_mx": ["icloud.com"], "provider_max_message_rate": f"{APPLE_RATE}/s",
                  "connection_limit": 2, "max_deliveries_per_connection": 20},
        "microsoft": {"match_mx": ["protection.outlook.com"], "provider_pause": "30s",
                      "retry_first": "30s", "retry_max": "30s"},
    }})


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    apple = SinkServer("127.0.1.61", 0, keep_messages=True)
    await apple.start()
    tenant_b = SinkServer("127.0.1.63", apple.port, keep_messages=True)
    await tenant_b.start()
    records: dict[tuple[str, str], list[str]] = {}
    for domain, (mx, address) in DOMAINS.items():
        records[(domain, "MX")] = [f"10 {mx}."]
        records[(mx, "A")] = [address]
    dns = LoopbackDnsServer(records, host="127.0.0.53", port=0)
    await dns.start()
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "bounces.toml").touch()
    settings = Settings.model_validate({
        "smtp": {"listen": ["127.0.0.1:0"], "hostname": "gw.example.com"},
        "storage": {"url": f"sqlite:///{tmp_path}/gateway.db", "node_name": "fairness"},
        "http": {"admin_listen": "off", "public_listen": "off"},
        "dns": {"nameservers": [f"127.0.0.53:{dns.port}"], "timeout": "2s", "mx_port": apple.port},
        "signing": {"unsigned": "pass"},
        "tokens": {"default_secret_file": str(tmp_path / "token.key")},
        "policy": {"dir": str(tmp_path / "policies")},
        "pools": [{"name": "default", "ips": [{"address": ip, "helo": f"mta{n}.example.com"}
                                              for n, ip in enumerate(POOL)]}],
    })
    await upgrade(settings.storage.url)
    gateway = Gateway(settings, _policy())
    await gateway.start()
    yield World(gateway, apple, tenant_b)
    await gateway.stop()
    await dns.stop()
    for sink in (apple, tenant_b):
        await sink.stop()


async def _subscribe(gateway: Gateway, list_key: str, addresses: list[str]) -> None:
    now = datetime.now(UTC)

    async def write(conn: AsyncConnection) -> None:
        await consent_store.add_list(conn, consent_store.ListRecord(
            list_key, "marketing", False, {"en": "News"}, {}, {}, now))
        for address in addresses:
            contact = await consent_store.contact_id(conn, address, address_hash(address), now)
            await consent_store.record_consent(conn, consent_store.ConsentChange(
                contact, address_hash(address), list_key, "confirmed", "api", now, proof="test fixture"))

    await gateway.db.write(write)


def _send(port: int, recipients: list[str], stream: str) -> None:
    listed = "X-Gateway-List: news\r\n" if stream == "marketing" else ""
    message = (f"From: <shop@example.com>\r\nSubject: fairness\r\nX-Gateway-Stream: {stream}\r\n"
               f"{listed}\r\nhello\r\n").encode()
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        for start in range(0, len(recipients), 100):
            client.sendmail("shop@example.com", recipients[start:start + 100], message)


async def test_transactional_mail_overtakes_a_campaign_to_a_rate_limited_provider(world: World) -> None:
    campaign = [f"fan{n}@icloud.test" for n in range(CAMPAIGN)]
    await _subscribe(world.gateway, "news", campaign)
    await asyncio.to_thread(_send, world.port, campaign, "marketing")
    await world.apple.wait_for(APPLE_RATE * 2, timeout=20)  # the campaign is flowing at the rate
    sent_at = time.time()
    await asyncio.to_thread(_send, world.port, ["buyer@icloud.test"], "transactional")
    receipt = await _arrival(world.apple, "buyer@icloud.test", within=20)
    done = len(world.apple.messages)
    # Bounded: a claim round, a place at the head of its lane and one rate token,
    # not the several seconds of campaign mail already waiting in the lanes.
    assert receipt - sent_at < 3.0, f"transactional mail took {receipt - sent_at:.1f}s"
    assert done < CAMPAIGN, "the campaign was over before the check meant anything"
    await world.apple.wait_for(CAMPAIGN + 1, timeout=40)


async def test_one_failing_tenant_does_not_pause_the_other(world: World) -> None:
    await asyncio.to_thread(_send, world.port, [f"user{n}@tenant-a.test" for n in range(5)], "transactional")
    await asyncio.sleep(1.0)  # tenant-a's MX refuses the connection: its site pauses for 30 s
    sent_at = time.time()
    await asyncio.to_thread(_send, world.port, [f"user{n}@tenant-b.test" for n in range(20)], "transactional")
    await world.tenant_b.wait_for(20, timeout=10)
    assert time.time() - sent_at < 5.0  # not held for microsoft's 30 s provider_pause


async def _arrival(sink: SinkServer, recipient: str, within: float) -> float:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        for message in sink.messages:
            if recipient in message.rcpt_tos:
                return message.received_at
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{recipient} not delivered within {within}s")
