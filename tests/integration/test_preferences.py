"""The preference centre and the double opt-in page over HTTP (ASGI), on a real SQLite
database: every rule of docs/preferences.md, checked in the database afterwards."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from sqlalchemy import func, insert, select

from gateway.config.schema import PagesSettings
from gateway.ingest.addresses import address_hash
from gateway.rewrite.tokens import Binding, Purpose, TokenCodec
from gateway.storage import consent_store
from gateway.storage.consent_store import ConsentChange, ListRecord
from gateway.storage.database import Database
from gateway.storage.migrate import upgrade
from gateway.storage.tables import consent_history, consents, deliveries, messages, suppressions
from gateway.web.i18n import CatalogError, Catalogs
from gateway.web.pages import Pages
from gateway.web.public import public_app
from tests.fakes import FakeClock

T0 = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
PUBLIC_URL = "https://mail.example.com"
ANN = "ann@example.net"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
BRANDING = {"company_name": "Example Shop", "logo_url": "https://cdn.example.com/logo.png",
            "privacy_url": "https://shop.example.com/privacy",
            "colours": {"brand": "#0a7d44"},
            "channels": [{"label": "SMS alerts", "url": "https://shop.example.com/sms"}]}
LISTS = [
    ListRecord("news", "marketing", False, {"en": "Weekly newsletter", "de": "Wöchentlicher Newsletter",
                                             "zh-CN": "每周通讯", "es": "Boletín semanal", "ms": "Surat berita mingguan"},
               {"en": "What is new in the shop", "de": "Was es Neues im Laden gibt"}, {}, T0),
    ListRecord("offers", "marketing", False, {"en": "Special offers"}, {}, {}, T0),
    ListRecord("tips", "marketing", False, {"de": "Tipps"}, {}, {}, T0),  # no English name
    ListRecord("events", "marketing", False, {"en": "Events"}, {}, {}, T0),  # no consent: not shown
    ListRecord("receipts", "transactional", False, {"en": "Receipts"}, {}, {}, T0),
    ListRecord("club", "marketing", True, {"en": "Members' club", "de": "Mitgliederclub"}, {}, {}, T0),
]


@dataclass
class Site:
    web: httpx.AsyncClient
    db: Database
    codec: TokenCodec
    clock: FakeClock
    token: str  # ann's link from a "news" message

    async def deliver(self, recipient: str, list_key: str, queue_id: str) -> int:
        """A queued marketing copy, as intake stores it; returns the delivery id."""
        async def write(conn: Any) -> int:
            await conn.execute(insert(messages).values(
                queue_id=queue_id, received_at=self.clock.now, mail_from="shop@example.com", client_ip="127.0.0.1",
                helo="app", size=10, recipient_count=1, stream="marketing", list_key=list_key, campaign="c1",
                body=b"Subject: x\r\n\r\nx\r\n"))
            result = await conn.execute(insert(deliveries).values(
                queue_id=queue_id, recipient=recipient, domain="example.net", state="queued", attempts=0,
                next_attempt_at=self.clock.now, updated_at=self.clock.now).returning(deliveries.c.id))
            return int(result.scalar_one())
        return await self.db.write(write)

    def link(self, delivery_id: int, recipient: str, list_key: str) -> str:
        return self.codec.issue(Purpose.UNSUBSCRIBE, delivery_id, Binding(recipient, list_key, "c1"))

    async def state(self) -> dict[str, Any]:
        """Everything a page may change, to compare before and after."""
        async def read(conn: Any) -> dict[str, Any]:
            return {
                "consents": sorted(tuple(r) for r in await conn.execute(
                    select(consents.c.list_key, consents.c.status, consents.c.frequency))),
                "history": int((await conn.execute(select(func.count()).select_from(consent_history))).scalar_one()),
                "suppressions": sorted(tuple(r) for r in await conn.execute(
                    select(suppressions.c.scope, suppressions.c.scope_key, suppressions.c.reason))),
                "pending": sorted(tuple(r) for r in await conn.execute(select(deliveries.c.id, deliveries.c.state))),
            }
        return await self.db.read(read)

    async def history(self) -> list[dict[str, Any]]:
        return await self.db.read(lambda conn: consent_store.consent_history_of(conn, address_hash(ANN)))

    async def form(self, path: str, **params: str) -> tuple[str, str]:
        page = await self.web.get(path, params=params)
        assert page.status_code == 200, page.text
        found = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert found, page.text
        return found.group(1), page.text

    async def save(self, fields: list[tuple[str, str]], *, csrf: str | None = None,
                   headers: dict[str, str] | None = None, token: str | None = None) -> httpx.Response:
        token = token or self.token
        if csrf is None:
            csrf, _ = await self.form(f"/preferences/{token}")
        shown = [("shown", key) for key in ("news", "offers", "tips")]
        return await self.web.post(f"/preferences/{token}", content=urlencode([("csrf", csrf), *shown, *fields]),
                                   headers={"User-Agent": "Browser/1.0", **FORM, **(headers or {})})


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    url = f"sqlite:///{tmp_path}/gateway.db"
    await upgrade(url)
    db = Database(url)
    await db.start()
    codec = TokenCodec({1: b"k" * 32}, 1)
    clock = FakeClock(T0)

    async def setup(conn: Any) -> None:
        for record in LISTS:
            await consent_store.add_list(conn, record)
        contact = await consent_store.contact_id(conn, ANN, address_hash(ANN), T0)
        for key, status, frequency in (("news", "confirmed", "monthly"), ("offers", "confirmed", "monthly"),
                                       ("tips", "withdrawn", None), ("receipts", "confirmed", None)):
            await consent_store.record_consent(conn, ConsentChange(
                contact, address_hash(ANN), key, status, "api", T0, frequency=frequency, proof="fixture"))

    await db.write(setup)
    pages = Pages(PagesSettings.model_validate(BRANDING), Catalogs.load())
    app = public_app(db, codec, pages=pages, public_url=PUBLIC_URL, clock=clock)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as web:
        result = Site(web, db, codec, clock, "")
        result.token = result.link(await result.deliver(ANN, "news", "Q" * 26), ANN, "news")
        yield result
    await db.close()


# -- showing the page -------------------------------------------------------------------------

async def test_the_page_shows_friendly_topics_and_changes_nothing(site: Site) -> None:
    before = await site.state()
    for path in (f"/u/{site.token}", f"/preferences/{site.token}"):
        page = await site.web.get(path)
        assert page.status_code == 200
        text = page.text
        assert '<html lang="en">' in text
        assert '<label for="topic-news">Weekly newsletter</label>' in text
        assert "What is new in the shop" in text and "Special offers" in text
        assert '<label for="topic-tips">tips</label>' in text  # no English name: the key
        assert "Events" not in text and "Receipts" not in text  # no consent / transactional
        assert text.index("topic-news") < text.index("topic-offers")  # the link's list first
        assert 'id="topic-news" name="topic" value="news" checked' in text
        assert 'id="topic-tips" name="topic" value="tips" aria' not in text
        assert '<option value="monthly" selected>Monthly</option>' in text
        assert "Every two weeks" in text and "Every three months" in text
        assert '<label for="all_off">Unsubscribe from all marketing</label>' in text
        assert "receipts and delivery notices, will still be sent" in text
        assert 'href="https://shop.example.com/privacy"' in text and ">SMS alerts</a>" in text
        assert 'src="https://cdn.example.com/logo.png" alt="Example Shop"' in text
        assert ANN not in text
        csp = page.headers["content-security-policy"]
        assert csp == ("default-src 'none'; style-src 'self'; img-src https://cdn.example.com; "
                       "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
        assert "<script" not in text and "style=" not in text and "<style" not in text
        assert page.headers["referrer-policy"] == "same-origin" and page.headers["cache-control"] == "no-store"
    assert (await site.web.head(f"/preferences/{site.token}")).status_code == 200
    assert await site.state() == before


async def test_the_stylesheet_carries_the_operator_colours(site: Site) -> None:
    page = await site.web.get(f"/preferences/{site.token}")
    href = re.search(r'<link rel="stylesheet" href="([^"]+)">', page.text)
    assert href and href.group(1).startswith("/static/pages.css?v=")
    css = await site.web.get(href.group(1))
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert "--brand: #0a7d44" in css.text and ":focus-visible" in css.text


async def test_a_forged_or_unknown_link_gets_the_same_404_page(site: Site) -> None:
    before = await site.state()
    altered = site.token[:-1] + ("a" if site.token[-1] != "a" else "b")
    unknown = site.codec.issue(Purpose.UNSUBSCRIBE, 999, Binding(ANN, "news", "c1"))
    verp = site.codec.issue(Purpose.VERP, 1, Binding(ANN, "news", "c1"))  # right delivery, wrong purpose
    for token in (altered, unknown, verp, "short"):
        for method, path in (("GET", "/preferences/"), ("GET", "/u/"), ("POST", "/preferences/"),
                             ("GET", "/confirm/"), ("POST", "/confirm/")):
            response = await site.web.request(method, path + token, data={"csrf": "x"} if method == "POST" else None)
            assert response.status_code == 404, (method, path, token)
            assert "This link is not valid" in response.text
    assert await site.state() == before


async def test_guessing_links_is_rate_limited_but_a_valid_link_always_works(site: Site) -> None:
    statuses = [(await site.web.get(f"/preferences/{'a' * 40}")).status_code for _ in range(35)]
    assert statuses[:30] == [404] * 30 and statuses[-1] == 429
    assert (await site.web.get(f"/preferences/{site.token}")).status_code == 200  # the same client
    one_click = await site.web.post(f"/u/{site.token}", content="List-Unsubscribe=One-Click", headers=FORM)
    assert one_click.status_code == 200
    assert ("news", "withdrawn", "monthly") in (await site.state())["consents"]
    assert (await site.web.post(f"/u/{'b' * 40}", content="List-Unsubscribe=One-Click",
                                headers=FORM)).status_code == 429


# -- saving -----------------------------------------------------------------------------------

async def test_saving_leaves_an_unticked_topic_and_stores_the_frequency(site: Site) -> None:
    offers_copy = await site.deliver(ANN, "offers", "R" * 26)
    news_copy = await site.deliver(ANN, "news", "S" * 26)
    response = await site.save([("topic", "news"), ("frequency", "weekly")])
    assert response.status_code == 200, response.text
    assert "Your preferences have been saved." in response.text
    assert "<li>Weekly newsletter</li>" in response.text and "How often: Weekly" in response.text
    state = await site.state()
    assert ("news", "confirmed", "weekly") in state["consents"]
    assert ("offers", "withdrawn", "monthly") in state["consents"]
    assert ("tips", "withdrawn", None) in state["consents"]
    assert ("list", "offers", "unsubscribe") in state["suppressions"]
    assert (offers_copy, "suppressed") in state["pending"] and (news_copy, "queued") in state["pending"]
    new = [row for row in await site.history() if row["source"] == "preference-page"]
    assert [(r["list_key"], r["status"], r["frequency"]) for r in new] == [
        ("offers", "withdrawn", None), ("news", "confirmed", "weekly")]
    assert {(r["ip"], r["user_agent"], r["at"]) for r in new} == {("127.0.0.1", "Browser/1.0", T0)}
    assert all("left offers" in r["proof"] and "frequency weekly" in r["proof"] for r in new)


async def test_saving_the_same_form_twice_changes_nothing_more(site: Site) -> None:
    fields = [("topic", "news"), ("frequency", "weekly")]
    assert (await site.save(fields)).status_code == 200
    after_first = await site.state()
    assert await count_events(site) == 1  # leaving offers is in the accounting log, once
    assert (await site.save(fields)).status_code == 200
    assert await site.state() == after_first
    assert await count_events(site) == 1


async def test_ticking_a_topic_the_person_left_confirms_it_again(site: Site) -> None:
    await site.save([("topic", "news")])  # leaves offers
    response = await site.save([("topic", "news"), ("topic", "offers"), ("topic", "tips")])
    assert response.status_code == 200
    state = await site.state()
    assert ("offers", "confirmed", "monthly") in state["consents"] and ("tips", "confirmed", None) in state["consents"]
    assert ("list", "offers", "unsubscribe") not in state["suppressions"]
    rows = [(r["list_key"], r["status"]) for r in await site.history() if r["source"] == "preference-page"]
    assert rows[-2:] == [("offers", "confirmed"), ("tips", "confirmed")]


async def test_the_master_switch_leaves_all_marketing_and_can_be_undone(site: Site) -> None:
    queued = await site.deliver(ANN, "offers", "R" * 26)
    response = await site.save([("topic", "news"), ("topic", "offers"), ("all_off", "on")])
    assert "You will not receive any marketing messages from us." in response.text
    state = await site.state()
    assert ("global", "", "unsubscribe") in state["suppressions"]
    assert {c[:2] for c in state["consents"]} >= {("news", "withdrawn"), ("offers", "withdrawn")}
    assert ("receipts", "confirmed", None) in state["consents"]  # transactional: untouched
    assert (queued, "suppressed") in state["pending"]
    page = (await site.web.get(f"/preferences/{site.token}")).text
    assert 'id="all_off" name="all_off" value="on" checked' in page
    assert ("", "withdrawn") in [(r["list_key"], r["status"]) for r in await site.history()]

    await site.save([("topic", "news")])  # switch off again, keep one topic
    state = await site.state()
    assert ("global", "", "unsubscribe") not in state["suppressions"]
    assert ("news", "confirmed", "monthly") in state["consents"]
    assert [(r["list_key"], r["status"]) for r in await site.history()][-2:] == [("news", "confirmed"), ("", "lifted")]


async def test_the_quick_button_leaves_only_the_list_of_the_link(site: Site) -> None:
    csrf, page = await site.form(f"/u/{site.token}")
    assert "Unsubscribe from Weekly newsletter only" in page
    response = await site.web.post(f"/preferences/{site.token}", data={"csrf": csrf, "action": "leave"})
    assert response.status_code == 200
    state = await site.state()
    assert ("news", "withdrawn", "monthly") in state["consents"] and ("offers", "confirmed", "monthly") in state["consents"]


async def test_an_unknown_frequency_is_refused(site: Site) -> None:
    before = await site.state()
    response = await site.save([("topic", "news"), ("frequency", "hourly")])
    assert response.status_code == 400
    assert await site.state() == before


# -- CSRF -------------------------------------------------------------------------------------

async def test_a_form_without_a_valid_csrf_token_changes_nothing(site: Site) -> None:
    before = await site.state()
    other = site.link(await site.deliver("bob@example.net", "news", "B" * 26), "bob@example.net", "news")
    csrf_of_other_page, _ = await site.form(f"/preferences/{other}")
    csrf, _ = await site.form(f"/preferences/{site.token}")
    before = await site.state()
    attempts: list[dict[str, Any]] = [
        {"csrf": ""}, {"csrf": "x" * 40}, {"csrf": csrf_of_other_page}, {"csrf": csrf[:-1] + "a"},
        {"csrf": csrf, "headers": {"Origin": "https://evil.example"}},
        {"csrf": csrf, "headers": {"Origin": "null"}},
        {"csrf": csrf, "headers": {"Sec-Fetch-Site": "cross-site"}},
    ]
    for attempt in attempts:
        response = await site.save([("topic", "news")], **attempt)
        assert response.status_code == 403, attempt
        assert "Nothing was changed" in response.text
    missing = await site.web.post(f"/preferences/{site.token}", data={"shown": "offers"})
    assert missing.status_code == 403
    site.clock.now = T0 + timedelta(hours=25)  # the page was left open too long
    assert (await site.save([("topic", "news")], csrf=csrf)).status_code == 403
    assert await site.state() == before
    site.clock.now = T0 + timedelta(hours=1)
    same_site = {"Origin": PUBLIC_URL, "Sec-Fetch-Site": "same-origin"}
    assert (await site.save([("topic", "news")], csrf=csrf, headers=same_site)).status_code == 200


async def test_one_click_needs_no_csrf_token(site: Site) -> None:
    response = await site.web.post(f"/u/{site.token}", content=b"List-Unsubscribe=One-Click",
                                   headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 200 and "location" not in response.headers
    assert "You will no longer receive Weekly newsletter." in response.text
    assert ("news", "withdrawn", "monthly") in (await site.state())["consents"]


# -- languages --------------------------------------------------------------------------------

async def set_locale(site: Site, locale: str | None) -> None:
    from sqlalchemy import update

    from gateway.storage.tables import contacts
    await site.db.write(lambda conn: conn.execute(update(contacts).values(locale=locale)))


@pytest.mark.parametrize(("accept", "expected_lang", "title"), [
    ("de-DE,de;q=0.9,en;q=0.5", "de", "Ihre E-Mail-Einstellungen"),
    ("zh-CN,zh;q=0.9", "zh-Hans", "您的邮件订阅设置"),
    ("es-MX", "es", "Sus preferencias de correo electrónico"),
    ("ms-MY", "ms", "Pilihan e-mel anda"),
    ("fr-FR, en;q=0.1", "en", "Your email preferences"),
    ("zh-TW", "en", "Your email preferences"),  # Traditional readers are not served Simplified
])
async def test_accept_language_chooses_the_language(site: Site, accept: str, expected_lang: str, title: str) -> None:
    page = await site.web.get(f"/preferences/{site.token}", headers={"Accept-Language": accept})
    assert f'<html lang="{expected_lang}">' in page.text and f"<h1>{title}</h1>" in page.text


async def test_the_contact_locale_beats_accept_language_and_the_switch_beats_both(site: Site) -> None:
    await set_locale(site, "zh-CN")
    page = await site.web.get(f"/preferences/{site.token}", headers={"Accept-Language": "de"})
    assert '<html lang="zh-Hans">' in page.text and "每周通讯" in page.text and "退订全部营销邮件" in page.text
    assert "Special offers" in page.text  # no Chinese name: English
    switched = await site.web.get(f"/preferences/{site.token}", params={"lang": "de"},
                                  headers={"Accept-Language": "es"})
    assert '<html lang="de">' in switched.text and "Wöchentlicher Newsletter" in switched.text
    assert "Was es Neues im Laden gibt" in switched.text and '<label for="topic-tips">Tipps</label>' in switched.text
    for code in ("en", "de", "es", "ms", "zh_Hans"):
        assert f'href="?lang={code}"' in switched.text  # the language switch
    saved = await site.save([("topic", "news"), ("lang", "es")])
    assert '<html lang="es">' in saved.text and "Sus preferencias se han guardado." in saved.text


async def test_an_operator_adds_a_locale_and_overrides_one_message(site: Site, tmp_path: Path) -> None:
    root = tmp_path / "locales"
    (root / "fr" / "LC_MESSAGES").mkdir(parents=True)
    (root / "fr" / "LC_MESSAGES" / "messages.po").write_text(
        'msgid ""\nmsgstr "Content-Type: text/plain; charset=utf-8\\n"\n\n'
        'msgid "Your email preferences"\nmsgstr "Vos préférences e-mail"\n', "utf-8")
    (root / "de" / "LC_MESSAGES").mkdir(parents=True)
    (root / "de" / "LC_MESSAGES" / "messages.po").write_text(
        'msgid ""\nmsgstr "Content-Type: text/plain; charset=utf-8\\n"\n\n'
        'msgid "Save preferences"\nmsgstr "Auswahl sichern"\n', "utf-8")
    catalogs = Catalogs.load(root)
    assert catalogs.get("fr").gettext("Your email preferences") == "Vos préférences e-mail"
    assert catalogs.get("fr").gettext("Topics") == "Topics"  # untranslated: English
    assert catalogs.get("de").gettext("Save preferences") == "Auswahl sichern"
    assert catalogs.get("de").gettext("Topics") == "Themen"  # the rest stays shipped
    app = public_app(site.db, site.codec, pages=Pages(PagesSettings(locale_dir=root), catalogs), clock=site.clock)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as web:
        page = await web.get(f"/preferences/{site.token}", headers={"Accept-Language": "fr-CA"})
    assert '<html lang="fr">' in page.text and "<h1>Vos préférences e-mail</h1>" in page.text


async def test_a_broken_operator_catalog_is_named(tmp_path: Path) -> None:
    path = tmp_path / "de" / "LC_MESSAGES" / "messages.po"
    path.parent.mkdir(parents=True)
    path.write_text('msgid "How often: %(frequency)s"\nmsgstr "Wie oft: %(haeufigkeit)s"\n', "utf-8")
    with pytest.raises(CatalogError, match=re.escape(str(path))):
        Catalogs.load(tmp_path)
    path.write_text('msgid "Topics"\nmsgstr "Themen"\nThemen\n', "utf-8")
    with pytest.raises(CatalogError, match=re.escape(str(path))):
        Catalogs.load(tmp_path)
    with pytest.raises(CatalogError, match="default_locale 'fr' has no catalog"):
        Catalogs.load(None, "fr")


# -- double opt-in ----------------------------------------------------------------------------

async def pending_club(site: Site, address: str = ANN) -> str:
    async def write(conn: Any) -> int:
        contact = await consent_store.contact_id(conn, address, address_hash(address), site.clock.now)
        await consent_store.record_consent(conn, ConsentChange(
            contact, address_hash(address), "club", "pending", "form", site.clock.now, frequency="weekly",
            proof="signup form v3"))
        return contact
    contact = await site.db.write(write)
    return site.codec.issue(Purpose.CONFIRM, contact, Binding(address, "club"))


async def test_the_confirmation_page_confirms_only_on_post_and_keeps_the_proof(site: Site) -> None:
    token = await pending_club(site)
    before = await site.state()
    page = await site.web.get(f"/confirm/{token}", headers={"Accept-Language": "de"})
    assert page.status_code == 200 and "Mitgliederclub" in page.text and "Abonnement bestätigen" in page.text
    assert await site.state() == before
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf
    assert (await site.web.post(f"/confirm/{token}", data={"csrf": "nope"})).status_code == 403
    assert await site.state() == before
    done = await site.web.post(f"/confirm/{token}", data={"csrf": csrf.group(1), "lang": "de"},
                               headers={"User-Agent": "Phone/2"})
    assert done.status_code == 200 and "Ihr Abonnement von Mitgliederclub ist bestätigt" in done.text
    state = await site.state()
    assert ("club", "confirmed", "weekly") in state["consents"]
    last = (await site.history())[-1]
    assert (last["source"], last["proof"], last["ip"], last["user_agent"]) == (
        "confirm-page", token, "127.0.0.1", "Phone/2")
    again = await site.web.post(f"/confirm/{token}", data={"csrf": csrf.group(1)})
    assert again.status_code == 200 and await site.state() == state  # idempotent
    assert "is confirmed" in (await site.web.get(f"/confirm/{token}")).text


async def test_an_expired_or_withdrawn_confirmation_confirms_nothing(site: Site) -> None:
    token = await pending_club(site)
    site.clock.now = T0 + timedelta(days=31)
    assert (await site.web.get(f"/confirm/{token}")).status_code == 404
    site.clock.now = T0
    csrf = re.search(r'name="csrf" value="([^"]+)"', (await site.web.get(f"/confirm/{token}")).text)
    assert csrf
    await site.save([("topic", "news")], csrf=None)  # unrelated
    async def withdraw(conn: Any) -> None:
        contact = await consent_store.contact_by_hash(conn, address_hash(ANN))
        assert contact is not None
        await consent_store.record_consent(conn, ConsentChange(contact.id, address_hash(ANN), "club", "withdrawn",
                                                               "api", T0))
    await site.db.write(withdraw)
    assert (await site.web.post(f"/confirm/{token}", data={"csrf": csrf.group(1)})).status_code == 404


# -- regressions from the review of the preference centre -------------------------------------

def page_form(text: str) -> list[tuple[str, str]]:
    """The fields a browser would post for the page as shown: hidden inputs, ticked boxes
    that are not disabled, the selected option."""
    fields: list[tuple[str, str]] = []
    for tag in re.findall(r"<input [^>]*>", text):
        name, value = re.search(r'name="([^"]*)"', tag), re.search(r'value="([^"]*)"', tag)
        if name is None or value is None or " disabled" in tag:
            continue
        if 'type="hidden"' in tag or ('type="checkbox"' in tag and " checked" in tag):
            fields.append((name.group(1), value.group(1)))
    selected = re.search(r'<option value="(\w*)" selected>', text)
    fields.append(("frequency", selected.group(1) if selected else ""))
    return fields


async def submit_as_shown(site: Site, changes: Sequence[tuple[str, str]] = (),
                          drop: tuple[str, ...] = (), token: str | None = None) -> httpx.Response:
    """Post the page's own form, as the browser would, after the person's changes."""
    token = token or site.token
    page = await site.web.get(f"/preferences/{token}")
    fields = [f for f in page_form(page.text) if f not in changes and f[0] not in drop]
    return await site.web.post(f"/preferences/{token}", content=urlencode([*fields, *changes]),
                               headers={"User-Agent": "Browser/1.0", **FORM})


async def set_frequency(site: Site, list_key: str, frequency: str) -> None:
    from sqlalchemy import update
    await site.db.write(lambda conn: conn.execute(
        update(consents).where(consents.c.list_key == list_key).values(frequency=frequency)))


async def one_click(site: Site, token: str, **headers: str) -> httpx.Response:
    return await site.web.post(f"/u/{token}", content="List-Unsubscribe=One-Click", headers={**FORM, **headers})


async def test_saving_without_touching_anything_changes_no_frequency(site: Site) -> None:
    """Finding 1: the menu shows one frequency; it is applied only when the person changes it."""
    await set_frequency(site, "offers", "weekly")  # news monthly, offers weekly: the menu shows one
    before = await site.state()
    assert (await submit_as_shown(site)).status_code == 200
    assert await site.state() == before
    response = await submit_as_shown(site, [("frequency", "quarterly")], drop=("frequency",))
    assert response.status_code == 200
    state = await site.state()
    assert ("news", "confirmed", "quarterly") in state["consents"]
    assert ("offers", "confirmed", "quarterly") in state["consents"]


async def test_leaving_one_list_while_all_marketing_is_off_leaves_only_that_list(site: Site) -> None:
    """Finding 2: the quick button never copies the master switch onto the other lists."""
    everything = site.link(await site.deliver(ANN, "", "G" * 26), ANN, "")
    assert (await one_click(site, everything)).status_code == 200  # mail without a list: all off
    csrf, page = await site.form(f"/preferences/{site.token}")
    assert 'value="leave"' not in page  # hidden while the global unsubscribe is on
    response = await site.web.post(f"/preferences/{site.token}", data={"csrf": csrf, "action": "leave"})
    assert response.status_code == 200
    state = await site.state()
    assert ("news", "withdrawn", "monthly") in state["consents"]
    assert ("offers", "confirmed", "monthly") in state["consents"]
    assert ("global", "", "unsubscribe") in state["suppressions"]


async def erase(site: Site) -> None:
    """As DELETE /api/contacts/ADDRESS does it (gateway/web/api.py)."""
    from dataclasses import replace

    async def write(conn: Any) -> None:
        digest = address_hash(ANN)
        await consent_store.erase_contact(conn, digest, site.clock.now)
        kept = [record for _, record in await consent_store.find_suppressions(conn, address_hash=digest)]
        await consent_store.remove_suppressions(conn, digest)
        await consent_store.add_suppressions(conn, [replace(r, address=None) for r in kept])
    await site.db.write(write)


async def stored_addresses(site: Site) -> set[str | None]:
    rows = await site.db.read(lambda conn: conn.execute(select(suppressions.c.address)))
    return {row.address for row in rows}


async def test_an_erased_contact_cannot_come_back_and_its_address_is_not_written_again(site: Site) -> None:
    """Finding 3."""
    assert (await site.save([("all_off", "on")])).status_code == 200
    await erase(site)
    page = (await site.web.get(f"/preferences/{site.token}")).text
    assert "Your data was erased at your request" in page and "disabled" in page
    assert (await site.save([("topic", "news")])).status_code == 200  # master switch off, news ticked
    state = await site.state()
    assert ("global", "", "unsubscribe") in state["suppressions"]
    assert ("news", "withdrawn", "monthly") in state["consents"]
    offers = site.link(await site.deliver(ANN, "offers", "O" * 26), ANN, "offers")
    assert (await one_click(site, offers)).status_code == 200
    other = site.link(await site.deliver(ANN, "", "G" * 26), ANN, "")
    await site.db.write(lambda conn: consent_store.remove_suppressions(conn, address_hash(ANN), scope="global"))
    assert (await one_click(site, other)).status_code == 200
    state = await site.state()
    assert {("list", "offers", "unsubscribe"), ("global", "", "unsubscribe")} <= set(state["suppressions"])
    assert await stored_addresses(site) == {None}


async def test_two_saves_at_once_record_the_change_once(site: Site) -> None:
    """Finding 4: read, plan and write in one transaction."""
    import asyncio

    csrf, _ = await site.form(f"/preferences/{site.token}")
    before = len(await site.history())
    fields = [("topic", "news"), ("topic", "offers"), ("topic", "tips"), ("frequency", "weekly")]
    responses = await asyncio.gather(*[site.save(fields, csrf=csrf) for _ in range(3)])
    assert [r.status_code for r in responses] == [200] * 3
    new = [(r["list_key"], r["status"], r["frequency"]) for r in (await site.history())[before:]]
    assert sorted(new) == [("news", "confirmed", "weekly"), ("offers", "confirmed", "weekly"),
                           ("tips", "confirmed", "weekly")]


async def test_an_old_link_can_leave_but_not_join(site: Site) -> None:
    """Finding 5: joining needs a recent delivery ([pages] rejoin_window, 30 days)."""
    site.clock.now = T0 + timedelta(days=31)
    page = (await site.web.get(f"/preferences/{site.token}", params={"lang": "de"})).text
    assert 'id="topic-tips" name="topic" value="tips" disabled aria-describedby="join-note"' in page
    assert "Dieser Link ist zu alt" in page
    assert 'id="topic-news" name="topic" value="news" checked aria' in page  # kept: not disabled
    response = await submit_as_shown(site, [("topic", "tips")], drop=("topic",))  # ticks tips, unticks the rest
    assert response.status_code == 200
    state = await site.state()
    assert ("tips", "withdrawn", None) in state["consents"]  # not joined
    assert ("news", "withdrawn", "monthly") in state["consents"]  # left: always allowed


async def test_an_old_link_cannot_turn_the_master_switch_off(site: Site) -> None:
    """Finding 5: with an old link the switch is shown ticked and disabled, and stays on."""
    assert (await site.save([("all_off", "on")])).status_code == 200
    site.clock.now = T0 + timedelta(days=31)
    page = (await site.web.get(f"/preferences/{site.token}")).text
    assert '<input type="hidden" name="all_off" value="on">' in page
    assert 'id="all_off" value="on" checked disabled' in page
    assert (await site.save([("topic", "news")])).status_code == 200  # a hand-made form, switch off
    assert ("global", "", "unsubscribe") in (await site.state())["suppressions"]
    site.clock.now = T0 + timedelta(days=29)  # a recent link may
    assert (await site.save([("topic", "news")])).status_code == 200
    assert ("global", "", "unsubscribe") not in (await site.state())["suppressions"]


async def test_joining_a_double_opt_in_list_from_a_recent_link_is_confirmed_with_the_delivery_as_proof(
        site: Site) -> None:
    """Finding 5: the recent delivery proves the mailbox; the proof names it and its date."""
    await pending_club(site)
    response = await site.save([("topic", "news"), ("topic", "offers"), ("topic", "club"),
                                ("shown", "club")])
    assert response.status_code == 200
    assert ("club", "confirmed", "weekly") in (await site.state())["consents"]
    last = (await site.history())[-1]
    assert last["list_key"] == "club" and last["source"] == "preference-page"
    assert "joined club" in last["proof"] and "link of delivery 1 sent 2026-03-02 09:30 UTC" in last["proof"]


def test_the_rejoin_window_is_a_setting() -> None:
    from pydantic import ValidationError

    assert PagesSettings().rejoin_window == 30 * 86400
    assert PagesSettings.model_validate({"rejoin_window": "7d"}).rejoin_window == 7 * 86400
    with pytest.raises(ValidationError):
        PagesSettings.model_validate({"rejoin_window": "0s"})


async def test_too_many_form_fields_are_refused_without_a_traceback(site: Site) -> None:
    """Finding 7."""
    csrf, _ = await site.form(f"/preferences/{site.token}")
    before = await site.state()
    body = urlencode([("csrf", csrf), ("lang", "de")] + [("x", "1")] * 600)
    response = await site.web.post(f"/preferences/{site.token}", content=body, headers=FORM)
    assert response.status_code == 413 and "This form is larger than any of our pages sends." in response.text
    assert await site.state() == before


async def count_events(site: Site) -> int:
    from gateway.storage.tables import events
    query = select(func.count()).select_from(events).where(events.c.kind == "unsubscribed")
    return int(await site.db.read(lambda conn: _scalar(conn, query)))


async def _scalar(conn: Any, query: Any) -> Any:
    return (await conn.execute(query)).scalar_one()


async def test_a_repeated_one_click_adds_no_event(site: Site) -> None:
    """Finding 8: the accounting event is written once, when something changed."""
    for _ in range(3):
        assert (await one_click(site, site.token)).status_code == 200
    assert await count_events(site) == 1
    everything = site.link(await site.deliver(ANN, "", "G" * 26), ANN, "")
    for _ in range(2):
        assert (await one_click(site, everything)).status_code == 200
    assert await count_events(site) == 2


async def test_a_global_one_click_keeps_its_proof_and_coming_back_is_recorded_as_lifted(site: Site) -> None:
    """Finding 9."""
    everything = site.link(await site.deliver(ANN, "", "G" * 26), ANN, "")
    assert (await one_click(site, everything, **{"User-Agent": "Mailbox/1"})).status_code == 200
    assert (await one_click(site, everything)).status_code == 200  # a repeat: no second row
    rows = [r for r in await site.history() if r["list_key"] == ""]
    assert [(r["status"], r["source"], r["ip"], r["user_agent"], r["at"]) for r in rows] == [
        ("withdrawn", "one-click", "127.0.0.1", "Mailbox/1", T0)]
    assert rows[0]["proof"] == "List-Unsubscribe one-click, delivery 2"
    assert (await site.save([("topic", "news"), ("topic", "offers")])).status_code == 200
    last = (await site.history())[-1]
    assert (last["list_key"], last["status"]) == ("", "lifted") and "all marketing on" in last["proof"]


async def test_ticking_a_topic_while_all_marketing_stays_off_changes_nothing(site: Site) -> None:
    """Finding 10: the page explains instead of dropping the tick."""
    assert (await site.save([("all_off", "on")])).status_code == 200
    before = await site.state()
    response = await submit_as_shown(site, [("topic", "offers"), ("lang", "de")], drop=("lang",))
    assert response.status_code == 409
    assert "Es wurde nichts geändert" in response.text and "„Von allen Werbe-E-Mails abmelden“" in response.text
    assert f'href="/preferences/{site.token}?lang=de"' in response.text
    assert await site.state() == before
    assert (await submit_as_shown(site)).status_code == 200  # the switch kept on without ticks: fine
    assert await site.state() == before


async def test_the_master_switch_withdraws_pending_double_opt_ins_too(site: Site) -> None:
    """Finding 11."""
    await pending_club(site)
    response = await site.save([("all_off", "on"), ("shown", "club")])
    assert response.status_code == 200
    assert ("club", "withdrawn", "weekly") in (await site.state())["consents"]


async def test_the_one_click_page_names_the_list_in_the_page_language(site: Site) -> None:
    """Finding 12."""
    response = await one_click(site, site.token, **{"Accept-Language": "de"})
    assert response.status_code == 200 and "Wöchentlicher Newsletter" in response.text
    assert "Weekly newsletter" not in response.text


async def test_error_pages_keep_the_language_and_link_back(site: Site) -> None:
    """Finding 13."""
    response = await site.save([("topic", "news"), ("lang", "es")], csrf="x" * 40)
    assert response.status_code == 403 and '<html lang="es">' in response.text
    assert f'<a href="/preferences/{site.token}?lang=es">Volver a sus preferencias</a>' in response.text
    bad = await site.save([("frequency", "hourly"), ("lang", "ms")])
    assert bad.status_code == 400 and '<html lang="ms">' in bad.text
    assert f'href="/preferences/{site.token}?lang=ms"' in bad.text
