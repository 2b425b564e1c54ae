"""Reading inbound reports: DSNs, ARF complaints, auto-replies (pure; never raises).

Mail that comes back to the bounce domain is one of four things, decided in this order:

1. an ARF complaint (RFC 5965 ``message/feedback-report``);
2. a bounce: an RFC 3464 ``message/delivery-status`` report, or one of the plain-text
   formats real MTAs still send (Exim, qmail, old Postfix, Sendmail, Exchange, provider
   pages in many languages), recognised by sender, subject and wording;
3. an auto-reply (vacation, out-of-office: RFC 3834 ``Auto-Submitted`` and friends);
4. anything else (a person's reply, a DMARC or TLS report): not a bounce.

Recipients come from the DSN fields when there are any, else from the bounce text, else
from the ``To:`` of the returned original message. The VERP tokens found anywhere in the
report are kept apart: they name the delivery even when the address is hidden.
"""

from __future__ import annotations

import email
import email.message
import email.policy
import re
from dataclasses import dataclass, field

from gateway.feedback import mailtext
from gateway.feedback.verdicts import ReportKind

MAX_INPUT = 8 * 1024 * 1024  # a report bigger than this is read only this far
MAX_HEADERS = 8 * 1024
MAX_DIAGNOSTIC = 1000
FAILURE_ACTIONS = ("failed", "delayed", "delivered", "relayed", "expanded")


@dataclass(frozen=True)
class ReportedRecipient:
    address: str  # final recipient as the report names it ("" if unknown); domain lower-cased
    original: str = ""  # Original-Recipient when given
    action: str = "failed"  # failed | delayed | delivered | relayed | expanded
    status: str = ""  # enhanced status "5.1.1" or ""
    diagnostic: str = ""  # Diagnostic-Code text or the quoted remote reply, one line
    remote_mta: str = ""


@dataclass(frozen=True)
class ArfReport:
    feedback_type: str
    user_agent: str
    source_ip: str
    reported_domain: str
    original_mail_from: str
    original_rcpt_to: tuple[str, ...]
    arrival_date: str


@dataclass(frozen=True)
class Report:
    kind: ReportKind
    recipients: tuple[ReportedRecipient, ...]
    verp_tokens: tuple[str, ...] = ()
    feedback_id: str = ""
    original_message_id: str = ""
    original_headers: str = ""
    arf: ArfReport | None = None
    summary: str = ""


def parse_report(raw: bytes, *, bounce_domain: str = "") -> Report:
    """Read any bytes as a report; garbage gives a ``not-bounce`` report, never an error."""
    try:
        return _parse(raw[:MAX_INPUT], bounce_domain.strip().lower())
    except Exception as exc:  # malformed MIME must never stop inbound processing
        return Report(ReportKind.NOT_BOUNCE, (), summary=f"unreadable message ({type(exc).__name__})")


@dataclass
class _Pieces:
    """What one walk over the MIME tree collected."""

    status_texts: list[str] = field(default_factory=list)
    feedback_texts: list[str] = field(default_factory=list)
    body_texts: list[str] = field(default_factory=list)
    original: email.message.Message | None = None
    original_text: str = ""
    report_type: str = ""


def _parse(raw: bytes, bounce_domain: str) -> Report:
    message = email.message_from_bytes(raw, policy=email.policy.compat32)
    pieces = _collect(message)
    body = "\n".join(pieces.body_texts)
    body, inline_original = mailtext.split_returned_message(body)
    original_text = pieces.original_text or inline_original
    original = pieces.original or mailtext.parse_headers(original_text)
    context = _Context(message, original, original_text, body, bounce_domain)
    if pieces.feedback_texts:
        return _arf_report(context, pieces.feedback_texts[0])
    if pieces.report_type in ("tlsrpt", "disposition-notification"):
        return context.report(ReportKind.NOT_BOUNCE, (), f"not a bounce: {pieces.report_type} report")
    recipients = _dsn_recipients(pieces.status_texts)
    if recipients or pieces.status_texts:
        return _dsn_report(context, recipients)
    if mailtext.is_report_digest(context.subject):
        return context.report(ReportKind.NOT_BOUNCE, (), f"not a bounce: {context.subject[:120]}")
    if mailtext.bounce_by_envelope(context.sender, context.subject, body):
        return _dsn_report(context, ())
    if mailtext.is_auto_reply(message, context.subject, body):
        return context.report(ReportKind.AUTO_REPLY, (), f"auto-reply: {context.subject[:120]}")
    if mailtext.bounce_by_wording(context.subject, body):
        return _dsn_report(context, ())
    return context.report(ReportKind.NOT_BOUNCE, (), f"not a bounce: {context.subject[:120]}")


def _collect(message: email.message.Message) -> _Pieces:
    pieces = _Pieces()
    if message.get_content_type() == "multipart/report":
        pieces.report_type = str(message.get_param("report-type", "") or "").lower()
    _walk(message, pieces, depth=0)
    return pieces


