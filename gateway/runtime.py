"""Wiring: builds every part from the settings and runs them in one event loop."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket
from collections.abc import Sequence
from pathlib import Path

from gateway import metrics
from gateway.config.loader import ConfigError, load_settings
from gateway.config.policy import Policy, ProviderProfile, load_policy
from gateway.config.schema import Settings
from gateway.delivery.agent import DeliveryAgent, SessionLimits, Source
from gateway.dns.resolver import MxResolver
from gateway.feedback.inbound import InboundProcessor
from gateway.ingest.gate import Gate
from gateway.ingest.rules import DEFAULT_ACTIONS, Action
from gateway.queue.outgoing import CopyMaker
from gateway.queue.scheduler import Scheduler
from gateway.queue.spool import BodyCache, Spool
from gateway.records import AttemptResult, ClaimedDelivery
from gateway.rewrite.copies import CopyRules
from gateway.signing.keyring import KeyRing
from gateway.signing.token_keys import read_api_token, token_codec
from gateway.smtp.handler import IntakeHandler, IntakePolicy
from gateway.smtp.limits import AuthLockout, ConnectionCounter
from gateway.smtp.server import Listener, start_listeners
from gateway.storage.database import Database
from gateway.storage.migrate import current_revision_of, head_revision
from gateway.web.admin import EmbeddedServer, admin_app, embedded_server
from gateway.web.api import ApiContext, admin_api
from gateway.web.public import public_app

log = logging.getLogger(__name__)


class SchemaOutOfDate(RuntimeError):
    """The database is not at the schema this version needs; `gateway db upgrade` fixes it."""


def session_limits(profile: ProviderProfile) -> SessionLimits:
    return SessionLimits(
        connection_limit=profile.connection_limit,
        max_deliveries_per_connection=profile.max_deliveries_per_connection,
        connect_timeout=profile.connect_timeout, command_timeout=profile.command_timeout,
        idle_close=profile.idle_close, tls=profile.tls)


def sources_from(settings: Settings) -> list[Source]:
    """Send from the pool named "default" (or the first pool); none = the OS's choice."""
    pools = {pool.name: pool for pool in settings.pools}
    pool = pools.get("default") or (settings.pools[0] if settings.pools else None)
    if pool is None:
        return [Source(None, settings.smtp.hostname)]
    return [Source(str(ip.address), ip.helo) for ip in pool.ips]


def resolver_from(settings: Settings) -> MxResolver:
    return MxResolver(
        nameservers=[(ns.host, ns.port) for ns in settings.dns.nameservers],
        overrides={domain: [(e.host, e.port) for e in endpoints]
                   for domain, endpoints in settings.dns.mx_overrides.items()},
        timeout=settings.dns.timeout, mx_port=settings.dns.mx_port)


