"""The recipient-facing listener (http.public_listen): one-click unsubscribe, the preference
centre and the double opt-in confirmation page.

- ``POST /u/TOKEN`` (body ``List-Unsubscribe=One-Click``, as Gmail and Yahoo send it) is
  RFC 8058 one-click: it unsubscribes at once and answers 200 with no redirect,
  idempotently. No CSRF token and no cookie: mailbox providers post it from their servers.
- ``GET /u/TOKEN`` and ``GET /preferences/TOKEN`` show the preference centre and change
  nothing (mail scanners follow links). ``POST /preferences/TOKEN`` saves it.
- ``GET /confirm/TOKEN`` shows a double opt-in's Confirm button; ``POST`` confirms.

Every form carries a CSRF token (gateway/web/csrf.py). A forged, altered or unknown token
gets the same 404 page whatever the reason, so the pages reveal nothing about who exists.
Such failures are counted per client (an IPv6 client by its /64); a client over the limit
gets 429 for its invalid tokens, while a valid token always works. See docs/preferences.md.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs

from fastapi import FastAPI, Request, Response
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.config.schema import PagesSettings
from gateway.ingest import double_opt_in, preferences
from gateway.ingest.preferences import BadChoice, Choice, PreferenceView, Saved
from gateway.ingest.unsubscribe import Click, unsubscribe
from gateway.rewrite.tokens import BadToken, TokenCodec
from gateway.storage import consent_store
from gateway.storage.database import Database
from gateway.storage.errors import StorageError
from gateway.web.csrf import FormGuard, same_site
from gateway.web.i18n import Language, pick_text
from gateway.web.pages import FREQUENCY_LABELS, Pages

log = logging.getLogger(__name__)

HEADERS = {
    # The token in the URL must not leak to other sites. ("no-referrer" would also make
    # browsers send "Origin: null" with our own forms, which the CSRF check must refuse.)
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}
MAX_FORM_BYTES = 64 * 1024
MAX_FORM_FIELDS = 500  # a page of ours sends a few per topic; more is not a form of ours
PREFERENCES_FORM = "preferences"
CONFIRM_FORM = "confirm"


@dataclass
class RateLimit:
    """At most ``burst`` failed requests per client, refilled at ``per_second``.

    Only invalid tokens cost anything, and only they are refused once a client is over the
    limit: a person (or Gmail's one-click, possibly many people behind one proxy address)
    with a valid link is never refused, while guessing is.
    """

    burst: float = 30.0
    per_second: float = 0.5
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)

    def allow(self, client: str) -> bool:
        now = self.clock()
        tokens, last = self._buckets.get(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.per_second)
        if len(self._buckets) > 100_000:
            self._buckets.clear()  # bounded memory under a flood of addresses
        if tokens < 1:
            self._buckets[client] = (tokens, now)
            return False
        self._buckets[client] = (tokens - 1, now)
        return True


class Refused(Exception):
    """Answer with a message page instead (bad token, bad form, too many requests...).

    ``form`` is the posted form when it could be read: its ``lang`` keeps the page's language.
    """

    def __init__(self, status: int, title: str, text: str, form: dict[str, list[str]] | None = None) -> None:
        super().__init__(title)
        self.status, self.title, self.text, self.form = status, title, text, form


def public_app(db: Database, codec: TokenCodec, *, pages: Pages | None = None, public_url: str = "",
               limit: RateLimit | None = None,
               clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> FastAPI:
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None, redirect_slashes=False)
    site = Site(db, codec, pages or Pages.load(PagesSettings()), public_url, limit or RateLimit(), clock)

    @app.api_route("/u/{token}", methods=["GET", "HEAD"])
    @app.api_route("/preferences/{token}", methods=["GET", "HEAD"])
    async def show_preferences(token: str, request: Request) -> Response:
        return await site.answer(request, lambda: site.preference_page(token, request),
                                 f"/preferences/{token}")

    @app.post("/u/{token}")
    async def one_click(token: str, request: Request) -> Response:
        return await site.answer(request, lambda: site.one_click(token, request), f"/preferences/{token}")

    @app.post("/preferences/{token}")
    async def save_preferences(token: str, request: Request) -> Response:
        return await site.answer(request, lambda: site.save_preferences(token, request),
                                 f"/preferences/{token}")

    @app.api_route("/confirm/{token}", methods=["GET", "HEAD"])
    async def show_confirmation(token: str, request: Request) -> Response:
        return await site.answer(request, lambda: site.confirm_page(token, request, None),
                                 f"/confirm/{token}")

    @app.post("/confirm/{token}")
    async def confirm(token: str, request: Request) -> Response:
        return await site.answer(request, lambda: site.confirm(token, request), f"/confirm/{token}")

    @app.get("/static/pages.css")
    async def stylesheet() -> Response:
        return Response(site.pages.stylesheet, media_type="text/css; charset=utf-8",
                        headers={"Cache-Control": "public, max-age=86400",
                                 "X-Content-Type-Options": "nosniff"})

    return app


@dataclass
class Site:
    """The handlers behind the routes, with what they share (database, codec, pages, clock)."""

    db: Database
    codec: TokenCodec
    pages: Pages
    public_url: str
    limiter: RateLimit
    clock: Callable[[], datetime]

    def __post_init__(self) -> None:
        self.guard = FormGuard(self.codec)
        self.rejoin_window = timedelta(seconds=self.pages.settings.rejoin_window)

    # -- plumbing --

    async def answer(self, request: Request, handler: Callable[[], Awaitable[Response]],
                     back: str) -> Response:
        """Run a page handler; refusals and storage trouble become message pages.

        The token is checked first: a valid one is never refused. Each invalid one costs the
        client one unit of the rate limit, and a client out of units gets 429 instead of 404.
        ``back`` is the page a refused form links back to.
        """
        try:
            return await handler()
        except BadToken:
            if not self.limiter.allow(client_key(_client(request))):
                response = self._message(request, 429, "Too many requests",
                                         "Please try again in a few seconds.")
                response.headers["Retry-After"] = str(int(1 / self.limiter.per_second) + 1)
                return response
            return self._message(request, 404, "Link not valid", "This link is not valid. If you copied it, "
                                 "check that it is complete.")
        except Refused as refused:
            return self._message(request, refused.status, refused.title, refused.text, refused.form, back)
        except StorageError as exc:
            log.error("public page could not be served: %s", exc)
            return self._message(request, 503, "Try again later", "We cannot handle this right now. "
                                 "Please try again in a few minutes.", None, back)

    def language(self, request: Request, contact_locale: str | None, form: dict[str, list[str]] | None = None
                 ) -> Language:
        requested = (form or {}).get("lang", [None])[-1] or request.query_params.get("lang")
        return self.pages.catalogs.choose(requested=requested, contact=contact_locale,
                                          accept_language=request.headers.get("accept-language"))

    def html(self, status: int, template: str, lang: Language, title: str, **context: object) -> Response:
        document = self.pages.render(template, lang, lang.gettext(title), **context)
        return Response(document, status_code=status, media_type="text/html; charset=utf-8",
                        headers={**HEADERS, "Content-Security-Policy": self.pages.csp})

    def _message(self, request: Request, status: int, title: str, text: str,
                 form: dict[str, list[str]] | None = None, back: str | None = None) -> Response:
        lang = self.language(request, None, form)
        return self.html(status, "message.html", lang, title, text=lang.gettext(text),
                         back=f"{back}?lang={lang.code}" if back else None)

    def _click(self, request: Request, source: str) -> Click:
        agent = request.headers.get("user-agent", "")[:500] or None
        return Click(source, _client(request), agent, self.clock())

    async def _form(self, request: Request, name: str, token: str) -> dict[str, list[str]]:
        """The posted form once its origin and CSRF token check out (else Refused 403)."""
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM_BYTES:
                raise Refused(413, "Form too large", "This form is larger than any of our pages sends.")
        try:
            form = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True,
                            max_num_fields=MAX_FORM_FIELDS)
        except ValueError:  # more fields than max_num_fields
            raise Refused(413, "Form too large", "This form is larger than any of our pages sends.") from None
        given = (form.get("csrf") or [""])[-1]
        origin_ok = same_site(request.headers.get("origin"), request.headers.get("sec-fetch-site"),
                              request.headers.get("host"), self.public_url)
        if not origin_ok or not self.guard.valid(given, token, name, self.clock()):
            raise Refused(403, "Page expired", "This page has expired or was not sent from our site. "
                          "Nothing was changed. Please open the link again and repeat your choice.", form)
        return form

    # -- one-click --

    async def one_click(self, token: str, request: Request) -> Response:
        done = await unsubscribe(self.db, self.codec, token, self._click(request, "one-click"))
        lang = self.language(request, None)
        if done.list_key:
            names, _ = await self._list_texts(done.list_key)
            topic = _name(names, done.list_key, lang)
        else:
            topic = lang.gettext("all marketing messages")
        return self.html(200, "unsubscribed.html", lang, "Unsubscribed", topic=topic,
                         back=f"/preferences/{token}?lang={lang.code}")

    # -- preference centre --

    async def preference_page(self, token: str, request: Request) -> Response:
        view = await preferences.load_view(self.db, self.codec, token, self.clock(), self.rejoin_window)
        lang = self.language(request, view.locale)
        return self._preference_form(token, view, lang)

    def _preference_form(self, token: str, view: PreferenceView, lang: Language) -> Response:
        topics = [_TopicOut(t.key, _name(t.names, t.key, lang), pick_text(t.descriptions, lang.code) or "",
                            view.ticked(t), locked=not view.ticked(t) and not view.can_join)
                  for t in view.topics]
        link = view.topic(view.ref.list_key)
        shown = link is not None and link.subscribed and not view.all_off
        link_topic = _name(link.names, link.key, lang) if shown and link is not None else None
        note = None if view.can_join else _JOIN_NOTE_ERASED if view.erased else _JOIN_NOTE_OLD
        return self.html(200, "preferences.html", lang, "Your email preferences", topics=topics,
                         frequency=view.frequency, frequencies=self.pages.frequencies(lang),
                         all_off=view.all_off, all_off_locked=view.all_off and not view.can_join,
                         join_note=lang.gettext(note) if note else None, link_topic=link_topic,
                         action=f"/preferences/{token}",
                         csrf=self.guard.issue(token, PREFERENCES_FORM, self.clock()))

    async def save_preferences(self, token: str, request: Request) -> Response:
        view = await preferences.load_view(self.db, self.codec, token, self.clock(), self.rejoin_window)
        form = await self._form(request, PREFERENCES_FORM, token)
        lang = self.language(request, view.locale, form)
        try:
            leaving_one = (form.get("action") or ["save"])[-1] == "leave"
            posted = None if leaving_one else preferences.choice_from_form(form)
        except BadChoice as exc:
            raise Refused(400, "Form not valid", "This form was changed after it left our site.",
                          form) from exc

        def choose(current: PreferenceView) -> Choice:
            return posted or preferences.leaving_one(current, current.ref.list_key)

        saved = await preferences.save(self.db, view.ref, choose, self._click(request, preferences.SOURCE),
                                       self.rejoin_window)
        if saved.conflict:
            raise Refused(409, "Nothing was changed", _TICKS_WHILE_ALL_OFF, form)
        log.info("preference page saved for delivery %s: %d change(s), %d queued message(s) dropped",
                 view.ref.delivery_id, saved.changes, saved.dropped)
        after = await preferences.load_view(self.db, self.codec, token, self.clock(), self.rejoin_window)
        return self._saved_page(token, after, saved, lang)

    def _saved_page(self, token: str, view: PreferenceView, saved: Saved, lang: Language) -> Response:
        kept = [_name(t.names, t.key, lang) for t in view.topics if t.subscribed]
        frequency = view.frequency
        label = lang.gettext(FREQUENCY_LABELS[frequency]) if frequency is not None else None
        return self.html(200, "saved.html", lang, "Preferences saved", all_off=view.all_off, kept=kept,
                         frequency=label, back=f"/preferences/{token}?lang={lang.code}")

    # -- double opt-in --

    async def confirm_page(self, token: str, request: Request, done: double_opt_in.Confirmation | None,
                           form: dict[str, list[str]] | None = None) -> Response:
        now = self.clock()
        found = done or await self.db.read(lambda conn: double_opt_in.pending(conn, self.codec, token, now))
        if found is None:
            raise BadToken("nothing to confirm")
        lang = self.language(request, found.contact.locale, form)
        names, descriptions = await self._list_texts(found.list_key)
        title = "Subscription confirmed" if found.status == "confirmed" else "Confirm your subscription"
        return self.html(200, "confirm.html", lang, title, done=found.status == "confirmed",
                         topic=_name(names, found.list_key, lang),
                         description=pick_text(descriptions, lang.code) or "", action=f"/confirm/{token}",
                         csrf=self.guard.issue(token, CONFIRM_FORM, now))

    async def confirm(self, token: str, request: Request) -> Response:
        now = self.clock()
        if await self.db.read(lambda conn: double_opt_in.pending(conn, self.codec, token, now)) is None:
            raise BadToken("nothing to confirm")
        form = await self._form(request, CONFIRM_FORM, token)
        click = self._click(request, "confirm-page")
        evidence = double_opt_in.Evidence(click.source, click.at, click.ip, click.user_agent)
        done = await self.db.write(lambda conn: self._confirm(conn, token, evidence))
        if done is None:
            raise BadToken("nothing to confirm")
        return await self.confirm_page(token, request, done, form)

    async def _confirm(self, conn: AsyncConnection, token: str, evidence: double_opt_in.Evidence
                       ) -> double_opt_in.Confirmation | None:
        found = await double_opt_in.pending(conn, self.codec, token, evidence.at)
        if found is None:
            return None
        return await double_opt_in.confirm(conn, self.codec, token, found.list_key, evidence)

    async def _list_texts(self, key: str) -> tuple[Mapping[str, str], Mapping[str, str]]:
        for record in await self.db.read(consent_store.all_lists):
            if record.key == key:
                return record.names, record.descriptions
        return {}, {}


# Texts of the page that are not in a template (translated in every catalog).
_JOIN_NOTE_OLD = ("This link is too old to join topics. "
                  "To join one, use the link in a recent message from us.")
_JOIN_NOTE_ERASED = ("Your data was erased at your request, so topics cannot be joined here. "
                     "You can still leave.")
_TICKS_WHILE_ALL_OFF = ("You ticked a topic while \u201cUnsubscribe from all marketing\u201d is ticked. "
                        "To receive it, untick \u201cUnsubscribe from all marketing\u201d first, "
                        "then save again.")
PAGE_TEXTS = (_JOIN_NOTE_OLD, _JOIN_NOTE_ERASED, _TICKS_WHILE_ALL_OFF)


@dataclass(frozen=True)
class _TopicOut:
    key: str
    name: str
    description: str
    subscribed: bool
    locked: bool = False  # shown disabled: the link may not join it


def _name(names: Mapping[str, str], key: str, lang: Language) -> str:
    return pick_text(names, lang.code) or key


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def client_key(host: str) -> str:
    """The rate limit's key for a client: its address, or its /64 for IPv6 (one end site
    usually holds a whole /64, so per-address buckets would be free to multiply)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)
