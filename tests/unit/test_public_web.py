"""The public pages, pure parts: rate limit, language choice, catalogs, the preference plan,
CSRF tokens, CSP and the page settings."""

from __future__ import annotations

from typing import Any

from gateway.web.public import RateLimit


def test_rate_limit_allows_a_burst_then_refills() -> None:
    now = [0.0]
    limit = RateLimit(burst=3, per_second=1.0, clock=lambda: now[0])
    assert [limit.allow("192.0.2.1") for _ in range(4)] == [True, True, True, False]
    assert limit.allow("192.0.2.2")  # another address has its own bucket
    now[0] = 1.0
    assert limit.allow("192.0.2.1") and not limit.allow("192.0.2.1")


def test_only_mail_to_unsubscribe_addresses_is_taken_as_an_unsubscribe() -> None:
    from gateway.feedback.inbound import unsubscribe_tokens

    domain = "bounces.example.com"
    assert unsubscribe_tokens(("unsubscribe+abc@bounces.example.com",), domain) == ["abc"]
    assert unsubscribe_tokens(("UNSUBSCRIBE+ABC@Bounces.Example.com",), domain) == ["ABC"]
    assert unsubscribe_tokens(("unsubscribe+abc@bounces.example.com", "b+xyz@bounces.example.com"), domain) is None
    assert unsubscribe_tokens(("unsubscribe+abc@elsewhere.example",), domain) is None
    assert unsubscribe_tokens((), domain) is None


def test_an_ipv6_client_is_counted_by_its_64() -> None:
    from gateway.web.public import client_key

    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7" and client_key("192.0.2.7") == "192.0.2.7"
    assert client_key("unknown") == "unknown"


def test_forwarded_headers_are_believed_only_from_trusted_proxies() -> None:
    import ipaddress

    from fastapi import FastAPI

    from gateway.config.schema import HttpSettings
    from gateway.config.units import parse_host_port
    from gateway.web.admin import embedded_server

    endpoint = parse_host_port("127.0.0.1:0")
    plain = embedded_server(FastAPI(), endpoint).config
    assert plain.proxy_headers is False
    proxied = embedded_server(FastAPI(), endpoint, [ipaddress.ip_network("10.1.0.0/16"),
                                                    ipaddress.ip_network("2001:db8::1/128")]).config
    assert proxied.proxy_headers is True and proxied.forwarded_allow_ips == ["10.1.0.0/16", "2001:db8::1/128"]
    settings = HttpSettings.model_validate({"trusted_proxies": ["10.1.0.0/16", "192.0.2.1"]})
    assert [str(n) for n in settings.trusted_proxies] == ["10.1.0.0/16", "192.0.2.1/32"]
    assert HttpSettings().trusted_proxies == []


# -- languages (gateway/web/i18n.py) ----------------------------------------------------------

SHIPPED = ("de", "en", "es", "ms", "zh_Hans")


def test_language_tags_in_any_spelling_find_the_catalog() -> None:
    from gateway.web.i18n import match

    for tag in ("zh", "zh-CN", "zh_CN", "zh-Hans", "zh-hans-cn", "ZH-SG", "zh-MY"):
        assert match(tag, SHIPPED) == "zh_Hans", tag
    for tag in ("zh-TW", "zh-Hant", "zh-HK", "fr", "", "x", "12", "*"):
        assert match(tag, SHIPPED) is None, tag
    assert match("de-AT", SHIPPED) == "de" and match("es-419", SHIPPED) == "es" and match("ms-MY", SHIPPED) == "ms"
    assert match("pt-BR", ("pt_BR", "pt")) == "pt_BR" and match("pt-PT", ("pt_BR", "pt")) == "pt"


def test_accept_language_is_read_by_quality_then_order() -> None:
    from gateway.web.i18n import parse_accept_language

    assert parse_accept_language("fr;q=0.5, de-CH, en;q=0.8, *;q=0.1, es;q=0") == ["de-CH", "en", "fr"]
    assert parse_accept_language("da, en-gb;q=0.8, en;q=0.7") == ["da", "en-gb", "en"]
    assert parse_accept_language(None) == [] and parse_accept_language("en;q=bad") == []


