"""CSRF protection for the forms on the public pages (pure: the clock is passed in).

The pages keep no session and set no cookie, so the form token is stateless: a token of
purpose FORM from the same codec as the link tokens (so it rotates with the token keys),
whose number is the time it was issued and whose binding is the page's link token and the
form's name. A token therefore works only on the page it was made for, only for that form,
and only for ``MAX_AGE`` after the page was shown. Browsers that say where a request came
from (``Origin``, ``Sec-Fetch-Site``) must also say it came from this site.

The one-click endpoint (``POST /u/TOKEN``) has no such check on purpose: mailbox providers
post to it from their own servers (RFC 8058), and the link token is its only credential.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from urllib.parse import urlsplit

from gateway.rewrite.tokens import BadToken, Binding, Purpose, TokenCodec

MAX_AGE = timedelta(hours=24)  # long enough to leave the page open over lunch, short enough to expire
CLOCK_SKEW = timedelta(minutes=5)  # nodes sharing keys may disagree on the time a little


class FormGuard:
    def __init__(self, codec: TokenCodec, max_age: timedelta = MAX_AGE) -> None:
        self._codec = codec
        self.max_age = max_age

    def issue(self, page_token: str, form: str, now: datetime) -> str:
        return self._codec.issue(Purpose.FORM, int(now.timestamp()), Binding(page_token, form))

    def valid(self, given: str, page_token: str, form: str, now: datetime) -> bool:
        try:
            parts = self._codec.parse(given)
            self._codec.verify(parts, Purpose.FORM, Binding(page_token, form))
        except BadToken:
            return False
        age = now.timestamp() - parts.delivery_id
        return -CLOCK_SKEW.total_seconds() <= age <= self.max_age.total_seconds()


def same_site(origin: str | None, fetch_site: str | None, host: str | None, public_url: str) -> bool:
    """Whether the browser's own account of the request's origin, when it gives one, is us.

    ``host`` is the request's Host header; ``public_url`` the configured base of the links
    (a proxy in front may change the scheme or the host, so either may match).
    """
    if fetch_site is not None and fetch_site.lower() not in ("same-origin", "none"):
        return False
    if origin is None:
        return True  # older browsers, and clients that are not browsers: the form token decides
    if origin == "null":  # privacy settings can hide even our own origin; Sec-Fetch-Site cannot lie
        return fetch_site is not None and fetch_site.lower() == "same-origin"
    netloc = urlsplit(origin).netloc.lower()
    allowed = {urlsplit(public_url).netloc.lower()}
    if host:
        allowed.add(host.lower())
    return bool(netloc) and netloc in allowed
