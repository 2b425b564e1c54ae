"""Row checks of contact and suppression CSV imports (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gateway.ingest import csv_import, hygiene
from gateway.ingest.addresses import address_hash
from gateway.ingest.csv_import import ContactColumns, ContactRow, Rejected, Seen

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)


def chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_utf8_scan_finds_the_line_of_the_first_bad_byte_across_chunk_boundaries(size: int) -> None:
    good = "email\nzoë@example.com\n中文@example.com\n".encode()
    assert csv_import.first_non_utf8_line(chunks(good, size)) is None
    assert csv_import.first_non_utf8_line(chunks(b"\xef\xbb\xbf" + good, size)) is None
    latin1 = good + "rené@example.com\n".encode("latin-1")
    assert csv_import.first_non_utf8_line(chunks(latin1, size)) == 4
    assert csv_import.first_non_utf8_line(chunks(b"\xff\n", size)) == 1
    truncated = good + "x€".encode()[:-1]  # a sequence cut off by the end of the file
    assert csv_import.first_non_utf8_line(chunks(truncated, size)) == 4


def test_utf8_scan_of_nothing() -> None:
    assert csv_import.first_non_utf8_line([]) is None


def test_columns_match_case_insensitively_and_name_what_is_missing() -> None:
    columns = csv_import.contact_columns(["\ufeffName", " E-Mail ", "EMAIL", "Proof"], proof="proof")
    assert (columns.address, columns.proof, columns.width) == (2, 3, 4)
    assert csv_import.contact_columns(["Address"]).address == 0
    with pytest.raises(csv_import.ColumnError, match=r"no column 'email' or 'address'; columns found: 'mail', 'x'"):
        csv_import.contact_columns(["mail", "x"])
    with pytest.raises(csv_import.ColumnError, match=r"no column 'token' \(named by --proof-column\)"):
        csv_import.contact_columns(["email"], proof="token")
    with pytest.raises(csv_import.ColumnError, match="columns found: none"):
        csv_import.contact_columns([])


def check(values: list[str], line: int = 2, *, seen: Seen | None = None, doi: bool = False,
          columns: ContactColumns | None = None) -> ContactRow | Rejected:
    columns = columns or ContactColumns(address=0, width=7, proof=1, ip=2, time=3, frequency=4, locale=5)
    return csv_import.check_contact(values, line, columns, seen=seen if seen is not None else Seen(),
                                    double_opt_in=doi, file_name="in.csv", now=NOW)


def test_a_good_row_keeps_the_address_as_written_apart_from_the_domain() -> None:
    row = check(["Ann.Lee@Example.COM", "tok", " 2001:DB8::1 ", "2024-05-01T10:00:00+02:00", "Weekly", "pt-BR", "x"])
    assert row == ContactRow(2, "Ann.Lee@example.com", address_hash("Ann.Lee@example.com"), "tok", "weekly",
                             datetime(2024, 5, 1, 8, 0, tzinfo=UTC), "2001:db8::1", "pt-BR", ())


def test_blank_optional_values_and_the_default_proof() -> None:
    row = check(["bob@example.com"], line=7)
    assert isinstance(row, ContactRow)
    assert (row.proof, row.frequency, row.at, row.ip, row.locale) == ("import of in.csv line 7", None, None, None, None)
    assert check(["bob@example.com"], doi=True) == Rejected(
        2, "the list requires double opt-in and the row has no proof")


@pytest.mark.parametrize(("values", "reason"), [
    (["", "t"], "no address"),
    (["not an address", "t"], "bad address syntax: 'not an address'"),
    (["a@b", "t"], "bad address syntax: 'a@b'"),
    (["a@example.com", "t", "", "", "hourly"], "bad frequency 'hourly': expected one of daily, weekly, biweekly, "
                                               "monthly, quarterly"),
    (["a@example.com", "t", "", "05/01/2024"], "bad time '05/01/2024': expected ISO 8601, e.g. 2024-05-01T09:30:00Z"),
    (["a@example.com", "t", "", "2024-06-03T12:00:00Z"], "consent time 2024-06-03T12:00:00Z is in the future"),
    (["a@example.com", "t", "10.0.0.300"], "bad IP address '10.0.0.300'"),
    (["a@example.com", "t", "", "", "", "deutsch!"], "bad locale 'deutsch!': expected e.g. de, de-CH, zh-Hans"),
    (["a@example.com", "t", "", "", "", "", "", "extra"], "8 fields, the header has 7"),
])
def test_rejected_rows_say_why(values: list[str], reason: str) -> None:
    assert check(values, line=5) == Rejected(5, reason)


def test_the_first_accepted_row_of_an_address_wins() -> None:
    seen = Seen()
    assert isinstance(check(["bob@example.com", "t", "", "", "hourly"], seen=seen), Rejected)  # does not count
    assert isinstance(check(["bob@example.com", "t"], line=3, seen=seen), ContactRow)
    assert check(["BOB@EXAMPLE.COM", "t"], line=4, seen=seen) == Rejected(
        4, "duplicate: an earlier row has this address")
    assert isinstance(check(["bobby@example.com", "t"], line=5, seen=seen), ContactRow)
    assert len(seen) == 2


def test_hygiene_warnings_do_not_reject_or_rewrite() -> None:
    row = check(["eve@gmial.com", "t"])
    assert isinstance(row, ContactRow) and row.address == "eve@gmial.com"
    assert row.warnings == hygiene.check("eve@gmial.com").warnings != ()
    for address in ("postmaster@example.org", "x@mailinator.com", "ok@example.org", "a@GMIAL.com"):
        assert csv_import.hygiene_warnings(address) == hygiene.check(address).warnings
    assert csv_import.hygiene_warnings("info@example.org", frozenset({"info"})) != ()


@pytest.mark.parametrize(("text", "expected"), [
    ("2024-05-01", datetime(2024, 5, 1, tzinfo=UTC)),
    ("2024-05-01T09:30:00Z", datetime(2024, 5, 1, 9, 30, tzinfo=UTC)),
    ("2024-05-01 09:30", datetime(2024, 5, 1, 9, 30, tzinfo=UTC)),
    ("2024-05-01T09:30:00-05:00", datetime(2024, 5, 1, 14, 30, tzinfo=UTC)),
    ("20240501T093000Z", datetime(2024, 5, 1, 9, 30, tzinfo=UTC)),
])
def test_iso_8601_times(text: str, expected: datetime) -> None:
    assert csv_import.parse_time(text) == expected


def test_expiries_are_durations_or_times() -> None:
    assert csv_import.parse_expiry("", NOW) is None
    assert csv_import.parse_expiry("30d", NOW) == NOW + timedelta(days=30)
    assert csv_import.parse_expiry("2025-01-01T00:00:00+00:00", NOW) == datetime(2025, 1, 1, tzinfo=UTC)
    for bad in ("0s", "soon"):
        with pytest.raises(ValueError, match="bad expiry"):
            csv_import.parse_expiry(bad, NOW)


def test_suppression_rows() -> None:
    header = ["Email", "address_hash", "scope", "key", "reason", "expires", "note"]
    columns = csv_import.suppression_columns(header)
    digest = address_hash("x@example.org")

    def row(*values: str) -> csv_import.SuppressionRow | Rejected:
        return csv_import.check_suppression(list(values), 9, columns, now=NOW)

    assert row("X@Example.org") == csv_import.SuppressionRow(9, "X@example.org", digest, "global", "", "import",
                                                              None, None)
    assert row("", digest.upper(), "list", "news", "Unsubscribe", "7d", "n") == csv_import.SuppressionRow(
        9, None, digest, "list", "news", "unsubscribe", NOW + timedelta(days=7), "n")
    assert row("x@example.org", digest) == row("x@example.org")
    assert row("y@example.org", digest) == Rejected(9, "address_hash does not match the address")
    assert row("", "abc") == Rejected(9, "bad address_hash: expected 64 hex digits (SHA-256 of the lower-cased "
                                         "address)")
    assert row("") == Rejected(9, "no address and no address_hash")
    assert row("x@example.org", "", "list") == Rejected(9, "scope list needs a key (the list's key)")
    assert row("x@example.org", "", "global", "news") == Rejected(9, "a global suppression takes no key")
    assert row("x@example.org", "", "team") == Rejected(9, "bad scope 'team': expected one of global, list, "
                                                           "campaign")
    assert row("x@example.org", "", "", "", "bored") == Rejected(
        9, "bad reason 'bored': expected one of hard-bounce, complaint, unsubscribe, manual, import, role-account, "
           "spam-trap, soft-bounce")
    assert row("x@example.org", "", "", "", "", "later") == Rejected(
        9, "bad expiry 'later': expected a duration (30d, 12h) or an ISO 8601 time")
    hashed_only = csv_import.suppression_columns(["address_hash"])
    assert hashed_only.address is None and hashed_only.scope is None
    with pytest.raises(csv_import.ColumnError, match="'address', 'email' or 'address_hash'"):
        csv_import.suppression_columns(["hash"])


def test_targets_are_addresses_or_hashes() -> None:
    digest = address_hash("a@example.com")
    assert csv_import.parse_target("a@EXAMPLE.com") == ("a@example.com", digest)
    assert csv_import.parse_target(digest.upper()) == (None, digest)
    assert csv_import.parse_target("nope") is None


def test_reject_records_fit_the_header() -> None:
    rejected = Rejected(4, "why")
    assert csv_import.reject_record(["a"], 3, rejected) == ["a", "", "", "4", "why"]
    assert csv_import.reject_record(["a", "b", "c", "d"], 3, rejected) == ["a", "b", "c", "4", "why"]


def test_localized_texts_and_assignments() -> None:
    assert csv_import.localized(["Offers", "de=Angebote", "zh-Hans=优惠"], "name") == {
        "": "Offers", "de": "Angebote", "zh-Hans": "优惠"}
    assert csv_import.localized(["=big=deals"], "name") == {"": "big=deals"}
    assert csv_import.localized(["Sale=now"], "name") == {"": "Sale=now"}
    assert csv_import.localized(["Save = 20%"], "name") == {"": "Save = 20%"}
    with pytest.raises(ValueError, match="name for the default locale given twice"):
        csv_import.localized(["Offers", "=Deals"], "name")
    with pytest.raises(ValueError, match="name for de given twice"):
        csv_import.localized(["de=A", "de=B"], "name")
    with pytest.raises(ValueError, match="empty name"):
        csv_import.localized(["de="], "name")
    assert csv_import.describe_localized({"": "Offers", "de": "Angebote"}) == "Offers, de=Angebote"
    assert csv_import.parse_assignments(["weekly=10", "daily = 2"], "cap") == {"weekly": "10", "daily": "2"}
    with pytest.raises(ValueError, match="bad cap 'weekly': expected NAME=VALUE"):
        csv_import.parse_assignments(["weekly"], "cap")