def test_the_switch_beats_the_contact_which_beats_the_browser() -> None:
    from gateway.web.i18n import negotiate

    def choose(requested: str | None, contact: str | None, accept: str | None) -> str:
        return negotiate(SHIPPED, requested=requested, contact=contact, accept_language=accept, default="en")

    assert choose("de", "zh-CN", "es") == "de"
    assert choose(None, "zh-CN", "es") == "zh_Hans"
    assert choose("klingon", "fr", "fr, ms;q=0.5") == "ms"
    assert choose(None, None, "fr") == "en"


def test_list_names_fall_back_to_english_then_to_nothing() -> None:
    from gateway.web.i18n import pick_text

    names = {"en": "News", "de-DE": "Neuigkeiten", "zh-CN": "新闻"}
    assert pick_text(names, "de") == "Neuigkeiten" and pick_text(names, "zh_Hans") == "新闻"
    assert pick_text(names, "ms") == "News" and pick_text({"de": "Tipps"}, "ms") is None


def test_a_name_given_without_a_language_is_the_default_before_english() -> None:
    from gateway.web.i18n import pick_text

    # `gateway lists add news --name Nieuws --name en=News --name de=Neuigkeiten`
    names = {"": "Nieuws", "en": "News", "de": "Neuigkeiten"}
    assert pick_text(names, "de") == "Neuigkeiten"
    assert pick_text(names, "ms") == "Nieuws" and pick_text(names, "en") == "News"
    assert pick_text({"": "News"}, "en") == "News"


def test_every_shipped_catalog_translates_every_message() -> None:
    import re
    from pathlib import Path

    from gateway.web.i18n import Catalogs
    from gateway.web.pages import FREQUENCY_LABELS, TEMPLATES
    from gateway.web.public import PAGE_TEXTS

    catalogs = Catalogs.load()
    assert sorted(catalogs.languages) == list(SHIPPED)
    used = {m for path in TEMPLATES.glob("*.html")
            for m in re.findall(r'_\(\s*["\']([^"\']+)["\']', path.read_text("utf-8"))}
    used |= set(FREQUENCY_LABELS.values())
    public = Path(TEMPLATES.parent / "public.py").read_text("utf-8")
    used |= set(re.findall(r'(?:Refused\(\d+|_message\(request, \d+|self\.html\(\d+, "\w+\.html", lang)'
                           r', "([^"]+)"', public))
    used |= set(PAGE_TEXTS) | {"This form is larger than any of our pages sends."}
    assert len(used) > 40
    for code in SHIPPED:
        if code != "en":
            missing = sorted(m for m in used if catalogs.get(code).gettext(m) == m and m not in ("Logo",))
            assert missing == [], (code, missing)


# -- the preference plan (gateway/ingest/preferences.py) --------------------------------------

def view(*topics: tuple[str, bool, str | None], all_off: bool = False) -> Any:
    from gateway.ingest.preferences import PreferenceView, Topic
    from gateway.storage.queue_store import DeliveryRef

    return PreferenceView(DeliveryRef(1, "q", "ann@example.net", "news", ""),
                          tuple(Topic(key, {}, {}, on, frequency) for key, on, frequency in topics), all_off, None)


def choice(keep: set[str], frequency: str | None = None, all_off: bool = False) -> Any:
    from gateway.ingest.preferences import Choice
    return Choice(frozenset({"news", "offers", "tips"}), frozenset(keep), frequency, all_off)


def test_the_plan_follows_the_ticks() -> None:
    from gateway.ingest.preferences import Plan, plan

    current = view(("news", True, "monthly"), ("offers", True, "weekly"), ("tips", False, None))
    assert plan(current, choice({"news", "tips"}, "weekly")) == Plan(
        leave=("offers",), join=("tips",), refrequency=("news",), frequency="weekly")
    assert plan(current, choice({"news", "offers"})).empty  # no frequency chosen: left as it is
    assert plan(current, choice({"news", "offers", "ghost"})).empty  # a topic the page never showed
    assert plan(current, choice(set(), all_off=True)) == Plan(leave=("news", "offers"), all_off=True)
    off = view(("news", False, None), all_off=True)
    assert plan(off, choice(set(), all_off=True)).empty
    assert plan(off, choice({"news"})) == Plan(join=("news",), all_off=False)