def _walk(part: email.message.Message, pieces: _Pieces, depth: int) -> None:
    if depth > 20:
        return
    ctype = part.get_content_type()
    if ctype in ("message/delivery-status", "message/global-delivery-status"):
        pieces.status_texts.append(mailtext.part_text(part))
    elif ctype == "message/feedback-report":
        pieces.feedback_texts.append(mailtext.part_text(part))
    elif ctype in ("message/rfc822", "message/global", "text/rfc822-headers",
                   "message/rfc822-headers", "message/global-headers"):
        _keep_original(part, pieces)
    elif part.is_multipart():
        for sub in part.get_payload() or []:
            if isinstance(sub, email.message.Message):
                _walk(sub, pieces, depth + 1)
    elif part.get_content_maintype() == "text" and not _is_attachment(part):
        text = mailtext.part_text(part)
        if ctype == "text/html":
            text = mailtext.html_to_text(text)
        pieces.body_texts.append(text)


def _keep_original(part: email.message.Message, pieces: _Pieces) -> None:
    if pieces.original is not None:
        return
    payload = part.get_payload()
    if isinstance(payload, list) and payload and isinstance(payload[0], email.message.Message):
        pieces.original = payload[0]
        pieces.original_text = mailtext.header_block(payload[0])
    else:
        text = mailtext.part_text(part)
        pieces.original = mailtext.parse_headers(text)
        pieces.original_text = text.split("\n\n", 1)[0]


def _is_attachment(part: email.message.Message) -> bool:
    disposition = str(part.get("Content-Disposition", "")).lower()
    return disposition.startswith("attachment") and part.get_content_type() != "text/plain"


class _Context:
    """The report-wide facts every kind of report shares."""

    def __init__(self, message: email.message.Message, original: email.message.Message | None,
                 original_text: str, body: str, bounce_domain: str) -> None:
        self.message = message
        self.original = original
        self.body = body
        self.bounce_domain = bounce_domain
        self.subject = mailtext.header_text(message.get("Subject"))
        self.sender = mailtext.header_text(message.get("From"))
        self.original_headers = original_text[:MAX_HEADERS]
        self.tokens = mailtext.verp_tokens(
            [mailtext.header_block(message), original_text, body], bounce_domain)

    def original_field(self, name: str) -> str:
        if self.original is None:
            return ""
        return mailtext.header_text(self.original.get(name))

    def report(self, kind: ReportKind, recipients: tuple[ReportedRecipient, ...], summary: str,
               arf: ArfReport | None = None) -> Report:
        return Report(kind=kind, recipients=recipients, verp_tokens=self.tokens,
                      feedback_id=self.original_field("Feedback-ID")[:300],
                      original_message_id=self.original_field("Message-ID")[:300],
                      original_headers=self.original_headers, arf=arf,
                      summary=mailtext.one_line(summary, 300))


# --- DSN ---------------------------------------------------------------------------------


def _dsn_recipients(status_texts: list[str]) -> tuple[ReportedRecipient, ...]:
    found: list[ReportedRecipient] = []
    for text in status_texts:
        per_message, blocks = mailtext.status_blocks(text)
        remote = _typed_value(per_message.get("remote-mta", ""))
        for block in blocks:
            recipient = _recipient_from_fields(block, remote)
            if recipient is not None:
                found.append(recipient)
    return tuple(found)


def _recipient_from_fields(fields: dict[str, str], default_remote: str) -> ReportedRecipient | None:
    final = mailtext.clean_address(_typed_value(fields.get("final-recipient", "")))
    original = mailtext.clean_address(_typed_value(fields.get("original-recipient", "")))
    if not final and not original and not fields.get("action"):
        return None
    diagnostic = mailtext.one_line(_typed_value(fields.get("diagnostic-code", "")), MAX_DIAGNOSTIC)
    status = mailtext.enhanced_status(fields.get("status", "")) or mailtext.enhanced_status(diagnostic)
    action = fields.get("action", "").strip().lower().split(" ")[0]
    if action not in FAILURE_ACTIONS:
        action = "delayed" if status.startswith("4") and action != "failed" else "failed"
    if "@" not in final and "@" in original:  # "rfc822; john": the original names the mailbox fully
        final = original
    return ReportedRecipient(address=final or original, original=original, action=action,
                             status=status, diagnostic=diagnostic,
                             remote_mta=_typed_value(fields.get("remote-mta", "")) or default_remote)


def _typed_value(value: str) -> str:
    """``rfc822; a@b`` -> ``a@b``; ``smtp; 550 ...`` -> ``550 ...`` (RFC 3464 typed fields)."""
    value = mailtext.one_line(value, 4000)
    kind, sep, rest = value.partition(";")
    if sep and re.fullmatch(r"\s*[A-Za-z][A-Za-z0-9.+-]{0,30}\s*", kind):
        return rest.strip()
    return value.strip()


def _dsn_report(context: _Context, recipients: tuple[ReportedRecipient, ...]) -> Report:
    delayed = mailtext.mentions_delay(context.subject, context.body)
    if not recipients:
        recipients = _text_recipients(context, delayed)
    else:
        recipients = _fill_diagnostics(recipients, context.body)
    failed = [r for r in recipients if r.action == "failed"]
    shown = ", ".join(f"{r.address or '?'} {r.status or '-'}" for r in recipients[:3])
    what = f"{len(failed)} failed" if failed else (recipients[0].action if recipients else "no recipient")
    return context.report(ReportKind.DSN, recipients,
                          f"DSN ({what}): {shown}" + (" ..." if len(recipients) > 3 else ""))


