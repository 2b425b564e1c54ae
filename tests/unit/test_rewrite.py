"""Unit tests for the pure rewrite layer: header parsing, intake edits, tokens and per-recipient copies.

Every sample message here is written for these tests (addresses under example.* domains).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import re
from collections.abc import Callable
from datetime import UTC, datetime

import dkim
import pytest

from gateway.rewrite import headers as h
from gateway.rewrite.copies import Copy, CopyRules, Recipient, make_copy, return_path
from gateway.rewrite.headers import Header, HeaderProblem
from gateway.rewrite.message import Controls, HeaderRules, Origin, feedback_id, prepare, read_controls
from gateway.rewrite.tokens import TOKEN_LENGTH, BadToken, Binding, Purpose, TokenCodec, TokenParts
from gateway.signing import keys, signer

# --------------------------------------------------------------------------- shared samples

SECRET_1 = bytes(range(32))
SECRET_2 = bytes(range(100, 140))
TOKEN_SHAPE = re.compile(r"[a-z2-7]{40}")

SIMPLE_MESSAGE = (
    b"From: Newsletter <news@shop.example.com>\r\n"
    b"To: Ann Reader <ann.reader@inbox.example.org>\r\n"
    b"Subject: Spring offers\r\n"
    b"\r\n"
    b"Hello Ann,\r\n"
    b"\r\n"
    b"our spring offers are here.\r\n"
)


def fields(*lines: str) -> list[Header]:
    """Header fields parsed from text lines (each without its CRLF)."""
    return h.parse_fields("".join(line + "\r\n" for line in lines).encode("utf-8"))


def names(headers: list[Header]) -> list[bytes]:
    return [name for name, _ in headers]


# --------------------------------------------------------------------------- headers.py: split/join


def test_split_message_normal() -> None:
    headers, body = h.split_message(SIMPLE_MESSAGE)
    assert headers == [
        (b"From", b" Newsletter <news@shop.example.com>\r\n"),
        (b"To", b" Ann Reader <ann.reader@inbox.example.org>\r\n"),
        (b"Subject", b" Spring offers\r\n"),
    ]
    # The body starts after the first empty line; later empty lines belong to the body.
    assert body == b"Hello Ann,\r\n\r\nour spring offers are here.\r\n"
    assert h.join_message(headers, body) == SIMPLE_MESSAGE


def test_split_message_without_blank_line_is_all_headers() -> None:
    headers, body = h.split_message(b"From: a@example.com\r\nSubject: only headers\r\n")
    assert headers == [(b"From", b" a@example.com\r\n"), (b"Subject", b" only headers\r\n")]
    assert body == b""


def test_split_message_without_blank_line_or_final_crlf() -> None:
    headers, body = h.split_message(b"From: a@example.com\r\nSubject: cut short")
    assert headers == [(b"From", b" a@example.com\r\n"), (b"Subject", b" cut short\r\n")]
    assert body == b""
    # Joining adds the missing line ends and the empty line: the result is a well-formed message.
    assert h.join_message(headers, body) == b"From: a@example.com\r\nSubject: cut short\r\n\r\n"


def test_split_message_with_empty_body() -> None:
    data = b"From: a@example.com\r\n\r\n"
    headers, body = h.split_message(data)
    assert headers == [(b"From", b" a@example.com\r\n")]
    assert body == b""
    assert h.join_message(headers, body) == data


def test_split_message_starting_with_crlf_has_no_headers() -> None:
    data = b"\r\nFrom: looks like a header but is body\r\n\r\nmore\r\n"
    headers, body = h.split_message(data)
    assert headers == []
    assert body == b"From: looks like a header but is body\r\n\r\nmore\r\n"
    assert h.join_message(headers, body) == data


ROUND_TRIP_MESSAGES = {
    "folded with spaces and tabs": (
        b"From: a@example.com\r\n"
        b"Subject: a subject that is\r\n"
        b"  folded over\r\n"
        b"\tthree lines\r\n"
        b"\r\n"
        b"body\r\n"
    ),
    "duplicate headers": (
        b"Received: from one.example.net by two.example.net; Mon, 2 Mar 2026 10:00:00 +0000\r\n"
        b"Received: from zero.example.net by one.example.net;\r\n"
        b"\tMon, 2 Mar 2026 09:59:59 +0000\r\n"
        b"From: a@example.com\r\n"
        b"To: b@example.org\r\n"
        b"To: c@example.org\r\n"
        b"\r\n"
        b"body\r\n"
    ),
    "8-bit UTF-8 values": (
        "From: Jürgen Groß <juergen@example.com>\r\n"
        "Subject: Grüße aus Köln ✓ 東京\r\n"
        "\r\n"
        "Schöne Grüße\r\n"
    ).encode(),
    "no CRLF after the body": (
        b"From: a@example.com\r\n"
        b"Subject: last line open\r\n"
        b"\r\n"
        b"first line\r\n"
        b"last line without its CRLF"
    ),
    "odd but valid spacing": (
        b"From:a@example.com\r\n"
        b"X-Empty:\r\n"
        b"X-Trailing: value with trailing blanks  \t\r\n"
        b"X-Many-Spaces:     five spaces\r\n"
        b"\r\n"
        b"\r\n"
        b"body that starts with an empty line\r\n"
    ),
    "body holding header-like lines and empty lines": (
        b"From: a@example.com\r\n"
        b"\r\n"
        b"From: not a header\r\n"
        b"\r\n"
        b"\r\n"
        b" indented body line\r\n"
    ),
}


@pytest.mark.parametrize("data", list(ROUND_TRIP_MESSAGES.values()), ids=list(ROUND_TRIP_MESSAGES))
def test_split_join_round_trip_is_byte_exact(data: bytes) -> None:
    headers, body = h.split_message(data)
    assert h.join_message(headers, body) == data


def test_blanks_before_the_colon_survive_and_compare_equal() -> None:
    data = b"Subject : x\r\nX-Gateway-List\t: news\r\n\r\nb"
    headers, body = h.split_message(data)
    assert h.join_message(headers, body) == data
    assert h.values(headers, b"subject") == ["x"]
    assert h.without(headers, prefixes=[b"X-Gateway-"]) == [(b"Subject ", b" x\r\n")]


def test_folded_value_keeps_its_raw_bytes() -> None:
    headers, _ = h.split_message(ROUND_TRIP_MESSAGES["folded with spaces and tabs"])
    assert headers[1] == (b"Subject", b" a subject that is\r\n  folded over\r\n\tthree lines\r\n")


def test_duplicate_headers_stay_separate_and_in_order() -> None:
    headers, _ = h.split_message(ROUND_TRIP_MESSAGES["duplicate headers"])
    assert names(headers) == [b"Received", b"Received", b"From", b"To", b"To"]
    assert h.values(headers, b"to") == ["b@example.org", "c@example.org"]


def test_8bit_values_are_kept_as_utf8_bytes() -> None:
    headers, _ = h.split_message(ROUND_TRIP_MESSAGES["8-bit UTF-8 values"])
    assert headers[1] == (b"Subject", " Grüße aus Köln ✓ 東京\r\n".encode())
    assert h.values(headers, b"subject") == ["Grüße aus Köln ✓ 東京"]


@pytest.mark.parametrize(("data", "line"), [
    (b"From: a@example.com\r\nthis line has no colon\r\n\r\nbody", 2),
    (b"From: a@example.com\r\nSubject: ok\r\n: empty name\r\n\r\nbody", 3),
    (b"From: a@example.com\r\nTo: b@example.org\r\nSubject: ok\r\nBad Name: space in name\r\n\r\n", 4),
    (b"no header at all, just text\r\n\r\nbody", 1),
])
def test_non_header_line_names_its_line_number(data: bytes, line: int) -> None:
    with pytest.raises(HeaderProblem, match=rf"header line {line} is not a header field"):
        h.split_message(data)


@pytest.mark.parametrize("data", [
    b" folded first\r\nFrom: a@example.com\r\n\r\nbody",
    b"\tfolded first\r\nFrom: a@example.com\r\n\r\nbody",
])
def test_leading_folded_line_is_refused(data: bytes) -> None:
    with pytest.raises(HeaderProblem, match="folded"):
        h.split_message(data)


# --------------------------------------------------------------------------- headers.py: helpers


def test_values_unfolds_strips_and_ignores_case() -> None:
    headers = h.parse_fields(
        b"Subject: first\r\n part\r\n"
        b"X-Tag:  one  \r\n"
        b"x-tag: two,\r\n\tthree\r\n"
    )
    assert h.values(headers, b"Subject") == ["first part"]
    assert h.values(headers, b"SUBJECT") == ["first part"]
    assert h.values(headers, b"x-TAG") == ["one", "two,\tthree"]
    assert h.values(headers, b"X-Missing") == []


def test_has_ignores_case() -> None:
    headers = fields("Message-Id: <1@example.com>")
    assert h.has(headers, b"message-id")
    assert h.has(headers, b"MESSAGE-ID")
    assert not h.has(headers, b"Date")


def test_field_adds_one_space_and_crlf() -> None:
    assert h.field(b"X-New", "välue") == (b"X-New", " välue\r\n".encode())
    assert h.field(b"X-Raw", b"raw") == (b"X-Raw", b" raw\r\n")


def test_without_names_is_case_insensitive_and_keeps_order() -> None:
    headers = fields("From: a@example.com", "X-Drop: 1", "Subject: s", "x-drop: 2", "X-DROP: 3", "To: b@example.org")
    kept = h.without(headers, [b"x-Drop"])
    assert names(kept) == [b"From", b"Subject", b"To"]
    assert kept == [headers[0], headers[2], headers[5]]  # untouched fields keep their bytes


def test_without_prefixes_is_case_insensitive() -> None:
    headers = fields("X-Internal-Id: 1", "x-internal-route: r", "X-Internally: kept", "From: a@example.com",
                     "X-Secret: s")
    kept = h.without(headers, names=[b"X-SECRET"], prefixes=[b"X-INTERNAL-"])
    assert names(kept) == [b"X-Internally", b"From"]


def test_without_nothing_returns_a_copy() -> None:
    headers = fields("From: a@example.com", "To: b@example.org")
    kept = h.without(headers)
    assert kept == headers
    assert kept is not headers


# --------------------------------------------------------------------------- headers.py: author_domain


@pytest.mark.parametrize(("from_line", "domain"), [
    ("From: news@shop.example.com", "shop.example.com"),
    ("From: Shop News <news@shop.example.com>", "shop.example.com"),
    ('From: "Doe, John" <john@example.com>', "example.com"),
    ('From: "someone@evil.example" <john@good.example>', "good.example"),
    ("From: John <John.Doe@MAIL.Example.COM>", "mail.example.com"),
    ("From: Bücher Laden <info@bücher.example>", "xn--bcher-kva.example"),
    ("From: info@BÜCHER.example", "xn--bcher-kva.example"),
    ("From: info@xn--bcher-kva.example", "xn--bcher-kva.example"),
    ("From: news@example.com.", "example.com"),
    # IDNA 2008, as DNS uses it: ß is its own letter (IDNA 2003 mapped it to "ss").
    ("From: a@straße.example", "xn--strae-oqa.example"),
])
def test_author_domain(from_line: str, domain: str) -> None:
    headers = fields("To: x@example.org", from_line, "Subject: s")
    assert h.author_domain(headers) == domain


def test_author_domain_of_folded_from() -> None:
    headers = h.parse_fields(b"from: Long Display Name\r\n <news@Example.com>\r\n")
    assert h.author_domain(headers) == "example.com"


@pytest.mark.parametrize(("lines", "problem"), [
    (["To: x@example.org", "Subject: no author"], "no From header"),
    (["From: a@example.com", "From: b@example.com"], "more than one From header"),
    (["From: a@example.com", "FROM: a@example.com"], "more than one From header"),
    (["From: a@example.com, b@example.org"], "exactly one address"),
    (['From: "A" <a@example.com>, "B" <b@example.org>'], "exactly one address"),
    (["From: "], "exactly one address"),
    (["From: <>"], "exactly one address"),
    (["From: john"], "no domain"),
    (["From: John <john>"], "no domain"),
    (["From: @example.com"], "no domain"),
])
def test_author_domain_refuses_unclear_authors(lines: list[str], problem: str) -> None:
    with pytest.raises(HeaderProblem, match=problem):
        h.author_domain(fields(*lines))


# --------------------------------------------------------------------------- message.py: read_controls

RULES = HeaderRules()
DEFAULTS = Controls(stream="transactional", list_key="default-list", campaign="default-campaign")


def test_read_controls_uses_defaults_without_headers() -> None:
    headers = fields("From: a@example.com", "Subject: s")
    assert read_controls(headers, RULES, DEFAULTS) == DEFAULTS
    assert read_controls(headers, RULES, Controls()) == Controls("transactional", "", "")


def test_read_controls_headers_override_defaults() -> None:
    headers = fields("From: a@example.com", "X-Gateway-Stream: marketing", "X-Gateway-List: weekly.news",
                     "X-Gateway-Campaign: spring_2026-v2")
    assert read_controls(headers, RULES, DEFAULTS) == Controls("marketing", "weekly.news", "spring_2026-v2")


def test_read_controls_overrides_one_value_at_a_time() -> None:
    headers = fields("From: a@example.com", "X-Gateway-List: offers")
    assert read_controls(headers, RULES, DEFAULTS) == Controls("transactional", "offers", "default-campaign")


@pytest.mark.parametrize(("value", "stream"), [
    ("Marketing", "marketing"),
    ("MARKETING", "marketing"),
    ("  marketing  ", "marketing"),
    ("Transactional", "transactional"),
])
def test_read_controls_stream_is_case_insensitive(value: str, stream: str) -> None:
    headers = fields(f"x-gateway-stream: {value}")
    assert read_controls(headers, RULES, DEFAULTS).stream == stream


@pytest.mark.parametrize("value", ["bulk", "market", "marketing transactional", ""])
def test_read_controls_refuses_unknown_stream(value: str) -> None:
    with pytest.raises(HeaderProblem, match="X-Gateway-Stream must be marketing or transactional"):
        read_controls(fields(f"X-Gateway-Stream: {value}"), RULES, DEFAULTS)


@pytest.mark.parametrize("value", [
    "weekly news",         # space
    "weekly:news",         # colon (would break Feedback-ID)
    "a" * 65,              # too long
    "-leading-dash",       # must start with a letter or digit
    "news/letter",
    "nëws",
    "",
])
def test_read_controls_refuses_bad_list_key(value: str) -> None:
    with pytest.raises(HeaderProblem, match="X-Gateway-List must be 1-64"):
        read_controls(fields(f"X-Gateway-List: {value}"), RULES, DEFAULTS)


def test_read_controls_refuses_bad_campaign() -> None:
    with pytest.raises(HeaderProblem, match="X-Gateway-Campaign must be 1-64"):
        read_controls(fields("X-Gateway-Campaign: spring sale"), RULES, DEFAULTS)


def test_read_controls_accepts_64_character_key() -> None:
    key = "k" + "0123456789._-" * 4 + "x" * 11
    assert len(key) == 64
    assert read_controls(fields(f"X-Gateway-List: {key}"), RULES, DEFAULTS).list_key == key


@pytest.mark.parametrize("name", ["X-Gateway-Stream", "X-Gateway-List", "X-Gateway-Campaign"])
def test_read_controls_refuses_duplicate_control_header(name: str) -> None:
    value = "marketing" if name.endswith("Stream") else "same"
    headers = fields(f"{name}: {value}", "Subject: s", f"{name.lower()}: {value}")
    with pytest.raises(HeaderProblem, match=f"more than one {name} header"):
        read_controls(headers, RULES, DEFAULTS)


CUSTOM_RULES = HeaderRules(stream_header=b"X-Acme-Stream", list_header=b"X-Acme-List",
                           campaign_header=b"X-Acme-Campaign")


def test_read_controls_with_custom_header_names() -> None:
    headers = fields("X-Acme-Stream: marketing", "x-acme-list: deals", "X-ACME-CAMPAIGN: june",
                     "X-Gateway-Stream: transactional", "X-Gateway-List: ignored")
    assert read_controls(headers, CUSTOM_RULES, DEFAULTS) == Controls("marketing", "deals", "june")
    # The default names mean nothing under custom rules.
    assert read_controls(fields("X-Gateway-List: ignored"), CUSTOM_RULES, DEFAULTS) == DEFAULTS


def test_read_controls_errors_name_custom_headers() -> None:
    with pytest.raises(HeaderProblem, match="X-Acme-Stream must be marketing or transactional"):
        read_controls(fields("X-Acme-Stream: bulk"), CUSTOM_RULES, DEFAULTS)
    with pytest.raises(HeaderProblem, match="X-Acme-List must be 1-64"):
        read_controls(fields("X-Acme-List: a:b"), CUSTOM_RULES, DEFAULTS)
    with pytest.raises(HeaderProblem, match="more than one X-Acme-Campaign header"):
        read_controls(fields("X-Acme-Campaign: a", "X-Acme-Campaign: a"), CUSTOM_RULES, DEFAULTS)


# --------------------------------------------------------------------------- message.py: prepare

ORIGIN = Origin(sender_id="acct-42", hostname="gw.example.com", queue_id="01JQ7Z3R8X4MCN5VYB2K6TW9DE",
                received_at=datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC))
MARKETING = Controls(stream="marketing", list_key="weekly", campaign="spring")


def _one(headers: list[Header], name: bytes) -> bytes:
    """The raw value of the single field ``name``; fails when it is absent or repeated."""
    found = [value for field_name, value in headers if field_name.lower() == name.lower()]
    assert len(found) == 1, f"{name!r} occurs {len(found)} times"
    return found[0]


def test_prepare_removes_control_and_internal_headers() -> None:
    headers = fields(
        "From: a@example.com",
        "X-Gateway-Stream: marketing",
        "x-gateway-list: weekly",
        "X-GATEWAY-CAMPAIGN: spring",
        "X-Gateway-Internal-Id: 12345",
        "X-Gateway-Anything-Else: secret",
        "To: b@example.org",
        "X-Gateways: not a control header",
    )
    prepared = prepare(headers, RULES, MARKETING, ORIGIN)
    assert not any(name.lower().startswith(b"x-gateway-") for name in names(prepared))
    assert names(prepared)[:3] == [b"From", b"To", b"X-Gateways"]
    assert prepared[:3] == [headers[0], headers[6], headers[7]]


def test_prepare_strips_configured_names_case_insensitively() -> None:
    rules = HeaderRules(strip=(b"X-Mailer-Host", b"x-php-originating-script"))
    headers = fields("From: a@example.com", "x-mailer-host: app-07.internal", "X-PHP-Originating-Script: 33:send.php",
                     "X-Mailer: kept", "Subject: s")
    prepared = prepare(headers, rules, MARKETING, ORIGIN)
    assert names(prepared)[:3] == [b"From", b"X-Mailer", b"Subject"]
    assert not h.has(prepared, b"X-Mailer-Host")
    assert not h.has(prepared, b"X-PHP-Originating-Script")


def test_prepare_strips_custom_control_headers_and_default_prefix() -> None:
    headers = fields("From: a@example.com", "X-Acme-Stream: marketing", "X-Acme-List: deals",
                     "X-Acme-Campaign: june", "X-Gateway-Stream: marketing", "X-Acme-Other: kept")
    prepared = prepare(headers, CUSTOM_RULES, MARKETING, ORIGIN)
    assert names(prepared)[:2] == [b"From", b"X-Acme-Other"]
    assert not any(name.startswith((b"X-Gateway-", b"X-Acme-Stream", b"X-Acme-List", b"X-Acme-Campaign"))
                   for name in names(prepared))


MAILER_UNSUBSCRIBE = (
    "From: a@example.com",
    "List-Unsubscribe: <https://mailer.example.com/optout?id=7>",
    "list-unsubscribe-post: List-Unsubscribe=One-Click",
    "Subject: s",
)


def test_prepare_replaces_mailer_list_unsubscribe_by_default() -> None:
    prepared = prepare(fields(*MAILER_UNSUBSCRIBE), RULES, MARKETING, ORIGIN)
    assert not h.has(prepared, b"List-Unsubscribe")
    assert not h.has(prepared, b"List-Unsubscribe-Post")


def test_prepare_keeps_mailer_list_unsubscribe_when_told() -> None:
    headers = fields(*MAILER_UNSUBSCRIBE)
    prepared = prepare(headers, HeaderRules(replace_list_unsubscribe=False), MARKETING, ORIGIN)
    assert prepared[:4] == headers


def test_prepare_adds_message_id_and_date_when_missing() -> None:
    prepared = prepare(fields("From: a@example.com", "Subject: s"), RULES, MARKETING, ORIGIN)
    assert _one(prepared, b"Message-ID") == b" <01JQ7Z3R8X4MCN5VYB2K6TW9DE@gw.example.com>\r\n"
    assert _one(prepared, b"Date") == b" Wed, 04 Mar 2026 05:06:07 +0000\r\n"
    assert names(prepared) == [b"From", b"Subject", b"Message-ID", b"Date", b"Feedback-ID"]


def test_prepare_keeps_existing_message_id_and_date_unchanged() -> None:
    headers = h.parse_fields(
        b"Date: Tue, 3 Mar 2026 23:59:59 -0800\r\n"
        b"From: a@example.com\r\n"
        b"message-id:\r\n <original.1234@mailer.example.com>\r\n"
    )
    prepared = prepare(headers, RULES, MARKETING, ORIGIN)
    assert prepared[:3] == headers
    assert _one(prepared, b"Message-ID") == b"\r\n <original.1234@mailer.example.com>\r\n"
    assert _one(prepared, b"Date") == b" Tue, 3 Mar 2026 23:59:59 -0800\r\n"


def test_prepare_sets_exactly_one_feedback_id() -> None:
    prepared = prepare(fields("From: a@example.com"), RULES, MARKETING, ORIGIN)
    assert _one(prepared, b"Feedback-ID") == b" spring:weekly:marketing:acct-42\r\n"


def test_prepare_replaces_mailer_feedback_id() -> None:
    headers = fields("Feedback-ID: forged:ids:here:x", "From: a@example.com", "feedback-id: second:one")
    prepared = prepare(headers, RULES, Controls(), ORIGIN)
    assert _one(prepared, b"Feedback-ID") == b" ::transactional:acct-42\r\n"
    assert names(prepared)[-1] == b"Feedback-ID"


def test_prepare_does_not_change_its_input() -> None:
    headers = fields("From: a@example.com", "X-Gateway-List: weekly")
    before = list(headers)
    prepare(headers, RULES, MARKETING, ORIGIN)
    assert headers == before


@pytest.mark.parametrize(("sender_id", "expected"), [
    ("acct-42", "acct-42"),
    ("Acme_Corp.EU", "Acme_Corp.EU"),
    ("acme:corp", "acme-corp"),
    ("acme corp:eu west", "acme-corp-eu-west"),
    ("café", "caf-"),
    ("", "gateway"),
    ("s" * 80, "s" * 64),
])
def test_feedback_id_sanitizes_sender(sender_id: str, expected: str) -> None:
    assert feedback_id(MARKETING, sender_id) == f"spring:weekly:marketing:{expected}"


def test_feedback_id_has_four_colon_separated_parts() -> None:
    value = feedback_id(Controls("transactional", "receipts", "q2"), "shop:main store")
    assert value.split(":") == ["q2", "receipts", "transactional", "shop-main-store"]


# --------------------------------------------------------------------------- tokens.py

BINDING = Binding(recipient="marguerite.dupont@mailbox.example.org", list_key="weekly", campaign="spring")
DELIVERY_ID = 9_876_543_210


@pytest.fixture
def codec() -> TokenCodec:
    return TokenCodec({1: SECRET_1}, current=1)


def _accepts(codec: TokenCodec, token: str, purpose: Purpose, binding: Binding) -> bool:
    """True when the token parses and verifies; False when either step raises BadToken."""
    try:
        codec.verify(codec.parse(token), purpose, binding)
    except BadToken:
        return False
    return True


@pytest.mark.parametrize("purpose", list(Purpose))
def test_token_round_trip(codec: TokenCodec, purpose: Purpose) -> None:
    token = codec.issue(purpose, DELIVERY_ID, BINDING)
    parts = codec.parse(token)
    assert parts.key_id == 1
    assert parts.delivery_id == DELIVERY_ID
    assert len(parts.mac) == 16
    codec.verify(parts, purpose, BINDING)  # does not raise


@pytest.mark.parametrize("delivery_id", [0, 1, 2**63 - 1])
def test_token_round_trip_at_delivery_id_limits(codec: TokenCodec, delivery_id: int) -> None:
    token = codec.issue(Purpose.UNSUBSCRIBE, delivery_id, BINDING)
    assert codec.parse(token).delivery_id == delivery_id
    assert _accepts(codec, token, Purpose.UNSUBSCRIBE, BINDING)


def test_token_shape_and_no_address_inside(codec: TokenCodec) -> None:
    for purpose in Purpose:
        token = codec.issue(purpose, DELIVERY_ID, BINDING)
        assert len(token) == TOKEN_LENGTH == 40
        assert TOKEN_SHAPE.fullmatch(token), token
        raw = base64.b32decode(token.upper())
        assert len(raw) == 25
        for part in ("marguerite", "dupont", "mailbox", "example", "org", "weekly", "spring"):
            assert part not in token
            assert part.encode() not in raw


def test_token_is_deterministic(codec: TokenCodec) -> None:
    assert codec.issue(Purpose.VERP, 5, BINDING) == codec.issue(Purpose.VERP, 5, BINDING)
    assert codec.issue(Purpose.VERP, 5, BINDING) != codec.issue(Purpose.VERP, 6, BINDING)


def test_upper_case_token_still_verifies(codec: TokenCodec) -> None:
    token = codec.issue(Purpose.UNSUBSCRIBE, DELIVERY_ID, BINDING)
    parts = codec.parse(token.upper())
    assert parts == codec.parse(token)
    codec.verify(parts, Purpose.UNSUBSCRIBE, BINDING)


@pytest.mark.parametrize("purpose", list(Purpose))
def test_every_single_bit_flip_is_rejected(codec: TokenCodec, purpose: Purpose) -> None:
    token = codec.issue(purpose, DELIVERY_ID, BINDING)
    raw = base64.b32decode(token.upper())
    assert len(raw) * 8 == 200
    accepted = []
    for bit in range(200):
        flipped = bytearray(raw)
        flipped[bit // 8] ^= 0x80 >> (bit % 8)
        forged = base64.b32encode(bytes(flipped)).decode("ascii").lower()
        assert forged != token
        if _accepts(codec, forged, purpose, BINDING):
            accepted.append(bit)
    assert accepted == []


@pytest.mark.parametrize(("purpose", "binding"), [
    (Purpose.VERP, BINDING),
    (Purpose.UNSUBSCRIBE, Binding("someone.else@mailbox.example.org", "weekly", "spring")),
    (Purpose.UNSUBSCRIBE, Binding("Marguerite.Dupont@mailbox.example.org", "weekly", "spring")),
    (Purpose.UNSUBSCRIBE, Binding(BINDING.recipient, "monthly", "spring")),
    (Purpose.UNSUBSCRIBE, Binding(BINDING.recipient, "", "spring")),
    (Purpose.UNSUBSCRIBE, Binding(BINDING.recipient, "weekly", "autumn")),
    (Purpose.UNSUBSCRIBE, Binding(BINDING.recipient, "weekly", "")),
    (Purpose.UNSUBSCRIBE, Binding(BINDING.recipient, "weeklys", "pring")),
], ids=["purpose", "recipient", "recipient-case", "list", "no-list", "campaign", "no-campaign", "shifted"])
def test_token_bound_to_purpose_recipient_list_and_campaign(
        codec: TokenCodec, purpose: Purpose, binding: Binding) -> None:
    token = codec.issue(Purpose.UNSUBSCRIBE, DELIVERY_ID, BINDING)
    with pytest.raises(BadToken, match="MAC"):
        codec.verify(codec.parse(token), purpose, binding)


def test_verp_token_is_not_an_unsubscribe_token(codec: TokenCodec) -> None:
    verp = codec.issue(Purpose.VERP, DELIVERY_ID, BINDING)
    assert verp != codec.issue(Purpose.UNSUBSCRIBE, DELIVERY_ID, BINDING)
    assert not _accepts(codec, verp, Purpose.UNSUBSCRIBE, BINDING)


def test_token_from_another_secret_is_rejected(codec: TokenCodec) -> None:
    stranger = TokenCodec({1: SECRET_2}, current=1)
    token = stranger.issue(Purpose.UNSUBSCRIBE, DELIVERY_ID, BINDING)
    assert not _accepts(codec, token, Purpose.UNSUBSCRIBE, BINDING)


def test_other_delivery_id_with_the_same_mac_is_rejected(codec: TokenCodec) -> None:
    parts = codec.parse(codec.issue(Purpose.UNSUBSCRIBE, DELIVERY_ID, BINDING))
    with pytest.raises(BadToken):
        codec.verify(TokenParts(parts.key_id, DELIVERY_ID + 1, parts.mac), Purpose.UNSUBSCRIBE, BINDING)


def test_key_rotation() -> None:
    old = TokenCodec({1: SECRET_1}, current=1)
    rotating = TokenCodec({1: SECRET_1, 2: SECRET_2}, current=2)
    retired = TokenCodec({2: SECRET_2}, current=2)

    old_token = old.issue(Purpose.UNSUBSCRIBE, DELIVERY_ID, BINDING)
    assert old.parse(old_token).key_id == 1
    assert _accepts(rotating, old_token, Purpose.UNSUBSCRIBE, BINDING)

    new_token = rotating.issue(Purpose.UNSUBSCRIBE, DELIVERY_ID, BINDING)
    assert rotating.parse(new_token).key_id == 2
    assert new_token != old_token
    assert _accepts(rotating, new_token, Purpose.UNSUBSCRIBE, BINDING)
    assert _accepts(retired, new_token, Purpose.UNSUBSCRIBE, BINDING)
    assert not _accepts(old, new_token, Purpose.UNSUBSCRIBE, BINDING)

    with pytest.raises(BadToken, match="unknown key"):
        retired.parse(old_token)


@pytest.mark.parametrize(("secrets", "current", "problem"), [
    ({1: SECRET_1}, 2, "not among the configured keys"),
    ({}, 0, "not among the configured keys"),
    ({1: SECRET_1[:31]}, 1, "use at least 32"),
    ({1: SECRET_1, 2: b""}, 1, "token key 2 is 0 bytes"),
    ({256: SECRET_1}, 256, "must be 0..255"),
    ({1: SECRET_1, -1: SECRET_2}, 1, "must be 0..255"),
])
def test_invalid_codec_construction(secrets: dict[int, bytes], current: int, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        TokenCodec(secrets, current)


def test_codec_construction_limits_are_accepted() -> None:
    codec = TokenCodec({0: SECRET_1, 255: b"\xff" * 32}, current=255)
    token = codec.issue(Purpose.VERP, 1, BINDING)
    assert codec.parse(token).key_id == 255
    assert _accepts(codec, token, Purpose.VERP, BINDING)


def _valid_token() -> str:
    return TokenCodec({1: SECRET_1}, current=1).issue(Purpose.UNSUBSCRIBE, DELIVERY_ID, BINDING)


@pytest.mark.parametrize("make", [
    lambda t: "",
    lambda t: t[:-1],
    lambda t: t + "a",
    lambda t: t[:-8],
    lambda t: t + t,
    lambda t: "0" * 40,
    lambda t: "1" * 40,
    lambda t: "8" * 40,
    lambda t: t[:39] + "!",
    lambda t: t[:20] + " " + t[21:],
    lambda t: t[:39] + "é",
    lambda t: "\u0131" * 40,  # dotless i, which upper-cases to ASCII "I"
    lambda t: t[:32] + "========",
], ids=["empty", "short", "long", "short-8", "double", "zeros", "ones", "eights", "punctuation",
        "space", "non-ascii", "dotless-i", "all-padding"])
def test_malformed_tokens_are_refused_by_parse(codec: TokenCodec, make: Callable[[str], str]) -> None:
    with pytest.raises(BadToken):
        codec.parse(make(_valid_token()))


@pytest.mark.parametrize("make", [
    lambda t: t[:34] + "======",
    lambda t: t[:39] + "=",
], ids=["six-pad", "one-pad"])
def test_padded_tokens_are_refused(codec: TokenCodec, make: Callable[[str], str]) -> None:
    with pytest.raises(BadToken):
        codec.parse(make(_valid_token()))


def test_ids_beyond_63_bits_are_neither_issued_nor_parsed(codec: TokenCodec) -> None:
    with pytest.raises(ValueError, match="63 bits"):
        codec.issue(Purpose.VERP, 2**63, BINDING)
    # Random tokens under a known key: none may name an id the database cannot hold.
    for n in range(300):
        token = "ae" + base64.b32encode(hashlib.sha256(str(n).encode()).digest()[:24]).decode().lower()[:38]
        with contextlib.suppress(BadToken):
            assert codec.parse(token).delivery_id < 2**63


def test_sequential_delivery_ids_do_not_show(codec: TokenCodec) -> None:
    first, second = (codec.issue(Purpose.UNSUBSCRIBE, n, BINDING) for n in (1, 2))
    # Byte 0 is the key id (characters 0-1); the masked id and the MAC follow.
    assert sum(a == b for a, b in zip(first[2:], second[2:], strict=True)) < 10
    assert "aaaaaa" not in first


# --------------------------------------------------------------------------- copies.py

COPY_RULES = CopyRules(public_url="https://gw.example.com/", bounce_domain="bounces.example.com")
TIMESTAMP = 1_700_000_000
UNSUBSCRIBE_VALUE = re.compile(
    r"<https://gw\.example\.com/u/(?P<url>[a-z2-7]{40})>, "
    r"<mailto:unsubscribe\+(?P<mailto>[a-z2-7]{40})@bounces\.example\.com>")

COPY_MESSAGE = (
    b"From: Shop News <news@example.com>\r\n"
    b"To: Ann Reader <ann.reader@inbox.example.org>\r\n"
    b"Subject: Spring offers, folded over\r\n"
    b"\ttwo lines\r\n"
    b"Date: Wed, 04 Mar 2026 05:06:07 +0000\r\n"
    b"Message-ID: <01JQ7Z3R8X4MCN5VYB2K6TW9DE@gw.example.com>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Feedback-ID: spring:weekly:marketing:acct-42\r\n"
    b"\r\n"
    b"Hello Ann,\r\n"
    b"\r\n"
    b"our spring offers are here.   \r\n"
    b"\r\n"
    b"\r\n"
)


def _recipient(stream: str = "marketing", mail_from: str = "news@example.com",
               delivery_id: int = 4711) -> Recipient:
    controls = Controls(stream="marketing" if stream == "marketing" else "transactional",
                        list_key="weekly", campaign="spring")
    return Recipient(delivery_id=delivery_id, address="ann.reader@inbox.example.org", mail_from=mail_from,
                     controls=controls)


def _copy(codec: TokenCodec, recipient: Recipient, rules: CopyRules = COPY_RULES,
          data: bytes = COPY_MESSAGE, signing: tuple[keys.SigningKey, ...] = ()) -> Copy:
    headers, body = h.split_message(data)
    return make_copy(headers, body, signer.body_hash(body), recipient, signing, codec, rules, TIMESTAMP)


def _binding(recipient: Recipient) -> Binding:
    return Binding(recipient.address, recipient.controls.list_key, recipient.controls.campaign)


def test_marketing_copy_gets_one_click_unsubscribe(codec: TokenCodec) -> None:
    recipient = _recipient()
    copy = _copy(codec, recipient)
    headers, body = h.split_message(copy.data)

    unsubscribe = _one(headers, b"List-Unsubscribe").decode("ascii")
    match = UNSUBSCRIBE_VALUE.fullmatch(unsubscribe.strip())
    assert match is not None, unsubscribe
    token = match["url"]
    assert match["mailto"] == token
    assert unsubscribe == (f" <https://gw.example.com/u/{token}>, "
                           f"<mailto:unsubscribe+{token}@bounces.example.com>\r\n")
    assert _one(headers, b"List-Unsubscribe-Post") == b" List-Unsubscribe=One-Click\r\n"

    parts = codec.parse(token)
    assert parts.delivery_id == recipient.delivery_id
    codec.verify(parts, Purpose.UNSUBSCRIBE, _binding(recipient))
    assert body == h.split_message(COPY_MESSAGE)[1]


def test_public_url_without_trailing_slash(codec: TokenCodec) -> None:
    rules = CopyRules(public_url="https://gw.example.com", bounce_domain="bounces.example.com")
    headers, _ = h.split_message(_copy(codec, _recipient(), rules).data)
    assert UNSUBSCRIBE_VALUE.fullmatch(h.values(headers, b"List-Unsubscribe")[0])


def test_copy_keeps_original_fields_and_body(codec: TokenCodec) -> None:
    original, body = h.split_message(COPY_MESSAGE)
    copy = _copy(codec, _recipient())
    headers, copy_body = h.split_message(copy.data)
    assert headers[:len(original)] == original
    assert names(headers[len(original):]) == [b"List-Unsubscribe", b"List-Unsubscribe-Post"]
    assert copy_body == body
    assert copy.data.endswith(b"\r\n\r\n" + body)


def test_transactional_copy_has_no_unsubscribe_by_default(codec: TokenCodec) -> None:
    copy = _copy(codec, _recipient(stream="transactional"))
    headers, _ = h.split_message(copy.data)
    assert not h.has(headers, b"List-Unsubscribe")
    assert not h.has(headers, b"List-Unsubscribe-Post")
    assert copy.data == COPY_MESSAGE


def test_transactional_copy_gets_unsubscribe_when_configured(codec: TokenCodec) -> None:
    rules = CopyRules(public_url="https://gw.example.com/", bounce_domain="bounces.example.com",
                      transactional_list_unsubscribe=True)
    recipient = _recipient(stream="transactional")
    headers, _ = h.split_message(_copy(codec, recipient, rules).data)
    match = UNSUBSCRIBE_VALUE.fullmatch(_one(headers, b"List-Unsubscribe").decode().strip())
    assert match is not None
    assert _one(headers, b"List-Unsubscribe-Post") == b" List-Unsubscribe=One-Click\r\n"
    assert _accepts(codec, match["url"], Purpose.UNSUBSCRIBE, _binding(recipient))


def test_kept_mailer_unsubscribe_is_not_doubled(codec: TokenCodec) -> None:
    data = COPY_MESSAGE.replace(
        b"MIME-Version: 1.0\r\n",
        b"list-unsubscribe: <https://mailer.example.com/optout?u=7>\r\n"
        b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
        b"MIME-Version: 1.0\r\n")
    copy = _copy(codec, _recipient(), data=data)
    headers, _ = h.split_message(copy.data)
    assert _one(headers, b"List-Unsubscribe") == b" <https://mailer.example.com/optout?u=7>\r\n"
    assert _one(headers, b"List-Unsubscribe-Post") == b" List-Unsubscribe=One-Click\r\n"
    assert copy.data == data


def test_stray_list_unsubscribe_post_is_replaced_not_doubled(codec: TokenCodec) -> None:
    data = COPY_MESSAGE.replace(b"MIME-Version: 1.0\r\n",
                                b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\nMIME-Version: 1.0\r\n")
    headers, _ = h.split_message(_copy(codec, _recipient(), data=data).data)
    assert h.values(headers, b"List-Unsubscribe-Post") == ["List-Unsubscribe=One-Click"]
    assert len(h.values(headers, b"List-Unsubscribe")) == 1


def test_return_path_is_a_verp_address(codec: TokenCodec) -> None:
    recipient = _recipient()
    copy = _copy(codec, recipient)
    local, _, domain = copy.mail_from.partition("@")
    assert domain == "bounces.example.com"
    assert local.startswith("b+")
    verp_token = local.removeprefix("b+")
    assert TOKEN_SHAPE.fullmatch(verp_token)
    assert _accepts(codec, verp_token, Purpose.VERP, _binding(recipient))
    assert not _accepts(codec, verp_token, Purpose.UNSUBSCRIBE, _binding(recipient))

    headers, _ = h.split_message(copy.data)
    match = UNSUBSCRIBE_VALUE.fullmatch(h.values(headers, b"List-Unsubscribe")[0])
    assert match is not None
    assert match["url"] != verp_token
    assert not _accepts(codec, match["url"], Purpose.VERP, _binding(recipient))
    assert return_path(recipient, codec, COPY_RULES) == copy.mail_from


def test_each_recipient_gets_its_own_tokens(codec: TokenCodec) -> None:
    first = _copy(codec, _recipient(delivery_id=1))
    second = _copy(codec, _recipient(delivery_id=2))
    assert first.mail_from != second.mail_from
    assert first.data != second.data
    assert _copy(codec, _recipient(delivery_id=1)) == first  # same delivery, same bytes


def test_null_sender_stays_null(codec: TokenCodec) -> None:
    assert _copy(codec, _recipient(mail_from="")).mail_from == ""
    assert _copy(codec, _recipient(stream="transactional", mail_from="")).mail_from == ""


def test_verp_off_keeps_mail_from(codec: TokenCodec) -> None:
    rules = CopyRules(public_url="https://gw.example.com/", bounce_domain="bounces.example.com", verp=False)
    assert _copy(codec, _recipient(), rules).mail_from == "news@example.com"


def test_copy_without_keys_has_no_signature(codec: TokenCodec) -> None:
    headers, _ = h.split_message(_copy(codec, _recipient()).data)
    assert not h.has(headers, b"DKIM-Signature")


def test_make_copy_does_not_change_its_input(codec: TokenCodec) -> None:
    headers, body = h.split_message(COPY_MESSAGE)
    before = list(headers)
    make_copy(headers, body, signer.body_hash(body), _recipient(), (), codec, COPY_RULES, TIMESTAMP)
    assert headers == before


# --------------------------------------------------------------------------- copies.py: DKIM


@pytest.fixture(scope="module")
def signing_keys() -> tuple[keys.SigningKey, keys.SigningKey]:
    return (keys.SigningKey("example.com", "r1", keys.generate_key("rsa")),
            keys.SigningKey("example.com", "e1", keys.generate_key("ed25519")))


DnsFunc = Callable[..., bytes | None]


def _dns(signing: tuple[keys.SigningKey, ...]) -> DnsFunc:
    records = {f"{key.selector}._domainkey.{key.domain}.".encode(): keys.txt_value(key.private).encode()
               for key in signing}

    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        return records.get(name)

    return lookup


def _verifies(data: bytes, idx: int, dnsfunc: DnsFunc) -> bool:
    """dkimpy's verdict on one signature (it raises rather than returns False for some failures)."""
    try:
        return bool(dkim.DKIM(data).verify(idx=idx, dnsfunc=dnsfunc))
    except dkim.DKIMException:
        return False


