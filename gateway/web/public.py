"""The recipient-facing listener (http.public_listen): one-click unsubscribe (RFC 8058).

``POST /u/TOKEN`` (body ``List-Unsubscribe=One-Click``, as Gmail and Yahoo send it, or the
button on the page) unsubscribes at once and answers 200 with no redirect, idempotently.
``GET /u/TOKEN`` never changes anything - mail scanners follow links - and shows what the
link is for with a button that posts. A forged, altered or unknown token gets the same
plain 404 whatever the reason, so the page reveals nothing about who exists. Requests are
rate-limited per client address. The full preference centre comes with the pages stage.
"""

from __future__ import annotations

import html
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from fastapi import FastAPI, Request, Response

from gateway.ingest.unsubscribe import Click, recipient_of, unsubscribe
from gateway.rewrite.tokens import BadToken, TokenCodec
from gateway.storage.database import Database
from gateway.storage.errors import StorageError

log = logging.getLogger(__name__)

HEADERS = {
    # The token in the URL must not leak to other sites, and the page loads nothing.
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
                               "base-uri 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


@dataclass
class RateLimit:
    """At most ``burst`` failed requests per client address, refilled at ``per_second``.

    Only invalid tokens cost anything: a person (or Gmail's one-click, possibly many people
    behind one proxy address) with valid links is never refused, while guessing is.
    """

    burst: float = 30.0
    per_second: float = 0.5
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)

    def blocked(self, client: str) -> bool:
        """Out of tokens (without spending one)."""
        now = self.clock()
        tokens, last = self._buckets.get(client, (self.burst, now))
        return min(self.burst, tokens + (now - last) * self.per_second) < 1

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


def _page(status: int, title: str, body: str) -> Response:
    document = (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
                f'<meta name="viewport" content="width=device-width, initial-scale=1">'
                f"<title>{html.escape(title)}</title>"
                f"<style>body{{font-family:sans-serif;max-width:34em;margin:3em auto;padding:0 1em}}"
                f"button{{font-size:1em;padding:.5em 1em}}</style></head>"
                f"<body><h1>{html.escape(title)}</h1>{body}</body></html>")
    return Response(document, status_code=status, media_type="text/html; charset=utf-8", headers=HEADERS)


NOT_VALID = ("Link not valid", "<p>This unsubscribe link is not valid. If you copied it, check that it "
             "is complete.</p>")


def public_app(db: Database, codec: TokenCodec, *, limit: RateLimit | None = None,
               clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> FastAPI:
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None, redirect_slashes=False)
    limiter = limit or RateLimit()

    def too_many() -> Response:
        response = _page(429, "Too many requests", "<p>Please try again in a few seconds.</p>")
        response.headers["Retry-After"] = str(int(1 / limiter.per_second) + 1)
        return response

    def not_valid(request: Request) -> Response:
        limiter.allow(client(request))  # spend one: guessing tokens is what is limited
        return _page(404, *NOT_VALID)

    def client(request: Request) -> str:
        return request.client.host if request.client else "unknown"

    @app.api_route("/u/{token}", methods=["GET", "HEAD"])
    async def show(token: str, request: Request) -> Response:
        if limiter.blocked(client(request)):
            return too_many()
        try:
            _, name = await recipient_of(db, codec, token)
        except BadToken:
            return not_valid(request)
        except StorageError:
            return _page(503, "Try again later", "<p>We cannot handle this right now.</p>")
        return _page(200, "Unsubscribe", (
            f"<p>Stop receiving <strong>{html.escape(name)}</strong> at this address?</p>"
            f'<form method="post"><input type="hidden" name="List-Unsubscribe" value="One-Click">'
            f"<button type=\"submit\">Unsubscribe</button></form>"
            "<p>Messages about your orders and your account will still be sent.</p>"))

    @app.post("/u/{token}")
    async def one_click(token: str, request: Request) -> Response:
        if limiter.blocked(client(request)):
            return too_many()
        agent = request.headers.get("user-agent", "")[:500] or None
        click = Click("one-click", client(request), agent, clock())
        try:
            done = await unsubscribe(db, codec, token, click)
        except BadToken:
            return not_valid(request)
        except StorageError as exc:
            log.error("unsubscribe could not be recorded: %s", exc)
            return _page(503, "Try again later", "<p>We could not record this. Please try again.</p>")
        name = html.escape(done.list_name)
        return _page(200, "Unsubscribed", f"<p>You will no longer receive <strong>{name}</strong>.</p>")

    return app