def test_ticks_that_contradict_the_master_switch_are_refused() -> None:
    import pytest

    from gateway.ingest.preferences import TicksWhileAllOff, plan

    off = view(("news", True, None), ("offers", False, None), all_off=True)
    with pytest.raises(TicksWhileAllOff) as raised:
        plan(off, choice({"news"}, all_off=True))  # confirmed, but shown unticked under the switch
    assert raised.value.keys == ("news",)
    on = view(("news", True, None), ("offers", False, None))
    with pytest.raises(TicksWhileAllOff):
        plan(on, choice({"news", "offers"}, all_off=True))
    assert plan(on, choice({"news"}, all_off=True)).all_off is True  # ticks as shown: fine


def test_the_master_switch_leaves_pending_topics_too() -> None:
    from dataclasses import replace

    from gateway.ingest.preferences import plan

    current = view(("news", True, None), ("offers", False, None))
    current = replace(current, topics=(current.topics[0], replace(current.topics[1], pending=True)))
    assert plan(current, choice(set(), all_off=True)).leave == ("news", "offers")


def test_the_quick_button_leaves_one_list_and_leaves_the_master_switch_alone() -> None:
    from gateway.ingest.preferences import Plan, leaving_one, plan

    off = view(("news", True, "weekly"), ("offers", True, None), all_off=True)
    assert plan(off, leaving_one(off, "news")) == Plan(leave=("news",))


def test_an_old_link_can_leave_but_not_join_or_come_back() -> None:
    from dataclasses import replace

    from gateway.ingest.preferences import Plan, plan

    old = replace(view(("news", True, None), ("tips", False, None), all_off=True), recent=False)
    assert plan(old, choice({"tips"})) == Plan(leave=("news",))
    assert plan(replace(old, recent=True), choice({"tips"})) == Plan(leave=("news",), join=("tips",),
                                                                     all_off=False)


def test_topics_not_on_the_submitted_page_are_left_alone() -> None:
    from gateway.ingest.preferences import Choice, plan

    current = view(("news", True, None), ("offers", True, None))
    assert plan(current, Choice(frozenset({"news"}), frozenset(), None, False)).leave == ("news",)


def test_an_erased_contact_can_leave_but_not_join() -> None:
    from dataclasses import replace

    from gateway.ingest.preferences import plan

    erased = replace(view(("news", True, None), ("tips", False, None)), erased=True)
    steps = plan(erased, choice({"tips"}))
    assert steps.leave == ("news",) and steps.join == ()


def test_the_form_fields_are_read_strictly() -> None:
    import pytest

    from gateway.ingest.preferences import BadChoice, choice_from_form

    parsed = choice_from_form({"shown": ["news", "offers"], "topic": ["news"], "frequency": ["weekly"],
                               "all_off": ["on"]})
    assert (parsed.shown, parsed.keep, parsed.frequency, parsed.all_off) == (
        frozenset({"news", "offers"}), frozenset({"news"}), "weekly", True)
    assert choice_from_form({}).frequency is None and not choice_from_form({}).all_off
    with pytest.raises(BadChoice):
        choice_from_form({"frequency": ["hourly"]})
    with pytest.raises(BadChoice):
        choice_from_form({"shown_frequency": ["hourly"]})


def test_the_frequency_counts_only_when_the_menu_was_changed() -> None:
    from gateway.ingest.preferences import choice_from_form

    assert choice_from_form({"frequency": ["monthly"], "shown_frequency": ["monthly"]}).frequency is None
    assert choice_from_form({"frequency": ["weekly"], "shown_frequency": ["monthly"]}).frequency == "weekly"
    assert choice_from_form({"frequency": [""], "shown_frequency": [""]}).frequency is None
    assert choice_from_form({"frequency": ["weekly"], "shown_frequency": [""]}).frequency == "weekly"


