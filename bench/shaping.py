"""Does each provider get its configured rate, and never more? (in-process gateway, loopback)

Six fake providers listen on 127.0.1.31-36 behind a loopback DNS server; the gateway sends
from the pool 127.0.0.10-13. Four providers have a binding rate (per source IP, or for the
whole pool with ``provider_max_message_rate``), one is bound by connections only (slow
answers), one is unlimited. Messages are split so that the rate-bound providers finish at
about the same time. For each provider the bench reports the measured delivered/s (after
the first second, so the buckets' initial burst does not count), the configured limit, the
ratio, and the highest count seen in any one-second window against the limit plus burst;
and the database writes per delivered message (statements, and rows: an executemany counts
each row), which postponements that come back too early inflate.

Prints one JSON object and a summary line:
    python -m bench.shaping                     # 5,000 messages, ~25 s
    python -m bench.shaping --messages 50000    # ~5 min
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import platform
import smtplib
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

from gateway.config.policy import Policy
from gateway.config.schema import Settings
from gateway.runtime import Gateway
from gateway.sandbox.dnsserver import LoopbackDnsServer
from gateway.sandbox.sink import ReceivedMessage, ReplyScript, SinkServer
from gateway.storage.migrate import upgrade


class WriteCounter:
    """Counts write statements and the rows they carry (an executemany counts each row)."""

    def __init__(self) -> None:
        self.statements = 0
        self.rows = 0

    def __call__(self, conn: Any, cursor: Any, statement: str, parameters: Any, context: Any,
                 executemany: bool) -> None:
        if statement.lstrip()[:6].upper() in ("INSERT", "UPDATE", "DELETE"):
            self.statements += 1
            self.rows += len(parameters) if executemany else 1


POOL = ("127.0.0.10", "127.0.0.11", "127.0.0.12", "127.0.0.13")


@dataclass(frozen=True)
class FakeProvider:
    name: str
    address: str
    mx: str
    share: float  # of all messages
    profile: dict[str, Any]
    limit_per_s: float | None  # what the profile allows in all (None: not rate-bound)
    burst: float = 0.0  # how far above the rate one second may go (initial bucket contents)
    delay: float = 0.0  # sink answers DATA this late


PROVIDERS = (
    FakeProvider("gmail", "127.0.1.31", "gmail-smtp-in.l.google.com", 0.24,
                 {"match_mx": ["google.com"], "max_message_rate": "15/s", "connection_limit": 3}, 60.0, 60.0),
    FakeProvider("microsoft", "127.0.1.32", "x.mail.protection.outlook.com", 0.16,
                 {"match_mx": ["protection.outlook.com"], "provider_max_message_rate": "40/s",
                  "connection_limit": 3}, 40.0, 40.0),
    FakeProvider("yahoo", "127.0.1.33", "mta5.am0.yahoodns.net", 0.08,
                 {"match_mx": ["yahoodns.net"], "max_message_rate": "5/s", "connection_limit": 2},
                 20.0, 20.0),
    FakeProvider("apple", "127.0.1.34", "mx01.mail.icloud.com", 0.04,
                 {"match_mx": ["icloud.com"], "provider_max_message_rate": "10/s", "connection_limit": 2},
                 10.0, 10.0),
    FakeProvider("gmx", "127.0.1.35", "mx00.emig.gmx.net", 0.08,
                 {"match_mx": ["gmx.net"], "connection_limit": 1}, None, delay=0.02),
    FakeProvider("default", "127.0.1.36", "mx.other.example", 0.40, {}, None),
)


def _policy() -> Policy:
    profiles: dict[str, Any] = {"default": {"connection_limit": 4, "retry_first": "1s", "retry_max": "2s",
                                            "idle_close": "2s"}}
    profiles.update({p.name: p.profile for p in PROVIDERS if p.name != "default"})
    return Policy.model_validate({"providers": profiles})


async def _run(total: int, root: Path) -> dict[str, Any]:
    first = SinkServer(PROVIDERS[0].address, 0, keep_messages=True)
    await first.start()
    sinks = {PROVIDERS[0].name: first}
    for provider in PROVIDERS[1:]:
        script = ReplyScript().delay("data", provider.delay) if provider.delay else None
        sinks[provider.name] = SinkServer(provider.address, first.port, script=script, keep_messages=True)
        await sinks[provider.name].start()
    records: dict[tuple[str, str], list[str]] = {}
    for provider in PROVIDERS:
        records[(f"{provider.name}.bench", "MX")] = [f"10 {provider.mx}."]
        records[(provider.mx, "A")] = [provider.address]
    dns = LoopbackDnsServer(records, host="127.0.0.53", port=0)
    await dns.start()
    (root / "policies").mkdir()
    (root / "policies" / "bounces.toml").touch()
    settings = Settings.model_validate({
        "smtp": {"listen": ["127.0.0.1:0"], "hostname": "gw.example.com"},
        "storage": {"url": f"sqlite:///{root}/gateway.db", "node_name": "bench"},
        "http": {"admin_listen": "off", "public_listen": "off"},
        "dns": {"nameservers": [f"127.0.0.53:{dns.port}"], "mx_port": first.port},
        "signing": {"unsigned": "pass"},
        "tokens": {"default_secret_file": str(root / "token.key")},
        "policy": {"dir": str(root / "policies")},
        "pools": [{"name": "default", "ips": [{"address": ip, "helo": f"mta{n}.example.com"}
                                              for n, ip in enumerate(POOL)]}],
    })
    await upgrade(settings.storage.url)
    gateway = Gateway(settings, _policy())
    await gateway.start()
    writes = WriteCounter()
    event.listen(Engine, "before_cursor_execute", writes)
    counts = {p.name: max(1, round(total * p.share)) for p in PROVIDERS}
    started = time.time()
    try:
        await asyncio.to_thread(_submit, gateway.listeners[0].port, counts)
        accepted = time.time()
        for name, sink in sinks.items():
            await sink.wait_for(counts[name], timeout=60 + total / 20)
    finally:
        event.remove(Engine, "before_cursor_execute", writes)
        await gateway.stop()
        await dns.stop()
        for sink in sinks.values():
            await sink.stop()
    report = {p.name: _measure(p, sinks[p.name], counts[p.name]) for p in PROVIDERS}
    delivered = sum(r["delivered"] for r in report.values())
    return {"bench": "shaping", "messages": sum(counts.values()), "machine": platform.processor() or
            platform.machine(), "python": platform.python_version(),
            "submit_s": round(accepted - started, 2), "total_s": round(time.time() - started, 2),
            "db_write_statements_per_delivered": round(writes.statements / delivered, 3),
            "db_rows_written_per_delivered": round(writes.rows / delivered, 3),
            "providers": report}


def _submit(port: int, counts: dict[str, int]) -> None:
    body = b"From: <shop@example.com>\r\nSubject: bench\r\nX-Gateway-Stream: transactional\r\n\r\nhi\r\n"
    recipients = [f"u{n}@{name}.bench" for name, count in counts.items() for n in range(count)]
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        for start in range(0, len(recipients), 100):
            client.sendmail("shop@example.com", recipients[start:start + 100], body)


def _measure(provider: FakeProvider, sink: SinkServer, expected: int) -> dict[str, Any]:
    times = sorted(m.received_at for m in sink.messages)
    steady = [t for t in times if t >= times[0] + 1.0]
    span = (steady[-1] - steady[0]) if len(steady) > 1 else 0.0
    rate = (len(steady) - 1) / span if span > 0 else 0.0
    result: dict[str, Any] = {
        "delivered": len(times), "expected": expected, "delivered_per_s": round(rate, 2),
        "limit_per_s": provider.limit_per_s, "max_in_1s": _max_in_window(times, 1.0),
        "max_connections_per_ip": max(sink.max_concurrent_by_peer.values(), default=0),
        "connection_limit_per_ip": provider.profile.get("connection_limit", 4),
        "source_ips": dict(sorted(_by_ip(sink.messages).items())),
    }
    if provider.limit_per_s:
        result["ratio"] = round(rate / provider.limit_per_s, 3)
        result["exceeded"] = (result["max_in_1s"] > provider.limit_per_s + provider.burst
                              or rate > provider.limit_per_s * 1.01)
    result["exceeded_connections"] = result["max_connections_per_ip"] > result["connection_limit_per_ip"]
    return result


def _by_ip(messages: list[ReceivedMessage]) -> dict[str, int]:
    found: dict[str, int] = defaultdict(int)
    for message in messages:
        found[message.peer_ip] += 1
    return found


def _max_in_window(times: list[float], window: float) -> int:
    best, first = 0, 0
    for last, at in enumerate(times):
        while at - times[first] >= window:
            first += 1
        best = max(best, last - first + 1)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=5000, help="messages in all (default 5000)")
    args = parser.parse_args()
    if args.messages < 100:
        parser.error("--messages must be at least 100")
    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="bench-shaping-") as directory:
        result = asyncio.run(_run(args.messages, Path(directory)))
    print(json.dumps(result))
    bound = [f"{name} {r['delivered_per_s']}/{r['limit_per_s']:g} ({r['ratio']:.0%})"
             for name, r in result["providers"].items() if r["limit_per_s"]]
    broken = [name for name, r in result["providers"].items()
              if r.get("exceeded") or r["exceeded_connections"]]
    print(f"shaping: {result['messages']} messages in {result['total_s']}s; delivered/s vs limit: "
          f"{', '.join(bound)}; limits exceeded: {', '.join(broken) or 'none'}; DB writes per delivered "
          f"message: {result['db_write_statements_per_delivered']} statements, "
          f"{result['db_rows_written_per_delivered']} rows")


if __name__ == "__main__":
    main()
