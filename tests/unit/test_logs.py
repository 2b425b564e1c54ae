"""The log formats: addresses stay out unless the operator asks for them."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from gateway import logs
from gateway.ingest.addresses import address_hash
from gateway.logs import JsonFormatter, TextFormatter, redact_addresses


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    entry = logging.LogRecord("gateway.queue", logging.INFO, __file__, 1, message, args, None)
    entry.__dict__.update(extra)
    return entry


def test_an_address_becomes_its_digest_and_domain() -> None:
    line = redact_addresses("0192 Alice@Example.NET delivered: 250 ok <bob@example.org>")
    assert line == (f"0192 {address_hash('Alice@Example.NET')[:8]}@Example.NET delivered: 250 ok "
                    f"<{address_hash('bob@example.org')[:8]}@example.org>")


def test_the_digest_matches_trace_hashes_whatever_the_case() -> None:
    assert redact_addresses("A@B.example") == redact_addresses("a@b.example").replace("b.example", "B.example")


def test_text_without_addresses_is_untouched() -> None:
    text = "policy reloaded from policies; 3 deliveries @ 5/s to mx.example.net[127.0.1.5]:25"
    assert redact_addresses(text) == text


def test_json_lines_carry_extra_fields_and_redact_them() -> None:
    line = JsonFormatter(addresses=False).format(
        record("%s %s", "Q1", "carol@example.net", queue_id="Q1", recipient="carol@example.net", attempts=2))
    entry = json.loads(line)
    assert entry["level"] == "info" and entry["logger"] == "gateway.queue"
    assert "carol@" not in line
    assert entry["queue_id"] == "Q1" and entry["attempts"] == 2
    assert entry["recipient"].endswith("@example.net")
    assert entry["time"].endswith("+00:00")


def test_operators_can_choose_to_log_addresses() -> None:
    assert "carol@example.net" in TextFormatter("%(message)s", addresses=True).format(
        record("to %s", "carol@example.net"))
    assert "carol@example.net" not in TextFormatter("%(message)s", addresses=False).format(
        record("to %s", "carol@example.net"))


def test_exceptions_are_one_json_line() -> None:
    try:
        raise ValueError("bad <dave@example.net>")
    except ValueError:
        entry = record("failed")
        entry.exc_info = sys.exc_info()
    line = JsonFormatter(addresses=False).format(entry)
    assert "\n" not in line and "dave@" not in line
    assert "ValueError" in json.loads(line)["exception"]


def test_aiosmtpd_deprecation_noise_is_dropped_and_its_other_warnings_kept(
        capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        logs.configure("info", "json", addresses=False)
        logs.configure("info", "json", addresses=False)  # twice: still one filter
        intake = logging.getLogger("mail.log")
        intake.warning("Session.login_data is deprecated and will be removed in version 2.0")
        intake.warning("client sent a line too long")
        lines = capsys.readouterr().out.splitlines()
        assert [json.loads(line)["message"] for line in lines] == ["client sent a line too long"]
        assert len(intake.filters) == 1
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