def test_signed_copy_has_two_signatures_on_top(
        codec: TokenCodec, signing_keys: tuple[keys.SigningKey, keys.SigningKey]) -> None:
    copy = _copy(codec, _recipient(), signing=signing_keys)
    headers, _ = h.split_message(copy.data)
    assert names(headers)[:2] == [b"DKIM-Signature", b"DKIM-Signature"]
    assert sum(name.lower() == b"dkim-signature" for name in names(headers)) == 2
    tags = [dict(dkim.util.parse_tag_value(value)) for _, value in headers[:2]]
    assert [(tag[b"a"], tag[b"s"], tag[b"d"]) for tag in tags] == [
        (b"rsa-sha256", b"r1", b"example.com"), (b"ed25519-sha256", b"e1", b"example.com")]
    # The unsigned copy is the signed one minus its signatures.
    unsigned = _copy(codec, _recipient())
    assert h.join_message(headers[2:], h.split_message(copy.data)[1]) == unsigned.data


def test_signed_copy_verifies_with_dkimpy(
        codec: TokenCodec, signing_keys: tuple[keys.SigningKey, keys.SigningKey]) -> None:
    copy = _copy(codec, _recipient(), signing=signing_keys)
    dnsfunc = _dns(signing_keys)
    assert dkim.verify(copy.data, dnsfunc=dnsfunc)
    verifier = dkim.DKIM(copy.data)  # called directly: a failure shows dkimpy's reason
    assert [verifier.verify(idx=i, dnsfunc=dnsfunc) for i in range(2)] == [True, True]


