"""An in-process gateway on loopback, with a sink MX found through a loopback DNS server."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.config.loader import merge
from gateway.config.policy import Policy
from gateway.config.schema import Settings
from gateway.ingest.addresses import address_hash
from gateway.runtime import Gateway
from gateway.sandbox.dnsserver import LoopbackDnsServer
from gateway.sandbox.sink import SinkServer
from gateway.signing import keys
from gateway.storage import consent_store, queue_store
from gateway.storage.migrate import upgrade

SINK_IP = "127.0.1.5"
DNS_IP = "127.0.0.53"
SELECTOR = "s1"


@dataclass(frozen=True)
class DkimFiles:
    rsa: Path
    ed25519: Path
    records: dict[str, str]  # algorithm -> TXT value


@pytest.fixture(scope="session")
def dkim_files(tmp_path_factory: pytest.TempPathFactory) -> DkimFiles:
    """One RSA-2048 and one Ed25519 key for example.com, made once per test run."""
    directory = tmp_path_factory.mktemp("keys")
    paths, records = {}, {}
    for algorithm in ("rsa", "ed25519"):
        key = keys.generate_key(algorithm)
        paths[algorithm] = directory / f"example.com.{algorithm}.pem"
        keys.write_private_file(paths[algorithm], keys.private_pem(key))
        records[algorithm] = keys.txt_value(key)
    return DkimFiles(paths["rsa"], paths["ed25519"], records)


@dataclass
class Running:
    gateway: Gateway
    sink: SinkServer
    dns: LoopbackDnsServer

    @property
    def port(self) -> int:
        return self.gateway.listeners[0].port

    def port_of(self, kind: str) -> int:
        return next(listener.port for listener in self.gateway.listeners if listener.kind == kind)

    async def consent(self, list_key: str, *addresses: str, frequency: str | None = None,
                      status: str = "confirmed", double_opt_in: bool = False) -> None:
        """Create the marketing list if needed and record consent for each address."""
        now = datetime.now(UTC)

        async def write(conn: AsyncConnection) -> None:
            await consent_store.add_list(conn, consent_store.ListRecord(
                list_key, "marketing", double_opt_in, {"en": list_key.title()}, {}, {}, now))
            for address in addresses:
                contact = await consent_store.contact_id(conn, address, address_hash(address), now)
                await consent_store.record_consent(conn, consent_store.ConsentChange(
                    contact, address_hash(address), list_key, status, "api", now, frequency=frequency,
                    proof="test fixture"))

        await self.gateway.db.write(write)

    async def wait_for_event(self, address: str, kind: str) -> list[queue_store.TraceRow]:
        """`gateway trace ADDRESS` once it shows an event of ``kind`` (waits up to 10 s)."""
        rows: list[queue_store.TraceRow] = []
        for _ in range(100):
            rows = await self.gateway.db.read(lambda c: queue_store.trace(c, address))
            if any(row.kind == kind for row in rows):
                return rows
            await asyncio.sleep(0.1)
        raise AssertionError(f"no {kind} event for {address}: {rows}")

    async def suppress(self, address: str, reason: str, scope: str = "global", scope_key: str = "") -> None:
        record = consent_store.SuppressionRecord(address, address_hash(address), scope, scope_key, reason,
                                                 "test", datetime.now(UTC))
        await self.gateway.db.write(lambda conn: consent_store.add_suppressions(conn, [record]))


StartGateway = Callable[..., Any]


@pytest.fixture
async def start_gateway(tmp_path: Path, dkim_files: DkimFiles) -> AsyncIterator[StartGateway]:
    """Start a gateway; keyword ``settings`` overlays the defaults below, ``policy`` the retry policy.

    example.com signs with an RSA key (selector s1) published in the loopback DNS.
    """
    started: list[Running] = []
    sink = SinkServer(SINK_IP, 0)
    await sink.start()
    dns = LoopbackDnsServer({("example.net", "MX"): ["10 mx.example.net."],
                             ("mx.example.net", "A"): [SINK_IP],
                             (f"{SELECTOR}._domainkey.example.com", "TXT"): [dkim_files.records["rsa"]],
                             ("e1._domainkey.example.com", "TXT"): [dkim_files.records["ed25519"]]},
                            host=DNS_IP, port=0)
    await dns.start()

    async def start(settings: dict[str, Any] | None = None,
                    policy: dict[str, Any] | None = None) -> Running:
        base: dict[str, Any] = {
            "smtp": {"listen": ["127.0.0.1:0"], "hostname": "gw.example.com"},
            "storage": {"url": f"sqlite:///{tmp_path}/gateway.db", "node_name": "test-node"},
            "http": {"admin_listen": None, "public_listen": None},
            "dns": {"nameservers": [f"{DNS_IP}:{dns.port}"], "timeout": "2s", "mx_port": sink.port},
            "bounce": {"domain": "bounces.example.com"},
            "domains": [{"name": "example.com", "dkim": [
                {"selector": SELECTOR, "algorithm": "rsa", "key_file": str(dkim_files.rsa)}]}],
            "tokens": {"default_secret_file": str(tmp_path / "token.key")},
            "pools": [{"name": "default", "ips": [{"address": "127.0.0.10", "helo": "mta1.example.com"}]}],
        }
        config = Settings.model_validate(merge(base, settings or {}))
        profile = {"retry_first": "1s", "retry_max": "2s", "idle_close": "1s", **(policy or {})}
        await upgrade(config.storage.url)
        gateway = Gateway(config, Policy.model_validate({"providers": {"default": profile}}))
        await gateway.start()
        running = Running(gateway, sink, dns)
        started.append(running)
        return running

    yield start
    for running in started:
        await stop_or_explain(running.gateway.stop(), "gateway.stop()")
    await stop_or_explain(dns.stop(), "dns.stop()")
    await stop_or_explain(sink.stop(), "sink.stop()")


async def stop_or_explain(stopping: Coroutine[Any, Any, None], what: str, seconds: float = 60) -> None:
    """A teardown that hangs fails with where every task waits instead of stalling the suite."""
    task = asyncio.create_task(stopping, name=what)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if done:
        return task.result()
    stacks = io.StringIO()
    for other in asyncio.all_tasks():
        print(f"{other.get_name()}: {' <- '.join(_awaiting(other.get_coro()))}", file=stacks)
    task.cancel()
    pytest.fail(f"{what} did not finish within {seconds:.0f} s; tasks:\n{stacks.getvalue()}")


def _awaiting(coro: Any) -> list[str]:
    """Where a task waits, through every coroutine and async generator it awaits."""
    chain = []
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "ag_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None:
            chain.append(f"{frame.f_code.co_qualname} ({frame.f_code.co_filename.rsplit('/', 2)[-1]}:{frame.f_lineno})")
        coro = (getattr(coro, "cr_await", None) or getattr(coro, "ag_await", None)
                or getattr(coro, "gi_yieldfrom", None))
    return chain