class Gateway:
    def __init__(self, settings: Settings, policy: Policy, *, node: str | None = None) -> None:
        self.settings = settings
        self.policy = policy
        self.node = node or settings.storage.node_name or socket.gethostname()
        self.db = Database(settings.storage.url)
        bodies = BodyCache()
        self.agent = DeliveryAgent(resolver_from(settings), sources_from(settings),
                                   session_limits(policy.default))
        self.scheduler = Scheduler(self.db, bodies, self._deliver, retry=policy.default.retry,
                                   node=self.node)
        self.spool = Spool(self.db, bodies, on_stored=self.scheduler.wake)
        self.keyring = KeyRing.load(settings.domains)
        codec = token_codec(settings.tokens)
        self.inbound = InboundProcessor(self.db, codec, settings.bounce.domain)
        self.copies = CopyMaker(
            self.keyring, codec,
            CopyRules(public_url=settings.http.public_url, bounce_domain=settings.bounce.domain,
                      verp=settings.bounce.verp,
                      transactional_list_unsubscribe=settings.headers.transactional_list_unsubscribe),
            pass_unsigned=settings.signing.unsigned == "pass")
        consent = settings.consent
        actions: dict[str, Action] = {**DEFAULT_ACTIONS}
        for reason, action in consent.actions.items():
            actions[reason] = action
        self.gate = Gate(self.db, actions=actions,
                         role_local_parts=frozenset(name.lower() for name in consent.role_accounts))
        self.handler = IntakeHandler(
            IntakePolicy.from_settings(settings, lambda domain: bool(self.keyring.keys_for(domain))),
            self.spool, AuthLockout(settings.smtp.max_auth_failures, settings.smtp.auth_lockout),
            gate=self.gate if consent.enabled else None)
        self.connections = ConnectionCounter(settings.smtp.max_connections,
                                             settings.smtp.max_connections_per_ip)
        self.listeners: list[Listener] = []
        self.admin: EmbeddedServer | None = None
        self.public: EmbeddedServer | None = None
        self._inbound_task: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.ready = False
        self._stopped = False

    async def _deliver(self, claim: ClaimedDelivery, stored: bytes) -> AttemptResult:
        copy = await self.copies.make(claim, stored)
        if isinstance(copy, AttemptResult):
            return copy
        return await self.agent.deliver(copy.mail_from, claim.recipient, claim.domain, copy.head,
                                        copy.body, smtputf8=copy.smtputf8)

    async def start(self) -> None:
        await self._check_schema()
        await self.db.start()
        await self.scheduler.prepare()
        self._tasks.append(asyncio.create_task(self.scheduler.run(), name="scheduler"))
        self._inbound_task = asyncio.create_task(self.inbound.run(), name="inbound")
        if self.settings.http.admin_listen is not None:
            api = None
            if self.settings.http.api_token_file is not None:
                api = admin_api(ApiContext(
                    self.db, self.copies.codec, self.settings.http.public_url,
                    read_api_token(self.settings.http.api_token_file),
                    role_local_parts=frozenset(name.lower() for name in self.settings.consent.role_accounts)))
            self.admin = embedded_server(admin_app(lambda: self.ready, api=api),
                                         self.settings.http.admin_listen)
            self._tasks.append(asyncio.create_task(self.admin.serve(), name="admin-http"))
        if self.settings.http.public_listen is not None:
            self.public = embedded_server(public_app(self.db, self.copies.codec),
                                          self.settings.http.public_listen)
            self._tasks.append(asyncio.create_task(self.public.serve(), name="public-http"))
        self.listeners = await start_listeners(self.settings.smtp, self.handler, self.connections)
        self.ready = True
        for line in self.keyring.describe():
            log.info("DKIM signing for %s", line)
        if not self.settings.http.public_url.startswith("https://"):
            log.warning("http.public_url is %s: receivers expect https one-click links (RFC 8058)",
                        self.settings.http.public_url)
        log.info("gateway %s ready: SMTP on %s", self.node,
                 ", ".join(f"{listener.endpoint.host}:{listener.port}" for listener in self.listeners))

    async def _check_schema(self) -> None:
        current = await current_revision_of(self.settings.storage.url)
        head = head_revision()
        if current != head:
            raise SchemaOutOfDate(f"database schema is at {current or 'nothing'}, this version "
                                  f"needs {head}: run `gateway db upgrade -c CONFIG` first")

    def reload_policy(self, directory: Path) -> bool:
        """Swap in edited policy files; a bad edit is refused and the running policy stays."""
        try:
            policy = load_policy(directory)
        except ConfigError as exc:
            metrics.CONFIG_RELOADS.labels("failure").inc()
            log.error("policy reload refused, keeping the running policy:\n%s", exc)
            return False
        self.policy = policy
        self.agent.update_limits(session_limits(policy.default))
        self.scheduler.retry = policy.default.retry
        metrics.CONFIG_RELOADS.labels("success").inc()
        log.info("policy reloaded from %s", directory)
        return True

    async def stop(self) -> None:
        """Stop accepting, finish or release in-flight deliveries, close; safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        self.ready = False
        for listener in self.listeners:
            listener.server.close()
        await self.scheduler.stop()
        if self._inbound_task is not None:
            self._inbound_task.cancel()
            await asyncio.gather(self._inbound_task, return_exceptions=True)
        for server in (self.admin, self.public):
            if server is not None:
                server.should_exit = True
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.agent.close()
        await self.db.close()
        log.info("gateway %s stopped", self.node)


async def serve(config_paths: Sequence[Path]) -> None:
    """Run until SIGTERM/SIGINT; SIGHUP reloads the policy files."""
    settings = load_settings(config_paths)
    policy = load_policy(settings.policy.dir)
    gateway = Gateway(settings, policy)
    try:
        await gateway.start()
    except BaseException:
        await gateway.stop()
        raise
    # Everything loaded so far lives as long as the process: take it out of the collector's
    # reach, so that a full collection walks only what requests create (40 ms -> a few ms).
    gc.collect()
    gc.freeze()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: gateway.reload_policy(settings.policy.dir))
    try:
        await stop.wait()
    finally:
        await gateway.stop()
