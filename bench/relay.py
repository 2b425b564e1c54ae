"""End-to-end relay benchmark: mailer -> gateway -> sink, all on loopback.

Starts a sink MX and a gateway as subprocesses (SQLite WAL, synchronous=FULL, the
shipped default policy), injects ``--messages`` messages of ``--size`` bytes over
``--concurrency`` parallel SMTP sessions (each session reuses its connection, as
mailing tools do), and waits until the gateway reports every one delivered. Each
copy is DKIM-signed (``--dkim rsa``, the default; ``ed25519``; or ``none`` to pass
unsigned) and gets its VERP return path and headers, as in production.

Prints one JSON object and a summary line:
    python -m bench.relay --messages 20000 --size 10240 --concurrency 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiosmtplib

from gateway.signing import keys

SINK_HOST = "127.0.1.7"
DELIVERED = re.compile(r'^gateway_deliveries_total\{result="delivered"\} ([0-9.e+]+)$', re.MULTILINE)


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def signing_config(root: Path, dkim: str) -> str:
    """bench.example signs with a fresh key, or ("none") passes unsigned."""
    tokens = f'[tokens]\ndefault_secret_file = "{root}/token.key"\n'
    if dkim == "none":
        return tokens + '[signing]\nunsigned = "pass"\n[[domains]]\nname = "bench.example"\n'
    key_file = root / f"bench.{dkim}.pem"
    keys.write_private_file(key_file, keys.private_pem(keys.generate_key(dkim)))
    return (tokens + f'[[domains]]\nname = "bench.example"\n'
            f'dkim = [{{ selector = "b1", algorithm = "{dkim}", key_file = "{key_file}" }}]\n')


def write_config(root: Path, smtp_port: int, admin_port: int, sink_port: int, dkim: str) -> Path:
    config = root / "bench.toml"
    config.write_text(signing_config(root, dkim) + f"""
[smtp]
listen = ["127.0.0.1:{smtp_port}"]
hostname = "gw.bench.example"
max_connections_per_ip = 1000
[storage]
url = "sqlite:///{root}/gateway.db"
[http]
admin_listen = "127.0.0.1:{admin_port}"
public_listen = "off"
[dns.mx_overrides]
"bench.example" = ["{SINK_HOST}:{sink_port}"]
[policy]
dir = "{Path.cwd() / 'policies'}"
""")
    return config


def message(n: int, size: int) -> bytes:
    head = (f"From: Bench <news@bench.example>\r\nTo: <user{n}@bench.example>\r\n"
            f"Subject: benchmark {n}\r\nMessage-ID: <bench-{n}@bench.example>\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n").encode()
    line = b"The quick brown fox jumps over the lazy dog, again and again and again.\r\n"
    body = (line * (size // len(line) + 1))[: max(size - len(head), 0)]
    return head + body.rstrip(b"\r\n") + b"\r\n"


async def inject(port: int, total: int, size: int, concurrency: int) -> list[float]:
    """Send ``total`` messages; return each one's accept latency (MAIL FROM to 250 after DATA)."""
    latencies: list[float] = []
    counter = iter(range(total))

    async def session() -> None:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=60)
        await client.connect()
        for n in counter:
            started = time.perf_counter()
            await client.sendmail("news@bench.example", [f"user{n}@bench.example"], message(n, size))
            latencies.append(time.perf_counter() - started)
        await client.quit()

    await asyncio.gather(*(session() for _ in range(concurrency)))
    return latencies


def delivered_count(admin_port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as reply:
        match = DELIVERED.search(reply.read().decode())
    return int(float(match.group(1))) if match else 0


def listening(host: str, port: int) -> bool:
    socket.create_connection((host, port), 1).close()
    return True


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"bench: timed out waiting for {what}")


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(len(ordered) * fraction), len(ordered) - 1)] if ordered else 0.0


def run(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    sink_port, smtp_port, admin_port = free_port(SINK_HOST), free_port("127.0.0.1"), free_port("127.0.0.1")
    config = write_config(root, smtp_port, admin_port, sink_port, args.dkim)
    python = sys.executable
    sink = subprocess.Popen([python, "-m", "gateway.sandbox.sink", "--listen", f"{SINK_HOST}:{sink_port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    subprocess.run([python, "-m", "gateway", "db", "upgrade", "-c", str(config)], check=True,
                   stdout=subprocess.DEVNULL)
    with (root / "gateway.log").open("wb") as log:
        gateway = subprocess.Popen([python, "-m", "gateway", "serve", "-c", str(config),
                                    "--log-level", "warning"], stdout=log, stderr=log)
    try:
        wait_until(lambda: listening("127.0.0.1", smtp_port), 30, "gateway")
        wait_until(lambda: listening(SINK_HOST, sink_port), 30, "sink")
        started = time.perf_counter()
        latencies = asyncio.run(inject(smtp_port, args.messages, args.size, args.concurrency))
        accepted_at = time.perf_counter()
        wait_until(lambda: delivered_count(admin_port) >= args.messages, args.timeout, "deliveries")
        delivered_at = time.perf_counter()
        rss = peak_rss_mib(gateway.pid)
    finally:
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(30)
        sink.send_signal(signal.SIGTERM)
        sink_out, _ = sink.communicate(timeout=30)
    return {
        "benchmark": "relay",
        "messages": args.messages, "size": args.size, "concurrency": args.concurrency,
        "dkim": args.dkim,
        "accepted_per_s": round(args.messages / (accepted_at - started), 1),
        "delivered_per_s_end_to_end": round(args.messages / (delivered_at - started), 1),
        "accept_latency_ms": {"p50": round(percentile(latencies, 0.5) * 1000, 2),
                              "p99": round(percentile(latencies, 0.99) * 1000, 2)},
        "gateway_peak_rss_mib": round(rss, 1),
        "sink": json.loads(sink_out.decode().strip().splitlines()[-1] or "{}") if sink_out else {},
        "storage": "sqlite WAL synchronous=FULL",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--size", type=int, default=10240)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for deliveries")
    parser.add_argument("--dkim", choices=["rsa", "ed25519", "none"], default="rsa",
                        help="sign with an RSA-2048 or Ed25519 key, or pass unsigned")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-relay-") as tmp:
        result = run(args, Path(tmp))
    print(json.dumps(result))
    print(f"relay: {result['accepted_per_s']} accepted/s, {result['delivered_per_s_end_to_end']} "
          f"delivered/s end to end, accept p50 {result['accept_latency_ms']['p50']} ms "
          f"p99 {result['accept_latency_ms']['p99']} ms, peak RSS {result['gateway_peak_rss_mib']} MiB "
          f"({args.messages} x {args.size} B, {args.concurrency} sessions, DKIM {args.dkim})")


if __name__ == "__main__":
    main()