def test_reviewed_translations() -> None:
    from gateway.web.i18n import Catalogs

    catalogs = Catalogs.load()
    assert catalogs.get("ms").gettext("No preference") == "Tiada keutamaan"
    german_note = catalogs.get("de").gettext(
        "Transactional messages, such as receipts and delivery notices, will still be sent.")
    assert "Belege" in german_note and "Quittungen" not in german_note
    assert catalogs.get("de").gettext("Other ways to hear from us:") == "Weitere Kanäle:"
    assert catalogs.get("es").gettext("All marketing") == "Todas las comunicaciones comerciales"


# -- CSRF and CSP -----------------------------------------------------------------------------

def test_a_form_token_is_bound_to_its_page_form_and_time() -> None:
    from datetime import UTC, datetime, timedelta

    from gateway.rewrite.tokens import TokenCodec
    from gateway.web.csrf import FormGuard

    guard = FormGuard(TokenCodec({1: b"k" * 32, 2: b"j" * 32}, 1))
    t0 = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
    page = "a" * 40
    token = guard.issue(page, "preferences", t0)
    assert guard.valid(token, page, "preferences", t0 + timedelta(hours=23))
    assert not guard.valid(token, page, "preferences", t0 + timedelta(hours=25))
    assert not guard.valid(token, page, "preferences", t0 - timedelta(minutes=10))  # from the future
    assert not guard.valid(token, "b" * 40, "preferences", t0)
    assert not guard.valid(token, page, "confirm", t0)
    assert not guard.valid("", page, "preferences", t0) and not guard.valid("x" * 40, page, "preferences", t0)
    rotated = FormGuard(TokenCodec({1: b"k" * 32, 2: b"j" * 32}, 2))
    assert rotated.valid(token, page, "preferences", t0)  # the old key still verifies


def test_the_browser_must_not_say_the_form_came_from_elsewhere() -> None:
    from gateway.web.csrf import same_site

    public = "https://mail.example.com"
    assert same_site(None, None, "mail.example.com", public)
    assert same_site("https://mail.example.com", "same-origin", "10.0.0.5:8080", public)  # behind a proxy
    assert same_site("http://127.0.0.1:8080", None, "127.0.0.1:8080", public)
    assert same_site(None, "none", None, public)  # typed or bookmarked
    assert not same_site("https://evil.example", None, "mail.example.com", public)
    assert not same_site("null", None, "mail.example.com", public)
    assert same_site("null", "same-origin", "mail.example.com", public)  # a strict referrer policy
    assert not same_site(None, "cross-site", "mail.example.com", public)
    assert not same_site(None, "same-site", "mail.example.com", public)


def test_the_content_security_policy_allows_only_the_logo_origin() -> None:
    from gateway.web.pages import content_security_policy

    assert content_security_policy(None) == ("default-src 'none'; style-src 'self'; form-action 'self'; "
                                             "base-uri 'none'; frame-ancestors 'none'")
    assert "img-src https://cdn.example.com:8443;" in content_security_policy("https://cdn.example.com:8443/a/l.svg")


def test_page_settings_are_validated() -> None:
    import pytest
    from pydantic import ValidationError

    from gateway.config.schema import PagesSettings

    good = PagesSettings.model_validate({"colours": {"brand": "#0A7D44"}, "logo_url": "https://cdn.example.com/l.png",
                                         "channels": [{"label": "SMS", "url": "tel:+15550100"}]})
    assert good.colours.brand == "#0a7d44"
    bad: dict[str, Any]
    for bad in ({"colours": {"brand": "red"}}, {"logo_url": "http://cdn.example.com/l.png"},
                {"logo_url": "https://x.example/\"onerror=\""}, {"privacy_url": "javascript:alert(1)"},
                {"channels": [{"label": "x", "url": "javascript:alert(1)"}]}, {"default_locale": "de-DE"},
                {"colour": {}}):
        with pytest.raises(ValidationError):
            PagesSettings.model_validate(bad)