def test_signatures_cover_the_unsubscribe_fields(
        codec: TokenCodec, signing_keys: tuple[keys.SigningKey, keys.SigningKey]) -> None:
    copy = _copy(codec, _recipient(), signing=signing_keys)
    headers, _ = h.split_message(copy.data)
    for _, value in headers[:2]:
        signed = dkim.util.parse_tag_value(value)[b"h"].replace(b" ", b"").replace(b"\r\n", b"").split(b":")
        assert b"list-unsubscribe" in signed
        assert b"list-unsubscribe-post" in signed
        assert b"feedback-id" in signed


@pytest.mark.parametrize("tamper", [
    lambda data: data.replace(b"our spring offers", b"our autumn offers"),
    lambda data: data.replace(b"\r\n\r\nHello", b"\r\nList-Unsubscribe: <https://evil.example/>\r\n\r\nHello"),
    # Added above the signed instance: only over-signing catches these (h= is matched bottom-up).
    lambda data: data.replace(b"From: Shop News", b"List-Unsubscribe: <https://evil.example/>\r\nFrom: Shop News"),
    lambda data: data.replace(b"From: Shop News", b"From: other@evil.example\r\nFrom: Shop News"),
    lambda data: data.replace(b"Subject: Spring offers", b"Subject: Spring offerz"),
], ids=["body", "list-unsubscribe-below", "list-unsubscribe-above", "second-from-above", "subject"])
def test_tampered_signed_copy_fails(codec: TokenCodec, signing_keys: tuple[keys.SigningKey, keys.SigningKey],
                                    tamper: Callable[[bytes], bytes]) -> None:
    copy = _copy(codec, _recipient(), signing=signing_keys)
    data = tamper(copy.data)
    assert data != copy.data
    dnsfunc = _dns(signing_keys)
    assert [_verifies(data, i, dnsfunc) for i in range(2)] == [False, False]


def test_signed_transactional_copy_verifies(
        codec: TokenCodec, signing_keys: tuple[keys.SigningKey, keys.SigningKey]) -> None:
    copy = _copy(codec, _recipient(stream="transactional"), signing=signing_keys)
    dnsfunc = _dns(signing_keys)
    verifier = dkim.DKIM(copy.data)  # called directly: a failure shows dkimpy's reason
    assert [verifier.verify(idx=i, dnsfunc=dnsfunc) for i in range(2)] == [True, True]
