"""How the running gateway writes its log: readable text, or one JSON object per line.

Log lines pass through many hands (journald, a log shipper, a ticket), so recipient
addresses are personal data the operator must opt in to: by default every address in a
line is replaced by the start of its SHA-256 address_hash plus its domain
(``3f9a2c1b@example.net``). That lets one follow a person through the log without writing
the address; it is not a secret (whoever holds a candidate address can test it), only a
way not to spread addresses further than the operator chose.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any, Literal

from gateway.ingest.addresses import address_hash

LogFormat = Literal["text", "json"]

# Wide on purpose: a false positive costs a few characters, a miss leaks an address.
_ADDRESS = re.compile(r"[^\s<>()\[\]\",;:@]+@([A-Za-z0-9.-]+\.[A-Za-z0-9-]{2,}|\[[0-9A-Fa-f:.]+\])")

# Attributes every LogRecord has; anything else was passed with ``extra=`` and is kept.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def redact_addresses(text: str) -> str:
    """Each address becomes the first 8 hex digits of its address_hash, '@', its domain."""
    return _ADDRESS.sub(lambda match: f"{address_hash(match.group(0))[:8]}@{match.group(1)}", text)


class _Redacting(logging.Formatter):
    def __init__(self, fmt: str | None = None, *, addresses: bool) -> None:
        super().__init__(fmt)
        self.addresses = addresses

    def clean(self, text: str) -> str:
        return text if self.addresses else redact_addresses(text)


class TextFormatter(_Redacting):
    def format(self, record: logging.LogRecord) -> str:
        return self.clean(super().format(record))


class JsonFormatter(_Redacting):
    """One object per line: time, level, logger, message, then any ``extra=`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": self.clean(record.getMessage()),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = self.clean(value) if isinstance(value, str) else value
        if record.exc_info:
            entry["exception"] = self.clean(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure(level: str, log_format: LogFormat, *, addresses: bool) -> None:
    """Text goes to stderr as before; JSON to stdout, where log collectors expect it."""
    handler = logging.StreamHandler(sys.stdout if log_format == "json" else sys.stderr)
    formatter: logging.Formatter = (JsonFormatter(addresses=addresses) if log_format == "json"
                                    else TextFormatter(TEXT_FORMAT, addresses=addresses))
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
    intake = logging.getLogger("mail.log")
    intake.setLevel(logging.WARNING)  # aiosmtpd's per-command chatter
    if not any(isinstance(f, _LibraryDeprecations) for f in intake.filters):
        intake.addFilter(_LibraryDeprecations())


class _LibraryDeprecations(logging.Filter):
    """aiosmtpd 1.4 logs a warning about its own deprecated ``Session.login_data`` on every
    successful AUTH (it sets the attribute itself): one line per login that an operator can
    do nothing about. Everything else from aiosmtpd passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "login_data is deprecated" not in record.getMessage()
