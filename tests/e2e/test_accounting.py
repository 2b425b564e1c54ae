"""The counters add up (issue 9): after a mixed run in one gateway process,

    recipients_received = deliveries{delivered} + deliveries{bounced} + deliveries{expired}
                          + sum(recipients_suppressed) + queue{queued, deferred, held}

as scraped from its /metrics. The run has every way a recipient can end: delivered, bounced
(5xx), suppressed at intake (one of two recipients), a waiting copy dropped after a hard
bounce of the same address, expired (a provider that only defers, with a short max age), held
(a paused campaign) and still deferred.
"""

from __future__ import annotations

import asyncio
import shutil
import smtplib
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.ingest.addresses import address_hash
from gateway.sandbox.sink import ReplyScript, SinkServer
from gateway.storage import campaign_store, consent_store
from gateway.storage.database import Database
from gateway.storage.migrate import upgrade
from tests.e2e.conftest import DkimFiles
from tests.e2e.test_kill import _free_port, _start, _wait_listening

pytestmark = pytest.mark.slow

SINK_IP = "127.0.1.7"
TRY_LATER = "451 4.2.1 mailbox busy, try later"


def _config(tmp_path: Path, smtp_port: int, admin_port: int, sink_port: int, dkim_key: Path) -> Path:
    policy = tmp_path / "policies"
    policy.mkdir()
    (policy / "providers.toml").write_text(
        '[providers.default]\nretry_first = "1s"\nretry_max = "2s"\nidle_close = "1s"\n'
        '[providers.slow]\nmatch_domains = ["slow.example"]\nmax_queue_age = "2s"\n')
    shutil.copy(Path(__file__).parents[2] / "policies" / "bounces.toml", policy)
    config = tmp_path / "gateway.toml"
    config.write_text(f"""
[smtp]
listen = ["127.0.0.1:{smtp_port}"]
hostname = "gw.example.com"
[storage]
url = "sqlite:///{tmp_path}/gateway.db"
node_name = "accounting-test"
[http]
admin_listen = "127.0.0.1:{admin_port}"
public_listen = "off"
[dns.mx_overrides]
"example.net" = ["{SINK_IP}:{sink_port}"]
"slow.example" = ["{SINK_IP}:{sink_port}"]
[policy]
dir = "{policy}"
[tokens]
default_secret_file = "{tmp_path}/token.key"
[[domains]]
name = "example.com"
dkim = [{{ selector = "s1", key_file = "{dkim_key}" }}]
""")
    return config


async def _prepare(url: str) -> None:
    """Consent for one of the two marketing recipients, and the paused campaign."""
    now = datetime.now(UTC)

    async def write(conn: AsyncConnection) -> None:
        await consent_store.add_list(conn, consent_store.ListRecord(
            "news", "marketing", False, {"en": "News"}, {}, {}, now))
        contact = await consent_store.contact_id(conn, "ok2@example.net", address_hash("ok2@example.net"), now)
        await consent_store.record_consent(conn, consent_store.ConsentChange(
            contact, address_hash("ok2@example.net"), "news", "confirmed", "api", now, proof="test"))
        await campaign_store.pause_campaign(conn, "paused", reason="manual", detail="test", by="cli", now=now)

    db = Database(url)
    await db.start()
    try:
        await db.write(write)
    finally:
        await db.close()


def _send(port: int, rcpts: list[str], *, stream: str = "transactional", campaign: str = "") -> None:
    headers = ["From: Shop <news@example.com>", "Subject: hello", f"X-Gateway-Stream: {stream}"]
    headers += ["X-Gateway-List: news"] if stream == "marketing" else []
    headers += [f"X-Gateway-Campaign: {campaign}"] if campaign else []
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.sendmail("news@example.com", rcpts, "\r\n".join([*headers, "", "Hello", ""]))


def _scrape(admin_port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def _terms(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> dict[str, float]:
    def one(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    return {
        "received": one("gateway_recipients_received_total"),
        "delivered": one("gateway_deliveries_total", result="delivered"),
        "bounced": one("gateway_deliveries_total", result="bounced"),
        "expired": one("gateway_deliveries_total", result="expired"),
        "suppressed": sum(value for (name, _), value in samples.items()
                          if name == "gateway_recipients_suppressed_total"),
        "queued": one("gateway_queue_deliveries", state="queued"),
        "deferred": one("gateway_queue_deliveries", state="deferred"),
        "held": one("gateway_queue_deliveries", state="held"),
        "suppressed_hard": one("gateway_recipients_suppressed_total", reason="hard-bounce"),
        "suppressed_consent": one("gateway_recipients_suppressed_total", reason="no-consent"),
    }


EXPECTED = {"received": 8, "delivered": 2, "bounced": 1, "expired": 1, "suppressed": 2, "queued": 0,
            "deferred": 1, "held": 1, "suppressed_hard": 1, "suppressed_consent": 1}


async def test_counters_add_up_after_a_mixed_run(tmp_path: Path, dkim_files: DkimFiles) -> None:
    script = (ReplyScript().on_rcpt("dead@example.net", "550 5.1.1 <dead@example.net>: user unknown")
              .on_rcpt("exp@slow.example", TRY_LATER).on_rcpt("defer@example.net", TRY_LATER))
    sink = SinkServer(SINK_IP, 0, script=script)
    await sink.start()
    smtp_port, admin_port = _free_port("127.0.0.1"), _free_port("127.0.0.1")
    config = _config(tmp_path, smtp_port, admin_port, sink.port, dkim_files.rsa)
    log = tmp_path / "gateway.log"
    url = f"sqlite:///{tmp_path}/gateway.db"
    await upgrade(url)
    await _prepare(url)
    process = _start(config, log)
    try:
        await asyncio.to_thread(_wait_listening, smtp_port, process, log)
        sends = [
            (["ok1@example.net"], {}),  # delivered
            (["ok2@example.net", "nocon@example.net"], {"stream": "marketing", "campaign": "spring"}),
            (["dead@example.net"], {"campaign": "paused"}),  # held, then dropped by the hard bounce
            (["held@example.net"], {"campaign": "paused"}),  # held
            (["dead@example.net"], {"campaign": "live"}),  # bounced (550), suppresses the address
            (["exp@slow.example"], {}),  # deferred until the provider's 2 s max age: expired
            (["defer@example.net"], {}),  # deferred, still waiting at the end
        ]
        for rcpts, options in sends:
            await asyncio.to_thread(_send, smtp_port, rcpts, **options)
        terms: dict[str, float] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the queue gauge is refreshed every 5 s
            terms = _terms(await asyncio.to_thread(_scrape, admin_port))
            if terms == EXPECTED:
                break
            await asyncio.sleep(0.5)
        assert terms == EXPECTED, log.read_text()[-3000:]
        assert terms["received"] == (terms["delivered"] + terms["bounced"] + terms["expired"]
                                     + terms["suppressed"] + terms["queued"] + terms["deferred"]
                                     + terms["held"])
    finally:
        process.terminate()
        await asyncio.to_thread(process.wait, 20)
        await sink.stop()
    assert sorted(m.rcpt_tos[0] for m in sink.messages) == ["ok1@example.net", "ok2@example.net"]
