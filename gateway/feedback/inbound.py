"""Mail that arrives for the bounce domain, handled after it is stored.

Intake accepts mail for the bounce domain without AUTH (and nothing else), stores it in
the ``inbound`` table as ``new`` and wakes this processor, which gives every row one final
state (docs/feedback.md has the table):

- ``unsubscribe+TOKEN@`` only: the mailto half of List-Unsubscribe (RFC 2369) -
  ``unsubscribed``, or ``refused`` when no token is valid; ``ignored`` when the mail is
  automatic (Auto-Submitted: a vacation notice unsubscribes nobody).
- a DSN: the delivery is found by the VERP token of the envelope recipient
  (``b+TOKEN@``), else by a token in the returned headers, else by the reported address
  (only if that address was sent mail recently); each failed recipient is classified and
  changes state as a synchronous bounce does - ``bounced``; ``unverified`` when only the
  address matched and the original Message-ID is not that message's (evidence kept, no
  change); ``delayed`` when it only says a message is late; ``forged`` when the envelope
  token is not ours (discarded, counted); ``unknown`` when its delivery is no longer
  stored; ``unmatched`` when no delivery fits.
- an ARF complaint to an FBL or VERP address: ``complaint`` once it authenticates
  (gateway/feedback/trust.py), ``untrusted`` otherwise (nothing changes); a DNS failure
  leaves it ``new`` to be judged again later.
- ``auto-reply`` (vacation notices) and ``ignored`` (anything else) change nothing;
  ``failed`` marks a row whose handling raised an unexpected error, or that could not be
  finished in MAX_ATTEMPTS tries (logged).

A row's state is written only if it is still ``new``, and its effects in that same
transaction only then: two nodes handling one row apply it once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import email.parser
import email.policy
import email.utils
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncConnection

from gateway import metrics
from gateway.feedback.classify import Classifier
from gateway.feedback.reports import Report, ReportedRecipient, parse_report
from gateway.feedback.softbounce import SoftBounceRule
from gateway.feedback.trust import IPNetwork, Trust, TxtLookup, judge, verified_dkim_domains
from gateway.feedback.verdicts import ReportKind, Verdict
from gateway.ingest.addresses import address_key, normalize_recipient
from gateway.ingest.unsubscribe import Click, unsubscribe
from gateway.queue import references
from gateway.rewrite.tokens import UNSUBSCRIBE_PREFIX, VERP_PREFIX, BadToken, Binding, Purpose, TokenCodec
from gateway.storage import feedback_store, queue_store
from gateway.storage.database import Database
from gateway.storage.errors import StorageError
from gateway.storage.feedback_store import BounceFact, ComplaintFact
from gateway.storage.queue_store import DEFAULT_SOFT_RULE, DeliveryRef, InboundRow
from gateway.wakeups import wake_or_timeout

log = logging.getLogger(__name__)
POLL_SECONDS = 2.0
PAGE = 100
LARGE_REPORT = 256 * 1024  # parsed in a thread above this size
MAX_ATTEMPTS = 5  # a row whose handling keeps failing is marked failed after this many tries
RETRY_AFTER_SECONDS = 60.0  # a row left new (database error, DNS failure) waits this long, times tries
MAX_DSN_RECIPIENTS = 50  # failed recipients handled per DSN; the rest are ignored (logged)
SWEEP_BATCH = 50


def unsubscribe_tokens(recipients: tuple[str, ...], bounce_domain: str) -> list[str] | None:
    """The tokens of a message sent only to unsubscribe addresses, else None (pure)."""
    tokens = []
    for recipient in recipients:
        local, _, domain = recipient.rpartition("@")
        if domain.lower() != bounce_domain or not local.lower().startswith(UNSUBSCRIBE_PREFIX):
            return None
        tokens.append(local[len(UNSUBSCRIBE_PREFIX):])
    return tokens or None


def verp_token(recipients: Sequence[str], bounce_domain: str) -> str | None:
    """The token of the first ``b+TOKEN@BOUNCE_DOMAIN`` envelope recipient (pure)."""
    for recipient in recipients:
        local, _, domain = recipient.rpartition("@")
        if domain.lower() == bounce_domain and local.lower().startswith(VERP_PREFIX):
            return local[len(VERP_PREFIX):]
    return None


def is_fbl_address(recipient: str, fbl_addresses: Sequence[str], bounce_domain: str) -> bool:
    local, _, domain = recipient.lower().rpartition("@")
    return recipient.lower() in fbl_addresses or (domain == bounce_domain and local in fbl_addresses)


@dataclass(frozen=True)
class FeedbackRules:
    """What the processor needs from the settings, as plain values."""

    soft_rule: SoftBounceRule = DEFAULT_SOFT_RULE
    address_match_window: timedelta = timedelta(days=14)
    fbl_addresses: tuple[str, ...] = ("fbl",)
    dkim_domains: tuple[str, ...] = ()
    trusted_networks: tuple[IPNetwork, ...] = ()
    complaint_scope: str = "list"  # list | global
    authserv_id: str = "localhost"
    dkim_lookup: TxtLookup | None = None  # None: DKIM is not checked (only networks are trusted)
    dns_timeout: float = 5.0  # per DKIM key lookup ([dns] timeout)


UNVERIFIED = "address only, Message-ID not ours"
UNKNOWN_PROVIDER = "unknown"  # complaints metric label when the delivery was never routed


@dataclass(frozen=True)
class Match:
    ref: DeliveryRef
    how: str  # verp | returned-headers | address (with the original Message-ID) | UNVERIFIED
    provider: str = ""  # the provider profile the delivery was last routed to ("" if never)


class Forged(Exception):
    """The envelope names a VERP token this gateway did not issue."""


class UnknownDelivery(Exception):
    """A well-formed VERP token names a delivery that is not (any more) in the database:
    purged, or never ours - without the row the MAC cannot be checked either way."""


class TryLater(Exception):
    """The row cannot be judged now (a DNS failure): leave it new and try again later."""


WriteOp = Callable[[AsyncConnection], Awaitable[None]]


@dataclass
class Handled:
    """A row's outcome: its state, and the changes committed together with that state (so a
    crash between the two cannot apply a report twice or lose it)."""

    kind: str
    state: str
    writes: list[WriteOp] = field(default_factory=list)
    bounces: list[Verdict] = field(default_factory=list)
    complaint_providers: list[str] = field(default_factory=list)  # one per complaint applied
    campaigns: set[str] = field(default_factory=set)  # of the copies bounced or complained about


class InboundProcessor:
    def __init__(self, db: Database, codec: TokenCodec, bounce_domain: str, *,
                 classifier: Callable[[], Classifier], rules: FeedbackRules | None = None,
                 poll: float = POLL_SECONDS,
                 on_report: Callable[[str], None] = lambda campaign: None) -> None:
        """``classifier`` returns the current bounce classifier (policy reloads swap it);
        ``on_report`` hears each campaign a committed DSN or complaint was about (the breakers)."""
        self.db = db
        self.codec = codec
        self.bounce_domain = bounce_domain
        self.classifier = classifier
        self.rules = rules or FeedbackRules()
        self.poll = poll
        self.on_report = on_report
        self._wake = asyncio.Event()
        self._later: dict[int, float] = {}  # row id -> monotonic time before which it is not retried
        self._bad_markers: set[int] = set()  # unapplied bounce facts that failed again (until restart)

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            for step in (self.sweep, self._process_all):  # one failing must not stop the other
                try:
                    await step()
                except StorageError as exc:  # rows and markers stay; they are tried again
                    log.error("cannot process inbound mail: %s", exc)
                except Exception:
                    log.exception("unexpected error processing inbound mail")
            self._wake.clear()
            await wake_or_timeout(self._wake, self.poll)

    async def _process_all(self) -> None:
        while await self.process_new() == PAGE:
            pass  # a full page: there may be more

    async def sweep(self) -> int:
        """Apply bounce facts whose bookkeeping failed with their delivery outcome, each in
        its own transaction; one that fails again is left for the next start (logged)."""
        ids = await self.db.read(functools.partial(feedback_store.unapplied_ids, limit=SWEEP_BATCH,
                                                   skip=self._bad_markers))
        applied = 0
        for marker_id in ids:
            try:
                applied += await self.db.write(functools.partial(
                    queue_store.reapply_marker, marker_id=marker_id, rule=self.rules.soft_rule))
            except StorageError as exc:
                log.error("bounce fact %d kept after a failure cannot be applied: %s", marker_id, exc)
                self._bad_markers.add(marker_id)
        if applied:
            log.info("applied %d bounce facts kept after a failure", applied)
        metrics.FEEDBACK_UNAPPLIED.set(await self.db.read(feedback_store.count_unapplied))
        return applied

    async def process_new(self) -> int:
        """Give each waiting row its final state; returns how many rows were read. A row that
        cannot be finished now (database error, DNS failure) stays new and waits; one that
        failed MAX_ATTEMPTS times is marked failed; later rows go on either way."""
        now = time.monotonic()
        self._later = {k: v for k, v in self._later.items() if v > now}
        rows = await self.db.read(functools.partial(queue_store.new_inbound, limit=PAGE,
                                                    skip=sorted(self._later)))
        for row in rows:
            attempts = await self.db.write(functools.partial(queue_store.begin_inbound_attempt,
                                                             inbound_id=row.id))
            if attempts == 0:
                continue  # finished meanwhile (another node)
            try:
                handled = await self._attempt(row, attempts)
            except (StorageError, TryLater) as exc:
                log.warning("inbound %d: not handled now, attempt %d of %d (%s)", row.id, attempts,
                            MAX_ATTEMPTS, exc)
                self._later[row.id] = time.monotonic() + RETRY_AFTER_SECONDS * attempts
                continue
            self._count(row, handled)
        return len(rows)

    async def _attempt(self, row: InboundRow, attempts: int) -> Handled:
        if attempts > MAX_ATTEMPTS:
            handled = Handled("unknown", "failed")
            log.error("inbound %d: given up after %d attempts; marked failed", row.id, MAX_ATTEMPTS)
        else:
            try:
                handled = await self._handle(row, last_try=attempts == MAX_ATTEMPTS)
            except (StorageError, TryLater):
                raise
            except Exception:
                log.exception("inbound %d: cannot be handled; marked failed", row.id)
                handled = Handled("unknown", "failed")
        if not await self.db.write(functools.partial(_commit, row_id=row.id, handled=handled)):
            log.info("inbound %d: already handled elsewhere; nothing applied", row.id)
            return Handled(handled.kind, "")
        return handled

    def _count(self, row: InboundRow, handled: Handled) -> None:
        if not handled.state:
            return
        metrics.INBOUND_REPORTS.labels(handled.kind, handled.state).inc()
        for campaign in sorted(handled.campaigns):
            self.on_report(campaign)
        for verdict in handled.bounces:
            metrics.BOUNCES.labels(verdict.bounce_class.value, verdict.severity.value).inc()
        for provider in handled.complaint_providers:
            # Provider names come from the policy files (deliveries.provider), so labels stay few.
            metrics.COMPLAINTS.labels(provider or UNKNOWN_PROVIDER).inc()
        log.info("inbound %d from %s (%s): %s", row.id, row.client_ip, handled.kind, handled.state)

    async def _handle(self, row: InboundRow, *, last_try: bool = False) -> Handled:
        tokens = unsubscribe_tokens(row.recipients, self.bounce_domain)
        raw = await self.db.read(functools.partial(queue_store.inbound_body, inbound_id=row.id))
        if tokens is not None:
            if is_automatic(raw):  # a vacation notice to the reply address is nobody's request
                return Handled("auto-reply", "ignored")
            return Handled("unsubscribe", await self._unsubscribe(row, tokens))
        report = await self._parse(raw)
        if report.kind is ReportKind.DSN:
            return await self._dsn(row, report)
        if report.kind is ReportKind.ARF:
            return await self._complaint(row, raw, report, last_try=last_try)
        return Handled(report.kind.value, "auto-reply" if report.kind is ReportKind.AUTO_REPLY else "ignored")

    async def _parse(self, raw: bytes) -> Report:
        if len(raw) > LARGE_REPORT:
            return await asyncio.to_thread(parse_report, raw, bounce_domain=self.bounce_domain)
        return parse_report(raw, bounce_domain=self.bounce_domain)

    async def _unsubscribe(self, row: InboundRow, tokens: list[str]) -> str:
        state = "refused"
        for token in tokens:
            try:
                click = Click("mailto", row.client_ip, None, row.received_at)
                await unsubscribe(self.db, self.codec, token, click)
                state = "unsubscribed"
            except BadToken:
                log.info("inbound %d: unsubscribe address with an invalid token, ignored", row.id)
        return state

    # -- which delivery a report is about ------------------------------------------------

    async def _matches(self, row: InboundRow, report: Report, addresses: Sequence[str]) -> list[Match]:
        """VERP envelope first (a forged one raises Forged), then tokens in the returned
        headers, then the reported addresses of recent deliveries."""
        return await self._with_providers(await self._find(row, report, addresses))

    async def _with_providers(self, matches: list[Match]) -> list[Match]:
        if not matches:
            return matches
        providers = await self.db.read(functools.partial(
            queue_store.delivery_providers, delivery_ids=[m.ref.delivery_id for m in matches]))
        return [dataclasses.replace(m, provider=providers.get(m.ref.delivery_id, "")) for m in matches]

    async def _find(self, row: InboundRow, report: Report, addresses: Sequence[str]) -> list[Match]:
        token = verp_token(row.recipients, self.bounce_domain)
        if token is not None:
            return [Match(await self._verp(token), "verp")]
        for returned in report.verp_tokens:
            with contextlib.suppress(BadToken):
                return [Match(await references.resolve(self.db, self.codec, returned, Purpose.VERP),
                              "returned-headers")]
        since = row.received_at - self.rules.address_match_window
        found: dict[int, Match] = {}
        for address in addresses:
            recipient = normalize_recipient(address) if address.strip() else None
            if recipient is None:
                continue  # includes "" (a provider that redacts the complainer)
            recent = await self.db.read(functools.partial(
                queue_store.recent_delivery_to, recipient=recipient, since=since,
                message_id=report.original_message_id))
            if recent is not None:
                ref, same_message = recent
                found.setdefault(ref.delivery_id, Match(ref, "address" if same_message else UNVERIFIED))
        return list(found.values())

    async def _verp(self, token: str) -> DeliveryRef:
        """The delivery of the envelope's VERP token: Forged when the token is malformed or
        its MAC does not match; UnknownDelivery when its delivery row is gone."""
        try:
            parts = self.codec.parse(token)
        except BadToken as exc:
            raise Forged(str(exc)) from None
        ref = await self.db.read(functools.partial(queue_store.delivery_ref, delivery_id=parts.delivery_id))
        if ref is None:
            raise UnknownDelivery(f"delivery {parts.delivery_id}")
        try:
            self.codec.verify(parts, Purpose.VERP, Binding(ref.recipient, ref.list_key, ref.campaign))
        except BadToken as exc:
            raise Forged(str(exc)) from None
        return ref

    # -- DSNs -----------------------------------------------------------------------------

    async def _dsn(self, row: InboundRow, report: Report) -> Handled:
        kind = report.kind.value
        failed = [r for r in report.recipients if r.action.lower() == "failed"]
        if not failed:
            late = any(r.action.lower() == "delayed" for r in report.recipients)
            return Handled(kind, "delayed" if late else "ignored")
        if len(failed) > MAX_DSN_RECIPIENTS:
            log.warning("inbound %d: DSN names %d failed recipients; only the first %d are handled", row.id,
                        len(failed), MAX_DSN_RECIPIENTS)
            failed = failed[:MAX_DSN_RECIPIENTS]
        try:
            matches = await self._matches(row, report, [r.address for r in failed])
        except Forged as exc:
            log.warning("inbound %d: DSN to a VERP address with a token we did not issue (%s); discarded",
                        row.id, exc)
            return Handled(kind, "forged")
        except UnknownDelivery as exc:
            log.info("inbound %d: DSN for %s, which is no longer stored; nothing changed", row.id, exc)
            return Handled(kind, "unknown")
        if not matches:
            return Handled(kind, "unmatched")
        verified = [m for m in matches if m.how != UNVERIFIED]
        if not verified:  # only evidence: an address alone must not suppress anyone
            return Handled(kind, "unverified", writes=[self._dsn_evidence_only(row, m, _about(m, failed))
                                                       for m in matches])
        handled = Handled(kind, "bounced", campaigns={m.ref.campaign for m in verified})
        for match in verified:
            write, verdict = self._dsn_change(row, match, _about(match, failed))
            handled.writes.append(write)
            handled.bounces.append(verdict)
        return handled

    def _worst(self, reported: list[ReportedRecipient]) -> tuple[Verdict, ReportedRecipient]:
        classifier = self.classifier()
        return max(((classifier.recipient(r), r) for r in reported), key=lambda pair: pair[0].is_hard)

    def _dsn_evidence_only(self, row: InboundRow, match: Match, reported: list[ReportedRecipient]) -> WriteOp:
        """A DSN tied to an address by nothing but the address: kept for `gateway trace`, no
        suppression, not counted."""
        verdict, rcpt = self._worst(reported)
        ref = match.ref
        fact = BounceFact(row.received_at, ref.recipient, verdict, "dsn", _dsn_evidence(row, rcpt, match),
                          delivery_id=ref.delivery_id, queue_id=ref.queue_id, list_key=ref.list_key,
                          campaign=ref.campaign, provider=match.provider, inbound_id=row.id)

        async def write(conn: AsyncConnection) -> None:
            await feedback_store.record_evidence(
                conn, fact, "evidence only: matched by address, but its original Message-ID is not "
                "that of a recent message to the address")

        return write

    def _dsn_change(self, row: InboundRow, match: Match,
                    reported: list[ReportedRecipient]) -> tuple[WriteOp, Verdict]:
        """What one matched DSN recipient changes: bounce state, and a `bounced` event."""
        verdict, rcpt = self._worst(reported)
        ref = match.ref
        fact = BounceFact(row.received_at, ref.recipient, verdict, "dsn", _dsn_evidence(row, rcpt, match),
                          delivery_id=ref.delivery_id, queue_id=ref.queue_id, list_key=ref.list_key,
                          campaign=ref.campaign, provider=match.provider, inbound_id=row.id)
        reply = f"DSN: {_verdict_text(verdict)}: {rcpt.diagnostic or rcpt.status or 'no diagnostic'}"

        async def write(conn: AsyncConnection) -> None:
            await queue_store.apply_feedback(conn, [fact], self.rules.soft_rule)
            await feedback_store.add_event(conn, at=row.received_at, kind="bounced", queue_id=ref.queue_id,
                                           delivery_id=ref.delivery_id, recipient=ref.recipient, reply=reply)

        return write, verdict

    # -- complaints -----------------------------------------------------------------------

    async def _complaint(self, row: InboundRow, raw: bytes, report: Report, *, last_try: bool) -> Handled:
        rules, kind = self.rules, report.kind.value
        if not any(is_fbl_address(r, rules.fbl_addresses, self.bounce_domain) for r in row.recipients) \
                and verp_token(row.recipients, self.bounce_domain) is None:
            return Handled(kind, "ignored")  # sent where no feedback loop was told to send reports
        trust = await self._trust(raw, row.client_ip)
        if trust.temporary and not last_try:
            raise TryLater(trust.why)
        if not trust.trusted:
            log.warning("inbound %d: complaint report not trusted (%s); nothing changed", row.id, trust.why)
            return Handled(kind, "untrusted")
        arf = report.arf
        addresses = [a for a in (arf.original_rcpt_to if arf else ()) if a.strip()]
        addresses += [r.address for r in report.recipients if r.address.strip()]
        try:
            matches = await self._matches(row, report, addresses)
        except Forged:
            return Handled(kind, "forged")
        except UnknownDelivery:
            return Handled(kind, "unknown")
        if not matches:
            return Handled(kind, "unmatched")
        changes = [self._complaint_change(row, report, trust, match) for match in matches]
        return Handled(kind, "complaint", writes=changes, complaint_providers=[m.provider for m in matches],
                       campaigns={m.ref.campaign for m in matches})

    async def _trust(self, raw: bytes, client_ip: str) -> Trust:
        rules = self.rules
        signatures: list[tuple[str, str]] = []
        if rules.dkim_lookup is not None and rules.dkim_domains:
            signatures = await asyncio.to_thread(verified_dkim_domains, raw, rules.dkim_lookup,
                                                 rules.dns_timeout)
        return judge(signatures, client_ip, dkim_domains=rules.dkim_domains, networks=rules.trusted_networks,
                     authserv_id=rules.authserv_id, from_domain=from_domain(raw))

    def _complaint_change(self, row: InboundRow, report: Report, trust: Trust, match: Match) -> WriteOp:
        """What one trusted complaint changes: suppression, queued mail, a `complained` event."""
        ref = match.ref
        scope = self.rules.complaint_scope
        feedback_type = (report.arf.feedback_type if report.arf else "") or "abuse"
        fact = ComplaintFact(row.received_at, ref.recipient, scope, _arf_evidence(row, report, trust, match),
                             delivery_id=ref.delivery_id, queue_id=ref.queue_id, list_key=ref.list_key,
                             campaign=ref.campaign, provider=match.provider, inbound_id=row.id,
                             feedback_type=feedback_type)

        async def write(conn: AsyncConnection) -> None:
            scope_key = await feedback_store.apply_complaint(conn, fact)
            if scope_key:
                await queue_store.suppress_pending(conn, ref.recipient, scope_key, "suppressed: complaint",
                                                   row.received_at)
            else:
                await queue_store.drop_pending_to(conn, ref.recipient, "suppressed: complaint",
                                                  row.received_at)
            await feedback_store.add_event(conn, at=row.received_at, kind="complained", queue_id=ref.queue_id,
                                           delivery_id=ref.delivery_id, recipient=ref.recipient,
                                           reply=f"{feedback_type} report ({trust.why})")

        return write


async def _commit(conn: AsyncConnection, row_id: int, handled: Handled) -> bool:
    """The row's state first, and only if it was still new: a row handled by two nodes at
    once (or twice after a lost commit reply) applies its effects once. False: not applied."""
    if not await queue_store.finish_inbound(conn, row_id, handled.state):
        return False
    for write in handled.writes:
        await write(conn)
    return True


def is_automatic(raw: bytes) -> bool:
    """Auto-Submitted other than "no" (RFC 3834): a machine wrote it (pure)."""
    value = _header(raw, "Auto-Submitted")
    return bool(value) and value.split(";", 1)[0].strip().lower() != "no"


def from_domain(raw: bytes) -> str:
    """The domain of the message's From address, lower-case ("" when there is none) (pure)."""
    address = email.utils.parseaddr(_header(raw, "From"))[1]
    return address.rpartition("@")[2].strip().lower().rstrip(".") if "@" in address else ""