def _fill_diagnostics(recipients: tuple[ReportedRecipient, ...], body: str) -> tuple[ReportedRecipient, ...]:
    """A DSN without Diagnostic-Code: the human-readable part often quotes the reply."""
    if all(r.diagnostic for r in recipients):
        return recipients
    found = dict(mailtext.recipients_in_text(body, exclude=()))
    filled = []
    for rcpt in recipients:
        if not rcpt.diagnostic:
            text = found.get(rcpt.address) or (found.get("", "") if len(recipients) == 1 else "")
            if not text and len(recipients) == 1:
                text = mailtext.best_diagnostic(body)
            rcpt = _with(rcpt, diagnostic=text[:MAX_DIAGNOSTIC],
                         status=rcpt.status or mailtext.enhanced_status(text))
        filled.append(rcpt)
    return tuple(filled)


def _text_recipients(context: _Context, delayed: bool) -> tuple[ReportedRecipient, ...]:
    exclude = _not_recipients(context)
    action = "delayed" if delayed else "failed"
    pairs = mailtext.recipients_in_text(context.body, exclude)
    listed = mailtext.addresses(mailtext.header_text(context.message.get("X-Failed-Recipients")))
    if listed:  # Exim names the failed recipients in a header: trust it over the prose
        found = dict(pairs)
        fallback = mailtext.best_diagnostic(context.body) if len(listed) == 1 else ""
        pairs = [(address, found.get(address) or fallback) for address in listed[:100]]
    if not pairs:
        to = mailtext.addresses(context.original_field("To"))
        diagnostic = mailtext.best_diagnostic(context.body)
        pairs = [(address, diagnostic) for address in to if address not in exclude][:50] or [("", diagnostic)]
    recipients = []
    for address, diagnostic in pairs:
        diagnostic = mailtext.one_line(diagnostic, MAX_DIAGNOSTIC)
        recipients.append(ReportedRecipient(address=address, action=action,
                                            status=mailtext.enhanced_status(diagnostic),
                                            diagnostic=diagnostic))
    return tuple(recipients)


def _not_recipients(context: _Context) -> frozenset[str]:
    """Addresses a bounce text mentions that are not the failed recipient."""
    names = [context.sender, context.original_field("From"), context.original_field("Sender"),
             context.original_field("Return-Path"), mailtext.header_text(context.message.get("To")),
             mailtext.header_text(context.message.get("Return-Path"))]
    return frozenset(a for name in names for a in mailtext.addresses(name))


def _with(rcpt: ReportedRecipient, **changes: str) -> ReportedRecipient:
    values = {**rcpt.__dict__, **changes}
    return ReportedRecipient(**values)


# --- ARF ---------------------------------------------------------------------------------


def _arf_report(context: _Context, text: str) -> Report:
    fields, _ = mailtext.status_blocks(text, multi=("original-rcpt-to",))
    feedback_type = fields.get("feedback-type", "").strip().lower() or "abuse"
    rcpt_to = tuple(mailtext.clean_address(v) for v in fields.get("original-rcpt-to", "").split("\n")
                    if mailtext.clean_address(v))
    arf = ArfReport(feedback_type=feedback_type,
                    user_agent=mailtext.one_line(fields.get("user-agent", ""), 200),
                    source_ip=fields.get("source-ip", "").strip()[:64],
                    reported_domain=fields.get("reported-domain", "").strip().lower()[:255],
                    original_mail_from=mailtext.clean_address(fields.get("original-mail-from", "")),
                    original_rcpt_to=rcpt_to,
                    arrival_date=mailtext.one_line(fields.get("arrival-date", "")
                                                   or fields.get("received-date", ""), 100))
    named = rcpt_to or tuple(mailtext.addresses(context.original_field("To")))[:50]
    # Providers often hide the complainer ("redacted@...", "[email removed]"): the VERP token
    # still names the delivery, so the complaint keeps one recipient without an address.
    addresses = tuple(dict.fromkeys("" if _redacted(a) else a for a in named)) or ("",)
    recipients = tuple(ReportedRecipient(address=a, action="failed") for a in addresses)
    # An auth-failure report (RFC 6591) is DMARC forensics about our mail, not a complaint.
    kind = ReportKind.NOT_BOUNCE if feedback_type == "auth-failure" else ReportKind.ARF
    who = arf.user_agent or context.sender or "unknown reporter"
    return context.report(kind, recipients, f"ARF {feedback_type} from {who}: "
                          f"{', '.join(a for a in addresses[:3] if a) or 'recipient not named'}", arf=arf)


def _redacted(address: str) -> bool:
    local = address.rpartition("@")[0].lower()
    return local in ("redacted", "removed", "anonymous", "hidden", "undisclosed-recipients") or bool(
        re.fullmatch(r"[x*#._-]+", local))
