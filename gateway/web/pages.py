"""Server-rendered HTML for the public pages: Jinja2 templates, branding, stylesheet, CSP.

Templates (``gateway/web/templates``) are read once at start into memory, so rendering never
touches the disk inside the event loop. Autoescaping is on for everything, translations
included: a catalog cannot inject markup. Texts go through ``_("...")`` with ``%(name)s``
placeholders filled after translation (so translators can move them).

The pages load one stylesheet from ``/static/pages.css`` - the shipped file with the
operator's colours prepended as CSS variables - and nothing else but the logo. That lets
the Content-Security-Policy forbid every script and every inline style.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from jinja2 import DictLoader, Environment, StrictUndefined

from gateway.config.schema import PagesSettings
from gateway.web.i18n import Catalogs, Language

TEMPLATES = Path(__file__).parent / "templates"
STYLESHEET = Path(__file__).parent / "static" / "pages.css"

# What the frequency choices are called (translated at render time; daily..quarterly as stored).
FREQUENCY_LABELS: Mapping[str, str] = {
    "daily": "Daily", "weekly": "Weekly", "biweekly": "Every two weeks", "monthly": "Monthly",
    "quarterly": "Every three months"}


@dataclass(frozen=True)
class Branding:
    company_name: str
    logo_url: str | None


class Pages:
    def __init__(self, settings: PagesSettings, catalogs: Catalogs) -> None:
        self.settings = settings
        self.catalogs = catalogs
        self.env = Environment(loader=DictLoader(_read_templates()), autoescape=True,
                               undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
        colours = settings.colours
        self.stylesheet = (f":root {{ --brand: {colours.brand}; --text: {colours.text}; "
                           f"--background: {colours.background}; }}\n" + STYLESHEET.read_text("utf-8"))
        version = hashlib.sha256(self.stylesheet.encode()).hexdigest()[:12]
        self.stylesheet_url = f"/static/pages.css?v={version}"
        self.csp = content_security_policy(settings.logo_url)

    @classmethod
    def load(cls, settings: PagesSettings) -> Pages:
        """Read templates and catalogs (blocking file IO: call it off the event loop)."""
        return cls(settings, Catalogs.load(settings.locale_dir, settings.default_locale))

    def render(self, template: str, lang: Language, title: str, **context: Any) -> str:
        languages = sorted(self.catalogs.languages.values(), key=lambda other: other.code)
        return self.env.get_template(template).render(
            _=lang.gettext, lang=lang, title=title, languages=languages, css_url=self.stylesheet_url,
            brand=Branding(self.settings.company_name, self.settings.logo_url),
            privacy_url=self.settings.privacy_url, channels=self.settings.channels, **context)

    def frequencies(self, lang: Language) -> list[tuple[str, str]]:
        return [(value, lang.gettext(label)) for value, label in FREQUENCY_LABELS.items()]


def _read_templates() -> dict[str, str]:
    return {path.name: path.read_text("utf-8") for path in sorted(TEMPLATES.glob("*.html"))}


def content_security_policy(logo_url: str | None) -> str:
    """Nothing but our stylesheet, our forms and the logo's origin; no script at all."""
    parts = ["default-src 'none'", "style-src 'self'", "form-action 'self'", "base-uri 'none'",
             "frame-ancestors 'none'"]
    if logo_url:
        logo = urlsplit(logo_url)
        parts.insert(2, f"img-src {logo.scheme}://{logo.netloc}")
    return "; ".join(parts)
