"""Every SMTP reply the intake sends, in one table (code, enhanced status, text).

aiosmtpd writes a few protocol replies itself ("500 Error: bad syntax"); the
server passes every outgoing line through :func:`translate`, so those too go out
in this table's wording with an enhanced status code (RFC 3463).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Reply:
    code: int
    status: str
    text: str

    def __str__(self) -> str:
        return self.format()

    def format(self, **values: str) -> str:
        # 3xx intermediate replies carry no enhanced status code (RFC 3463 applies to 2/4/5xx).
        status = f"{self.status} " if self.status else ""
        text = self.text.format(**values) if values else self.text
        return f"{self.code} {status}{text}"

    @property
    def name(self) -> str:
        """The table entry's name, used as a bounded metric label."""
        return _NAMES.get(self, "other")


# Success
SENDER_OK = Reply(250, "2.1.0", "sender ok")
RECIPIENT_OK = Reply(250, "2.1.5", "recipient ok")
QUEUED = Reply(250, "2.0.0", "queued as {queue_id}")
AUTH_OK = Reply(235, "2.7.0", "authentication successful")

# Connection admission
TOO_MANY_CONNECTIONS_FROM_IP = Reply(421, "4.7.0", "too many connections from your address, try again later")
TOO_MANY_CONNECTIONS = Reply(421, "4.3.2", "too many connections, try again later")

# Authentication
AUTH_REQUIRED = Reply(530, "5.7.0", "authentication required")
AUTH_FAILED = Reply(535, "5.7.8", "authentication credentials invalid")
AUTH_LOCKED_OUT = Reply(454, "4.7.0", "too many authentication failures, try again later")
AUTH_NEEDS_TLS = Reply(538, "5.7.11", "encryption required for authentication, use STARTTLS")
AUTH_BAD_BASE64 = Reply(501, "5.5.2", "cannot decode base64 in AUTH data")
AUTH_BAD_PLAIN = Reply(501, "5.5.2", "AUTH PLAIN data must be authzid NUL authcid NUL password")
AUTH_ABORTED = Reply(501, "5.7.0", "authentication aborted")
AUTH_UNKNOWN_MECHANISM = Reply(504, "5.5.4", "unrecognized authentication mechanism")
ALREADY_AUTHENTICATED = Reply(503, "5.5.1", "already authenticated")

# Envelope
SENDER_NOT_ALLOWED = Reply(550, "5.7.1", "<{sender}>: sender domain not allowed for this account")
BAD_SENDER_SYNTAX = Reply(553, "5.1.7", "bad sender address syntax")
BAD_RECIPIENT_SYNTAX = Reply(550, "5.1.3", "bad recipient address syntax")
BAD_ADDRESS_SYNTAX = Reply(553, "5.1.3", "bad address syntax")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "too many recipients")
NESTED_MAIL = Reply(503, "5.5.1", "nested MAIL command")
NEED_MAIL = Reply(503, "5.5.1", "need MAIL command first")
NEED_RCPT = Reply(503, "5.5.1", "need RCPT command first")

# Consent and suppression (the reason names come from gateway/ingest/rules.py)
RECIPIENT_SUPPRESSED = Reply(550, "5.7.1", "<{recipient}>: recipient suppressed ({reason})")
NO_CONSENT = Reply(550, "5.7.1", "<{recipient}>: no consent for list {list}")
UNKNOWN_LIST = Reply(550, "5.7.1", "<{recipient}>: unknown list ({list})")
FREQUENCY_CAPPED = Reply(550, "5.7.1", "<{recipient}>: frequency cap reached ({detail})")
CONSENT_CHECK_FAILED = Reply(451, "4.3.0", "temporary failure checking the recipient, try again")

# Content
START_DATA = Reply(354, "", "End data with <CR><LF>.<CR><LF>")
MESSAGE_TOO_BIG = Reply(552, "5.3.4", "message too big")
BARE_LINE_ENDING = Reply(554, "5.5.0", "bare CR or LF in message")
NUL_IN_MESSAGE = Reply(554, "5.6.0", "NUL character in message")
HEADER_TOO_BIG = Reply(552, "5.3.4", "message header section too big (over {limit} bytes)")
BAD_HEADER = Reply(550, "5.6.0", "malformed message header: {detail}")
STREAM_NOT_ALLOWED = Reply(550, "5.7.1", "stream {stream} not allowed for this account")
FROM_NOT_ALLOWED = Reply(550, "5.7.1", "From domain {domain} not allowed for this account")
NO_SIGNING_KEY = Reply(550, "5.7.1", "no DKIM key for From domain {domain}: mail from it would fail DMARC")
LINE_TOO_LONG = Reply(500, "5.5.2", "line too long (RFC 5321 allows 998 characters plus CRLF)")
COMMAND_TOO_LONG = Reply(500, "5.5.2", "command line too long")

