"""Wiring: builds every part from the settings and runs them in one event loop."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import time
from collections.abc import Sequence
from datetime import timedelta
from functools import partial
from pathlib import Path

from gateway import metrics
from gateway.config.loader import ConfigError, load_settings
from gateway.config.policy import Policy, load_policy
from gateway.config.schema import BounceSettings, Settings
from gateway.delivery.agent import DeliveryAgent
from gateway.delivery.warmup_keeper import WarmupKeeper
from gateway.dns.resolver import MxResolver
from gateway.feedback.classify import Classifier
from gateway.feedback.inbound import FeedbackRules, InboundProcessor
from gateway.feedback.reputation import ReputationGuard
from gateway.feedback.softbounce import SoftBounceRule
from gateway.feedback.trust import txt_lookup
from gateway.feedback.verdicts import Verdict
from gateway.feedback.webhooks import Endpoint, WebhookDispatcher
from gateway.ingest.gate import Gate
from gateway.ingest.rules import DEFAULT_ACTIONS, Action
from gateway.operations.status import live_status
from gateway.queue.outgoing import CopyMaker
from gateway.queue.scheduler import Scheduler
from gateway.queue.spool import BodyCache, Spool
from gateway.records import AttemptResult, ClaimedDelivery
from gateway.rewrite.copies import CopyRules
from gateway.shaping.pools import check_pool_bindings, pool_names_by_ip, pools_from
from gateway.shaping.router import Router
from gateway.shaping.store import MemoryThrottleStore
from gateway.signing.keyring import KeyRing
from gateway.signing.token_keys import read_api_token, token_codec
from gateway.smtp.handler import IntakeHandler, IntakePolicy
from gateway.smtp.limits import AuthLockout, ConnectionCounter
from gateway.smtp.server import Listener, start_listeners
from gateway.storage.database import Database
from gateway.storage.migrate import current_revision_of, head_revision
from gateway.web.admin import EmbeddedServer, admin_app, embedded_server
from gateway.web.api import ApiContext, admin_api
from gateway.web.operations_api import OperationsContext, include_operations
from gateway.web.pages import Pages
from gateway.web.public import public_app

log = logging.getLogger(__name__)


def soft_rule_from(settings: BounceSettings) -> SoftBounceRule:
    return SoftBounceRule(limit=settings.soft_bounce_limit, span=timedelta(seconds=settings.soft_bounce_days),
                          suppress_for=timedelta(seconds=settings.soft_bounce_suppress_for),
                          decay=timedelta(seconds=settings.soft_bounce_decay))


def feedback_rules_from(settings: Settings) -> FeedbackRules:
    complaints = settings.complaints
    nameservers = [(ns.host, ns.port) for ns in settings.dns.nameservers]
    return FeedbackRules(
        soft_rule=soft_rule_from(settings.bounce),
        address_match_window=timedelta(seconds=settings.bounce.address_match_window),
        fbl_addresses=tuple(complaints.fbl_addresses), dkim_domains=tuple(complaints.dkim_domains),
        trusted_networks=tuple(complaints.trusted_networks), complaint_scope=complaints.scope,
        authserv_id=settings.smtp.hostname, dkim_lookup=txt_lookup(nameservers, settings.dns.timeout),
        dns_timeout=settings.dns.timeout)


class SchemaOutOfDate(RuntimeError):
    """The database is not at the schema this version needs; `gateway db upgrade` fixes it."""


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
        pools = pools_from(settings)
        check_pool_bindings(policy, pools)
        # Throttle state of this node; several nodes would share a Redis ThrottleStore.
        throttles = MemoryThrottleStore()
        self.router = Router(policy, pools, throttles, time.time)
        self.warmup = WarmupKeeper(self.db, throttles)
        self._warmup_task: asyncio.Task[None] | None = None
        self.agent = DeliveryAgent(resolver_from(settings), self.router)
        self.classifier = Classifier.from_policy_dir(settings.policy.dir)
        # Read through self.policy, so that a reload takes effect for the next outcome.
        self.scheduler = Scheduler(self.db, bodies, self._deliver,
                                   retry_for=lambda provider: self.policy.profile(provider).retry,
                                   node=self.node, classify=self._classify,
                                   soft_rule=soft_rule_from(settings.bounce))
        self.spool = Spool(self.db, bodies, on_stored=self.scheduler.wake,
                           on_inbound=lambda: self.inbound.wake())
        self.keyring = KeyRing.load(settings.domains)
        codec = token_codec(settings.tokens)
        hooks = [Endpoint.from_settings(hook) for hook in settings.webhooks]  # secrets checked now
        self.webhooks = WebhookDispatcher(self.db, hooks) if hooks else None
        # Circuit breakers: judged after each campaign's attempts and reports, and every minute
        # (docs/reputation.md).
        self.breakers = ReputationGuard(self.db, lambda: self.policy.reputation)
        self.inbound = InboundProcessor(self.db, codec, settings.bounce.domain,
                                        classifier=lambda: self.classifier,
                                        rules=feedback_rules_from(settings), on_report=self.breakers.reported)
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
        self._webhook_task: asyncio.Task[None] | None = None
        self._breaker_task: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.ready = False
        self._stopped = False

    async def _deliver(self, claim: ClaimedDelivery, stored: bytes) -> AttemptResult:
        self.breakers.note(claim.stream, claim.campaign)
        copy = await self.copies.make(claim, stored)
        if isinstance(copy, AttemptResult):
            return copy
        return await self.agent.deliver(copy.mail_from, claim.recipient, claim.domain, copy.head,
                                        copy.body, smtputf8=copy.smtputf8, stream=claim.stream,
                                        withdrawn=partial(self.breakers.is_paused, claim.campaign))

    def _classify(self, result: AttemptResult) -> Verdict | None:
        """The bounce classifier's reading of a failed attempt (read through ``self`` so that
        a policy reload takes effect at once)."""
        verdict = self.classifier.attempt(result)
        if verdict is not None and result.kind == "permanent":
            metrics.BOUNCES.labels(verdict.bounce_class.value, verdict.severity.value).inc()
        return verdict

    async def start(self) -> None:
        await self._check_schema()
        await self.db.start()
        await self.warmup.load()
        self._warmup_task = asyncio.create_task(self.warmup.run(), name="warmup-keeper")
        await self.scheduler.prepare()
        self._tasks.append(asyncio.create_task(self.scheduler.run(), name="scheduler"))
        self._inbound_task = asyncio.create_task(self.inbound.run(), name="inbound")
        if self.webhooks is not None:
            self._webhook_task = asyncio.create_task(self.webhooks.run(), name="webhooks")
        self._breaker_task = asyncio.create_task(self.breakers.run(), name="breakers")
        if self.settings.http.admin_listen is not None:
            api = None
            if self.settings.http.api_token_file is not None:
                api = admin_api(ApiContext(
                    self.db, self.copies.codec, self.settings.http.public_url,
                    read_api_token(self.settings.http.api_token_file),
                    role_local_parts=frozenset(name.lower() for name in self.settings.consent.role_accounts)))
                include_operations(api, OperationsContext(
                    self.db, lambda now: live_status(self.db, self.router, self.node, now),
                    wake=self.scheduler.wake, pool_of=pool_names_by_ip(self.settings)))
            self.admin = embedded_server(admin_app(lambda: self.ready, api=api),
                                         self.settings.http.admin_listen)
            self._tasks.append(asyncio.create_task(self.admin.serve(), name="admin-http"))
        if self.settings.http.public_listen is not None:
            pages = await asyncio.to_thread(Pages.load, self.settings.pages)  # templates, catalogs
            self.public = embedded_server(public_app(self.db, self.copies.codec, pages=pages,
                                                     public_url=self.settings.http.public_url),
                                          self.settings.http.public_listen,
                                          self.settings.http.trusted_proxies)
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
            check_pool_bindings(policy, self.router.pools)
            classifier = Classifier.from_policy_dir(directory)
        except ConfigError as exc:
            metrics.CONFIG_RELOADS.labels("failure").inc()
            log.error("policy reload refused, keeping the running policy:\n%s", exc)
            return False
        self.policy = policy
        self.classifier = classifier
        self.router.update_policy(policy)
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
        for task in (self._inbound_task, self._webhook_task, self._breaker_task):  # resume from the database
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        for server in (self.admin, self.public):
            if server is not None:
                server.should_exit = True
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.agent.close()
        if self._warmup_task is not None:  # saves the counters once more as it ends
            self._warmup_task.cancel()
            await asyncio.gather(self._warmup_task, return_exceptions=True)
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
    pid_file = write_pid_file(settings.process.pid_file)
    try:
        await stop.wait()
    finally:
        await gateway.stop()
        remove_pid_file(pid_file)


def remove_pid_file(path: Path | None) -> None:
    """Only our own: another gateway started with the same file since then keeps its entry."""
    try:
        if path is not None and path.read_text().strip() == str(os.getpid()):
            path.unlink()
    except OSError:
        pass


def write_pid_file(path: Path) -> Path | None:
    """For `gateway reload` (SIGHUP to this pid); a failure only costs that verb, so it is logged."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{os.getpid()}\n")
    except OSError as exc:
        log.warning("cannot write pid file %s (gateway reload will not find this process): %s", path, exc)
        return None
    return path
