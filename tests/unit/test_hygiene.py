"""Address hygiene: typo suggestions, role and disposable flags, warnings; never a rewrite."""

from __future__ import annotations

import dataclasses

import pytest

from gateway.ingest import hygiene
from gateway.ingest.hygiene import COMMON_DOMAINS, DISPOSABLE_DOMAINS, Hygiene, check, likely_domain


@pytest.mark.parametrize(("typed", "meant"), [
    ("yaho.com", "yahoo.com"),        # a letter left out
    ("gmial.com", "gmail.com"),       # neighbours swapped
    ("hotmial.com", "hotmail.com"),   # neighbours swapped
    ("gmai.com", "gmail.com"),        # the last letter left out
    ("gmaill.com", "gmail.com"),      # a letter doubled
    ("outlok.com", "outlook.com"),    # a doubled letter typed once
    ("gmail.con", "gmail.com"),       # a wrong letter
    ("yahoo.cm", "yahoo.com"),
    ("hotmail.co.k", "hotmail.co.uk"),
    ("icluod.com", "icloud.com"),
    ("protonmail.co", "protonmail.com"),
    ("GMIAL.COM", "gmail.com"),       # domains compare case-insensitively
])
def test_likely_domain(typed: str, meant: str) -> None:
    assert likely_domain(typed.lower()) == meant


@pytest.mark.parametrize(("address", "suggestion"), [
    ("dorota.kowal@yaho.com", "dorota.kowal@yahoo.com"),
    ("dorota.kowal@gmial.com", "dorota.kowal@gmail.com"),
    ("dorota.kowal@hotmial.com", "dorota.kowal@hotmail.com"),
    ("dorota.kowal@gmai.com", "dorota.kowal@gmail.com"),
    ("dorota.kowal@gmaill.com", "dorota.kowal@gmail.com"),
    ("dorota.kowal@outlok.com", "dorota.kowal@outlook.com"),
])
def test_typo_suggestion(address: str, suggestion: str) -> None:
    result = check(address)
    assert result.suggestion == suggestion
    assert not result.role
    assert not result.disposable
    domain = address.rpartition("@")[2]
    intended = suggestion.rpartition("@")[2]
    assert result.warnings == (f"domain {domain} looks like a typo of {intended} (did you mean {suggestion}?)",)


def test_suggestion_keeps_the_local_part_as_written_and_lowers_the_domain() -> None:
    result = check("Dorota.Kowal@GMIAL.com")
    assert result.suggestion == "Dorota.Kowal@gmail.com"
    assert result.warnings == (
        "domain gmial.com looks like a typo of gmail.com (did you mean Dorota.Kowal@gmail.com?)",)


@pytest.mark.parametrize("domain", COMMON_DOMAINS)
def test_no_suggestion_for_the_common_domains_themselves(domain: str) -> None:
    assert likely_domain(domain) is None
    assert check(f"dorota@{domain}").suggestion is None


def test_no_suggestion_for_gmx_or_its_neighbours_in_the_list() -> None:
    assert check("dorota@gmx.de").suggestion is None
    assert check("dorota@gmx.net").suggestion is None
    assert check("dorota@ymail.com").suggestion is None  # one edit from gmail.com, yet real


@pytest.mark.parametrize("domain", [
    "example.com", "allotment.example", "uni-heidelberg.de", "posteo.de", "fastmail.com", "zoho.com",
    "gmx.com", "yahoo.com.au", "outlook.co.nz",
])
def test_no_suggestion_for_unrelated_domains(domain: str) -> None:
    result = check(f"dorota@{domain}")
    assert result == Hygiene()
    assert likely_domain(domain) is None


@pytest.mark.parametrize("domain", [
    "gnail.con",    # two substitutions
    "gmal.co",      # two deletions
    "gmaiil.coom",  # two insertions
    "gliam.com",    # a swap of letters that are not neighbours
    "hotmali.con",  # a swap and a substitution
    "yah.com",      # two letters left out
])
def test_no_suggestion_two_edits_away(domain: str) -> None:
    assert likely_domain(domain) is None
    assert check(f"dorota@{domain}").suggestion is None