IDLE_TIMEOUT = Reply(421, "4.4.2", "idle timeout, closing connection")

# Failures on our side
STORAGE_FAILURE = Reply(451, "4.3.0", "temporary storage failure, try again")
LOCAL_ERROR = Reply(451, "4.3.0", "local error in processing, try again")

# Protocol
SYNTAX_ERROR = Reply(500, "5.5.2", "syntax error")
NEED_EHLO = Reply(503, "5.5.1", "send EHLO first")
NEED_HELO = Reply(503, "5.5.1", "send HELO or EHLO first")
NOT_IMPLEMENTED = Reply(502, "5.5.1", "command not implemented")
SMTPUTF8_DISABLED = Reply(501, "5.5.4", "SMTPUTF8 is not enabled")
STRICT_ASCII = Reply(500, "5.5.2", "8-bit data in a command requires SMTPUTF8")
TLS_NOT_AVAILABLE = Reply(454, "4.7.0", "TLS not available")
STARTTLS_FIRST = Reply(530, "5.7.0", "must issue a STARTTLS command first")

_NAMES = {value: name.lower() for name, value in dict(globals()).items()
          if isinstance(value, Reply)}

# aiosmtpd's own reply lines, mapped to the table (exact text or prefix).
_AIOSMTPD_EXACT = {
    "500 Command line too long": COMMAND_TOO_LONG,
    "500 Line too long (see RFC5321 4.5.3.1.6)": LINE_TOO_LONG,
    "552 Error: Too much mail data": MESSAGE_TOO_BIG,
    "552 Error: message size exceeds fixed maximum message size": MESSAGE_TOO_BIG,
    "500 Error: bad syntax": SYNTAX_ERROR,
    "500 Error: strict ASCII mode": STRICT_ASCII,
    "503 Error: need MAIL command": NEED_MAIL,
    "503 Error: need RCPT command": NEED_RCPT,
    "503 Error: nested MAIL command": NESTED_MAIL,
    "553 5.1.3 Error: malformed address": BAD_ADDRESS_SYNTAX,
    "530 5.7.0 Authentication required": AUTH_REQUIRED,
    "535 5.7.8 Authentication credentials invalid": AUTH_FAILED,
    "538 5.7.11 Encryption required for requested authentication mechanism": AUTH_NEEDS_TLS,
    "501 5.5.2 Can't decode base64": AUTH_BAD_BASE64,
    "501 5.5.2 Can't split auth value": AUTH_BAD_PLAIN,
    "501 5.7.0 Auth aborted": AUTH_ABORTED,
    "504 5.5.4 Unrecognized authentication type": AUTH_UNKNOWN_MECHANISM,
    "503 Already authenticated": ALREADY_AUTHENTICATED,
    "501 Error: SMTPUTF8 disabled": SMTPUTF8_DISABLED,
    "454 TLS not available": TLS_NOT_AVAILABLE,
    "530 Must issue a STARTTLS command first": STARTTLS_FIRST,
    "502 EXPN not implemented": NOT_IMPLEMENTED,
    "503 Error: send HELO first": NEED_HELO,
    "503 Error: send EHLO first": NEED_EHLO,
}
_AIOSMTPD_PREFIX = (
    ("500 Error: command ", SYNTAX_ERROR),
    ("502 Could not VRFY", Reply(252, "2.5.0", "cannot VRFY user, but will accept message")),
)


def translate(line: str) -> str:
    """Rewrite an aiosmtpd-generated reply into the table's wording; others pass through."""
    reply = _AIOSMTPD_EXACT.get(line)
    if reply is not None:
        return str(reply)
    for prefix, mapped in _AIOSMTPD_PREFIX:
        if line.startswith(prefix):
            return str(mapped)
    return line
