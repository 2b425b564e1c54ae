"""The intake's decisions at each SMTP command (aiosmtpd handler hooks).

Order of checks follows the message's path in DESIGN.md: who may send (AUTH or
an allowed network) at MAIL, where it may go (relay rules, limits, syntax) at
RCPT, what it contains at end of DATA, then a durable commit before the 250.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from base64 import b64decode
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session

from gateway import metrics
from gateway.config.schema import Account, HeaderSettings, Settings
from gateway.ingest.addresses import address_key, normalize_recipient, split_address
from gateway.ingest.gate import Gate, Verdict
from gateway.ingest.rules import Refusal
from gateway.queue.spool import Spool
from gateway.records import InboundMessage, NewMessage, new_queue_id
from gateway.rewrite.headers import (
    HeaderProblem,
    author_domain,
    header_length,
    join_message,
    split_message,
    values,
)
from gateway.rewrite.message import Controls, HeaderRules, Origin, read_controls
from gateway.rewrite.message import prepare as prepare_headers
from gateway.smtp import replies
from gateway.smtp.content import (
    TraceInfo,
    content_problem,
    received_header,
)
from gateway.smtp.limits import AuthLockout
from gateway.smtp.passwords import BadHash, VerifiedCache, verify_password
from gateway.smtp.replies import Reply
from gateway.storage.errors import StorageError

log = logging.getLogger(__name__)

Clock = Callable[[], float]
LARGE_MESSAGE = 1 << 20


def _never(domain: str) -> bool:
    return False


@dataclass
class IntakePolicy:
    """The slice of settings intake decides with, prepared once at start-up."""

    hostname: str
    bounce_domain: str
    max_recipients: int
    allowed_networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network]
    accounts: dict[str, Account] = field(default_factory=dict)
    header_rules: HeaderRules = field(default_factory=HeaderRules)
    # Whether a From domain has a DKIM key; mail from one without is refused unless
    # ``pass_unsigned`` (a smarthost further on signs).
    can_sign: Callable[[str], bool] = _never
    pass_unsigned: bool = False
    max_header_size: int = 1 << 20

    @classmethod
    def from_settings(cls, settings: Settings, can_sign: Callable[[str], bool]) -> IntakePolicy:
        smtp = settings.smtp
        return cls(hostname=smtp.hostname, bounce_domain=settings.bounce.domain,
                   max_recipients=smtp.max_recipients,
                   allowed_networks=list(smtp.allowed_networks),
                   accounts={a.username: a for a in smtp.accounts},
                   header_rules=header_rules(settings.headers), can_sign=can_sign,
                   max_header_size=smtp.max_header_size,
                   pass_unsigned=settings.signing.unsigned == "pass")

    def for_bounce_domain(self, recipient: str) -> bool:
        """Mail for the bounce domain is inbound (DSNs, complaints), never relayed."""
        return recipient.rpartition("@")[2] == self.bounce_domain

    def trusted(self, ip: str) -> bool:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(address in network for network in self.allowed_networks)


def _account(session: Session) -> Account | None:
    return session.auth_data if isinstance(session.auth_data, Account) else None


def _peer_ip(session: Session) -> str:
    peer = session.peer
    return str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"


class IntakeHandler:
    def __init__(self, policy: IntakePolicy, spool: Spool, lockout: AuthLockout,
                 clock: Clock = time.monotonic, gate: Gate | None = None) -> None:
        self.policy = policy
        self.spool = spool
        self.lockout = lockout
        self.gate = gate
        self.clock = clock
        self.verified = VerifiedCache()

    # -- authentication -------------------------------------------------
    async def auth_PLAIN(self, server: SMTP, args: list[str]) -> AuthResult:
        raw: bytes | None
        if len(args) == 1:
            answer = await server.challenge_auth("")
            if not isinstance(answer, bytes):
                return AuthResult(success=False, handled=True)
            raw = answer
        else:
            raw = _b64(args[1])
        if raw is None:
            return _refuse(replies.AUTH_BAD_BASE64)
        parts = raw.split(b"\x00")
        if len(parts) != 3:
            return _refuse(replies.AUTH_BAD_PLAIN)
        return await self._check_password(server, parts[1], parts[2])

    async def auth_LOGIN(self, server: SMTP, args: list[str]) -> AuthResult:
        login: object = (await server.challenge_auth(server.AuthLoginUsernameChallenge)
                         if len(args) == 1 else _b64(args[1]))
        if not isinstance(login, bytes):
            return (_refuse(replies.AUTH_BAD_BASE64) if login is None
                    else AuthResult(success=False, handled=True))
        password = await server.challenge_auth(server.AuthLoginPasswordChallenge)
        if not isinstance(password, bytes):
            return AuthResult(success=False, handled=True)
        return await self._check_password(server, login, password)

    async def _check_password(self, server: SMTP, login: bytes, password: bytes) -> AuthResult:
        assert server.session is not None
        ip = _peer_ip(server.session)
        now = self.clock()
        if self.lockout.locked(ip, now):
            metrics.SMTP_AUTH.labels("locked_out").inc()
            return _refuse(replies.AUTH_LOCKED_OUT)
        account = self.policy.accounts.get(login.decode("utf-8", "replace"))
        if account is not None and await self._password_matches(account, password, now):
            self.lockout.success(ip)
            metrics.SMTP_AUTH.labels("success").inc()
            return AuthResult(success=True, auth_data=account, message=str(replies.AUTH_OK))
        metrics.SMTP_AUTH.labels("failure").inc()
        if self.lockout.failure(ip, now):
            log.warning("AUTH lockout for %s after repeated failures", ip)
        return _refuse(replies.AUTH_FAILED)

    async def _password_matches(self, account: Account, password: bytes, now: float) -> bool:
        if self.verified.known(account.password_hash, password, now):
            return True
        try:
            # scrypt takes tens of milliseconds: keep it off the event loop.
            ok = await asyncio.to_thread(verify_password, password, account.password_hash)
        except BadHash:
            log.error("account %s has an unusable password_hash", account.username)
            return False
        if ok:
            self.verified.remember(account.password_hash, password, now)
        return ok

    # -- envelope -------------------------------------------------------
    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, mail_options: list[str]) -> str:
        account = _account(session)
        null = address == NULL_PATH
        if not null and split_address(address) is None:
            return self._refuse(replies.BAD_SENDER_SYNTAX)
        if account is not None and not null:
            domain = address.rpartition("@")[2].lower()
            if domain not in account.allowed_from_domains:
                return self._refuse(replies.SENDER_NOT_ALLOWED, sender=address)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return str(replies.SENDER_OK)

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if len(envelope.rcpt_tos) >= self.policy.max_recipients:
            return self._refuse(replies.TOO_MANY_RECIPIENTS)
        recipient = normalize_recipient(address)
        if recipient is None:
            return self._refuse(replies.BAD_RECIPIENT_SYNTAX)
        key = address_key(recipient)
        if any(address_key(known) == key for known in envelope.rcpt_tos):
            return str(replies.RECIPIENT_OK)  # the same person twice gets one copy (as Postfix does)
        may_relay = session.authenticated or self.policy.trusted(_peer_ip(session))
        if not may_relay and not self.policy.for_bounce_domain(recipient):
            return self._refuse(replies.AUTH_REQUIRED)
        if self.gate is not None and not self.policy.for_bounce_domain(recipient):
            try:
                verdict = await self.gate.at_rcpt(recipient, _pinned(_account(session), envelope))
            except StorageError as exc:
                log.error("consent check for a recipient failed: %s", exc)
                return self._refuse(replies.CONSENT_CHECK_FAILED)
            if verdict is not None:
                if verdict.action == "reject":
                    metrics.RECIPIENTS_REFUSED.labels(verdict.refusal.reason).inc()
                    reply = _refusal_reply(recipient, verdict.refusal)
                    self.gate.remember_refusals([(recipient, reply)])
                    metrics.SMTP_REFUSALS.labels("recipient_refused").inc()
                    return reply
                _dropped(envelope)[recipient] = verdict
        envelope.rcpt_tos.append(recipient)
        envelope.rcpt_options.extend(rcpt_options)
        return str(replies.RECIPIENT_OK)

    # -- content --------------------------------------------------------
    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        data = envelope.original_content or b""
        # Large messages are checked in a thread so that other sessions keep moving.
        problem = (content_problem(data) if len(data) <= LARGE_MESSAGE
                   else await asyncio.to_thread(content_problem, data))
        if problem is not None:
            return self._refuse(problem)
        now = datetime.now(UTC)
        inbound = [r for r in envelope.rcpt_tos if self.policy.for_bounce_domain(r)]
        outbound = [r for r in envelope.rcpt_tos if not self.policy.for_bounce_domain(r)]
        queue_id = new_queue_id(now)
        prepared = self._prepare(session, envelope, data, queue_id, now) if outbound else None
        if isinstance(prepared, str):
            return prepared  # refused
        if prepared is not None:
            refused = await self._decide(session, envelope, outbound, prepared.controls)
            if isinstance(refused, str):
                return refused
            outbound = [r for r in outbound if r not in refused]
            prepared = replace(prepared, suppressed=tuple(
                (r, f"suppressed: {verdict.refusal.describe()}") for r, verdict in refused.items()),
                suppressed_reasons=tuple(verdict.refusal.reason for verdict in refused.values()))
        try:
            if inbound:
                await self._store_inbound(session, envelope, data, inbound, now)
            if prepared is not None:
                await self._store_outbound(session, envelope, prepared, outbound, queue_id, now)
        except StorageError as exc:
            log.error("storage failure at end of DATA from %s: %s", _peer_ip(session), exc)
            return self._refuse(replies.STORAGE_FAILURE)
        return replies.QUEUED.format(queue_id=queue_id)

    def _prepare(self, session: Session, envelope: Envelope, data: bytes, queue_id: str,
                 now: datetime) -> Prepared | str:
        """The message as it is queued, or the refusal: headers the gateway cannot relay
        safely, a From domain the account may not use or that no key can sign for."""
        account = _account(session)
        if header_length(data) > self.policy.max_header_size:
            return self._refuse(replies.HEADER_TOO_BIG, limit=str(self.policy.max_header_size))
        origin = Origin(sender_id=account.username if account else "local",
                        hostname=self.policy.hostname, queue_id=queue_id, received_at=now)
        try:
            fields, body = split_message(data)
            controls = read_controls(fields, self.policy.header_rules, _defaults(account, envelope))
            queued = prepare_headers(fields, self.policy.header_rules, controls, origin)
            author = author_domain(queued)  # the From that goes out, after any stripping
        except HeaderProblem as exc:
            return self._refuse(replies.BAD_HEADER, detail=_reply_safe(str(exc)))
        if account is not None and author not in account.allowed_from_domains:
            return self._refuse(replies.FROM_NOT_ALLOWED, domain=author)
        if account is not None and controls.stream not in account.streams:
            return self._refuse(replies.STREAM_NOT_ALLOWED, stream=controls.stream)
        if not self.policy.can_sign(author) and not self.policy.pass_unsigned:
            return self._refuse(replies.NO_SIGNING_KEY, domain=author)
        found = values(queued, b"Message-ID")
        return Prepared(join_message(queued, body), controls, found[0][:998] if found else None)

    async def _decide(self, session: Session, envelope: Envelope, recipients: list[str],
                      controls: Controls) -> dict[str, Verdict] | str:
        """Refused recipients (dropped at RCPT, or refused now that the list is known), or the
        reply refusing the whole message when none is left and one refusal was a reject."""
        pinned = _pinned(_account(session), envelope)
        # Drops decided at RCPT under a pinned list stand only if the message is what was
        # assumed there; if its headers name another stream or list, every rule runs again.
        refused = dict(_dropped(envelope)) if pinned is None or controls == pinned else {}
        if self.gate is not None and not _decided_at_rcpt(controls, pinned):
            try:
                verdicts = await self.gate.at_data([r for r in recipients if r not in refused], controls)
            except StorageError as exc:
                log.error("consent check at end of DATA failed: %s", exc)
                return self._refuse(replies.CONSENT_CHECK_FAILED)
            refused.update(verdicts)
        if len(refused) == len(recipients):
            rejects = [(r, v.refusal) for r, v in refused.items() if v.action == "reject"]
            if rejects:
                for verdict in refused.values():
                    metrics.RECIPIENTS_REFUSED.labels(verdict.refusal.reason).inc()
                if self.gate is not None:
                    self.gate.remember_refusals(
                        [(r, _refusal_reply(r, verdict.refusal)) for r, verdict in refused.items()])
                metrics.SMTP_REFUSALS.labels("recipient_refused").inc()
                return _refusal_reply(*rejects[0])
        return refused

    async def _store_outbound(self, session: Session, envelope: Envelope, prepared: Prepared,
                              recipients: list[str], queue_id: str, now: datetime) -> None:
        account = _account(session)
        trace = TraceInfo(helo=session.host_name or "", client_ip=_peer_ip(session),
                          hostname=self.policy.hostname, queue_id=queue_id,
                          tls=session.ssl is not None, authenticated=account is not None,
                          received_at=now, recipient=recipients[0] if len(recipients) == 1 else None)
        await self.spool.store(NewMessage(
            queue_id=queue_id, received_at=now, mail_from=_reverse_path(envelope),
            recipients=tuple(recipients), body=received_header(trace) + prepared.data,
            client_ip=_peer_ip(session), helo=session.host_name or "",
            account=account.username if account else None,
            header_message_id=prepared.message_id, stream=prepared.controls.stream,
            list_key=prepared.controls.list_key, campaign=prepared.controls.campaign,
            suppressed=prepared.suppressed))
        metrics.MESSAGES_RECEIVED.inc()
        metrics.RECIPIENTS_RECEIVED.inc(len(recipients) + len(prepared.suppressed))
        for reason in prepared.suppressed_reasons:  # received, recorded, never to be sent
            metrics.RECIPIENTS_SUPPRESSED.labels(reason).inc()

    async def _store_inbound(self, session: Session, envelope: Envelope, data: bytes,
                             recipients: list[str], now: datetime) -> None:
        await self.spool.store_inbound(InboundMessage(
            received_at=now, mail_from=_reverse_path(envelope), recipients=tuple(recipients),
            body=data, client_ip=_peer_ip(session)))
        metrics.INBOUND_RECEIVED.inc()

    async def handle_exception(self, error: Exception) -> str:
        log.exception("unexpected error in SMTP session", exc_info=error)
        return str(replies.LOCAL_ERROR)

    @staticmethod
    def _refuse(reply: Reply, **values: str) -> str:
        metrics.SMTP_REFUSALS.labels(reply.name).inc()
        return reply.format(**values)


@dataclass(frozen=True)
class Prepared:
    """A message ready to be queued: rewritten bytes and what its headers said."""

    data: bytes
    controls: Controls
    message_id: str | None
    suppressed: tuple[tuple[str, str], ...] = ()
    suppressed_reasons: tuple[str, ...] = ()


def _defaults(account: Account | None, envelope: Envelope) -> Controls:
    """Stream and list when the control headers say nothing. Clients trusted by network
    (scripts, shop systems) and mail with the null sender (a DSN, a read receipt) send
    transactional mail unless a header says marketing; accounts have their own default."""
    if account is None:
        return Controls("transactional")
    stream = "transactional" if envelope.mail_from == NULL_PATH else account.default_stream
    return Controls(stream, account.default_list or "")


def _pinned(account: Account | None, envelope: Envelope) -> Controls | None:
    """An account that pins a list sends marketing for it: its rules can run at RCPT.
    Not for the null sender (DSNs, read receipts): that mail is never marketing."""
    if account is None or not account.default_list or account.default_stream != "marketing":
        return None
    if envelope.mail_from == NULL_PATH:
        return None
    return Controls("marketing", account.default_list)


def _decided_at_rcpt(controls: Controls, pinned: Controls | None) -> bool:
    """Whether RCPT already ran every rule this message needs: saves a read per message.

    Without a pinned list, RCPT checked the any-stream suppressions for every recipient,
    which is all that transactional mail without a campaign needs. With one, RCPT ran the
    pinned list's rules, which settle only a message with exactly those controls.
    """
    if pinned is not None:
        return controls == pinned
    return controls.stream == "transactional" and not controls.campaign


def _dropped(envelope: Envelope) -> dict[str, Verdict]:
    """Recipients accepted at RCPT but refused by a "drop" rule, kept for end of DATA."""
    dropped: dict[str, Verdict] | None = getattr(envelope, "gateway_dropped", None)
    if dropped is None:
        dropped = {}
        setattr(envelope, "gateway_dropped", dropped)  # noqa: B010 - aiosmtpd's Envelope has no slot
    return dropped


def _refusal_reply(recipient: str, refusal: Refusal) -> str:
    if refusal.reason == "no-consent":
        return replies.NO_CONSENT.format(recipient=recipient, list=refusal.detail)
    if refusal.reason == "unknown-list":
        return replies.UNKNOWN_LIST.format(recipient=recipient, list=refusal.detail)
    if refusal.reason == "frequency-cap":
        return replies.FREQUENCY_CAPPED.format(recipient=recipient, detail=refusal.detail)
    return replies.RECIPIENT_SUPPRESSED.format(recipient=recipient, reason=refusal.reason)


def _reply_safe(text: str, limit: int = 200) -> str:
    """Text for a reply line: ASCII only (escapes for the rest), and short."""
    return text.encode("ascii", "backslashreplace").decode("ascii")[:limit]


def header_rules(settings: HeaderSettings) -> HeaderRules:
    return HeaderRules(
        stream_header=settings.stream_header.encode("ascii"),
        list_header=settings.list_header.encode("ascii"),
        campaign_header=settings.campaign_header.encode("ascii"),
        strip=tuple(name.encode("ascii") for name in settings.strip),
        replace_list_unsubscribe=settings.list_unsubscribe == "replace")


NULL_PATH = "<>"  # DSNs' empty reverse-path; aiosmtpd needs a non-empty envelope.mail_from


def _reverse_path(envelope: Envelope) -> str:
    """The envelope sender as stored and relayed: "" for the null reverse-path."""
    sender = envelope.mail_from or ""
    return "" if sender == NULL_PATH else sender


def _refuse(reply: Reply) -> AuthResult:
    return AuthResult(success=False, handled=False, message=str(reply))


def _b64(text: str) -> bytes | None:
    try:
        return b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        return None


__all__ = ["IntakeHandler", "IntakePolicy"]