@pytest.mark.parametrize(("a", "b", "expected"), [
    ("gmail.com", "gmail.com", False),
    ("gmial.com", "gmail.com", True),
    ("gmai.com", "gmail.com", True),
    ("gmail.com", "gmai.com", True),
    ("gmaill.com", "gmail.com", True),
    ("gmxil.com", "gmail.com", True),
    ("gm.com", "gmail.com", False),
    ("", "a", True),
    ("ab", "ba", True),
    ("abc", "cba", False),
])
def test_one_edit_apart_is_symmetric(a: str, b: str, expected: bool) -> None:
    assert hygiene._one_edit_apart(a, b) is expected
    assert hygiene._one_edit_apart(b, a) is expected


@pytest.mark.parametrize("local", ["postmaster", "Abuse", "NOREPLY", "no-reply", "webmaster"])
def test_role_account_flagged(local: str) -> None:
    result = check(f"{local}@allotment.example")
    assert result.role
    assert result.suggestion is None
    assert not result.disposable
    assert result.warnings == (f"{local}@ is a role account (a group or a function, not a person)",)


def test_not_a_role_account() -> None:
    assert not check("abuse-desk@allotment.example").role
    assert not check("dorota@abuse.example").role


def test_own_role_local_parts() -> None:
    assert check("info@shop.example", role_local_parts=frozenset({"info"})).role
    assert not check("abuse@shop.example", role_local_parts=frozenset({"info"})).role


@pytest.mark.parametrize("domain", ["mailinator.com", "yopmail.com", "MAILINATOR.COM", "maildrop.cc"])
def test_disposable_flagged(domain: str) -> None:
    result = check(f"dorota@{domain}")
    assert result.disposable
    assert not result.role
    assert result.suggestion is None
    assert result.warnings == (f"{domain.lower()} hands out disposable addresses",)


def test_disposable_list_is_replaceable() -> None:
    assert check("dorota@burner.example", disposable=frozenset({"burner.example"})).disposable
    assert not check("dorota@mailinator.com", disposable=frozenset({"burner.example"})).disposable
    assert "mailinator.com" in DISPOSABLE_DOMAINS


def test_a_typo_near_a_disposable_domain_is_not_itself_disposable() -> None:
    assert not check("dorota@mailnator.com").disposable


def test_every_finding_at_once_in_a_fixed_order() -> None:
    result = check("abuse@gmial.com", disposable=frozenset({"gmial.com"}))
    assert (result.suggestion, result.role, result.disposable) == ("abuse@gmail.com", True, True)
    assert result.warnings == (
        "domain gmial.com looks like a typo of gmail.com (did you mean abuse@gmail.com?)",
        "abuse@ is a role account (a group or a function, not a person)",
        "gmial.com hands out disposable addresses",
    )


def test_clean_address_has_no_findings() -> None:
    assert check("dorota.kowal@gmail.com") == Hygiene(suggestion=None, role=False, disposable=False, warnings=())


def test_never_rewrites_the_address() -> None:
    """The suggestion is a separate field: the result holds no corrected address of its own."""
    address = "Dorota.Kowal@gmial.com"
    result = check(address)
    assert address == "Dorota.Kowal@gmial.com"
    assert {f.name for f in dataclasses.fields(Hygiene)} == {"suggestion", "role", "disposable", "warnings"}
    assert result.suggestion == "Dorota.Kowal@gmail.com"
    assert result.suggestion != address
    # The typo is reported, the flags judge the address as given (a role account at a typo domain).
    assert check("postmaster@gmial.com").role
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.suggestion = None  # type: ignore[misc]


@pytest.mark.parametrize("domain", ["mail.com", "email.com", "yahoo.es", "hotmail.de", "live.fr", "gmx.at"])
def test_real_provider_one_edit_from_a_common_domain_gets_no_suggestion(domain: str) -> None:
    """mail.com and email.com are one edit from gmail.com and ymail.com, yet real: never "corrected"."""
    assert likely_domain(domain) is None
    assert check(f"dorota@{domain}") == Hygiene()