def _header(raw: bytes, name: str) -> str:
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    message = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(head + b"\r\n\r\n")
    return str(message.get(name, "") or "")


def _about(match: Match, failed: list[ReportedRecipient]) -> list[ReportedRecipient]:
    """The failed recipients a match is about: those naming its address; for a VERP match
    every failed one (the report came back for that one copy, even if it was forwarded)."""
    key = address_key(match.ref.recipient)
    named = [r for r in failed if key in {_key(r.address), _key(r.original)}]
    return named or (failed if match.how != "address" else failed[:1])


def _key(address: str) -> str:
    recipient = normalize_recipient(address) if address else None
    return address_key(recipient) if recipient else ""


def _verdict_text(verdict: Verdict) -> str:
    status = f" {verdict.status}" if verdict.status else ""
    return f"{verdict.bounce_class} ({verdict.severity}{status}, rule {verdict.rule})"


def _dsn_evidence(row: InboundRow, rcpt: ReportedRecipient, match: Match) -> str:
    lines = [f"DSN from client {row.client_ip}, inbound {row.id}, matched by {match.how}",
             f"Final-Recipient: {rcpt.address}", f"Action: {rcpt.action}", f"Status: {rcpt.status}"]
    if rcpt.remote_mta:
        lines.append(f"Remote-MTA: {rcpt.remote_mta}")
    if rcpt.diagnostic:
        lines.append(f"Diagnostic-Code: {rcpt.diagnostic}")
    return "\n".join(lines)


def _arf_evidence(row: InboundRow, report: Report, trust: Trust, match: Match) -> str:
    lines = [trust.auth_results, f"Trusted: {trust.why}",
             f"ARF from client {row.client_ip}, inbound {row.id}, matched by {match.how}"]
    if report.arf is not None:
        arf = report.arf
        lines += [f"Feedback-Type: {arf.feedback_type}", f"User-Agent: {arf.user_agent}",
                  f"Source-IP: {arf.source_ip}", f"Reported-Domain: {arf.reported_domain}",
                  f"Original-Rcpt-To: {', '.join(arf.original_rcpt_to)}", f"Arrival-Date: {arf.arrival_date}"]
    if report.feedback_id:
        lines.append(f"Feedback-ID: {report.feedback_id}")
    return "\n".join(lines)

