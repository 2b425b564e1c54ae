"""Languages of the public pages: gettext catalogs and the choice of a language.

Catalogs are ordinary gettext ``.po`` files, ``LOCALE/LC_MESSAGES/messages.po``: the ones
shipped in ``gateway/web/locales`` and, on top, the ones under ``[pages] locale_dir``. An
operator's file for a shipped locale overrides only the messages it translates; a file
for a new locale adds that language. Files are read once, at start, with Babel and
compiled in memory; a broken file (syntax, or a translation whose ``%(name)s``
placeholders differ from the English text) stops the start with its path and problem.

A language is chosen (:func:`negotiate`) from, in order: the language switch on the page
(``?lang=``), the contact's stored locale, the browser's Accept-Language, the configured
default. Locale names are Babel/CLDR identifiers (``de``, ``zh_Hans``); language tags
in any common spelling (``zh``, ``zh-CN``, ``zh-Hans-SG``, ``de-AT``) find them.
"""

from __future__ import annotations

import io
import re
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from babel.core import Locale, UnknownLocaleError
from babel.messages.catalog import Catalog
from babel.messages.mofile import write_mo
from babel.messages.pofile import PoFileError, read_po
from babel.support import NullTranslations, Translations

SHIPPED = Path(__file__).parent / "locales"
DOMAIN = "messages"
FALLBACK = "en"
_IDENTIFIER = re.compile(r"[a-z]{2,3}(_[A-Za-z0-9]{2,8})*")
_TRADITIONAL_REGIONS = frozenset({"TW", "HK", "MO"})
MAX_ACCEPT_LANGUAGE = 40  # entries read from one header; browsers send a handful


class CatalogError(ValueError):
    """A catalog that cannot be used; the message names the file."""


@dataclass(frozen=True)
class Language:
    code: str  # the catalog's locale identifier: zh_Hans
    tag: str  # the BCP 47 tag for <html lang>: zh-Hans
    name: str  # its own name for itself, for the language switch: 中文 (简体)
    translations: NullTranslations

    def gettext(self, message: str, **values: object) -> str:
        text: str = self.translations.gettext(message)
        return text % values if values else text


class Catalogs:
    """Every available language, loaded once (call :meth:`load` off the event loop)."""

    def __init__(self, languages: Mapping[str, Language], default: str) -> None:
        if default not in languages:
            raise CatalogError(f"default_locale {default!r} has no catalog; available: "
                               f"{', '.join(sorted(languages))}")
        self.languages = dict(languages)
        self.default = default

    @classmethod
    def load(cls, operator_dir: Path | None = None, default: str = FALLBACK) -> Catalogs:
        catalogs: dict[str, Catalog] = {}
        for code, path in _po_files(SHIPPED):
            catalogs[code] = _read(path, code)
        if operator_dir is not None:
            if not operator_dir.is_dir():
                raise CatalogError(f"{operator_dir}: [pages] locale_dir is not a directory")
            for code, path in _po_files(operator_dir):
                extra = _read(path, code)
                if code in catalogs:
                    _override(catalogs[code], extra)
                else:
                    catalogs[code] = extra
        return cls({code: _language(code, catalog) for code, catalog in catalogs.items()}, default)

    def get(self, code: str) -> Language:
        return self.languages.get(code) or self.languages[self.default]

    def choose(self, *, requested: str | None, contact: str | None, accept_language: str | None) -> Language:
        return self.get(negotiate(self.languages, requested=requested, contact=contact,
                                  accept_language=accept_language, default=self.default))


def _po_files(root: Path) -> Iterator[tuple[str, Path]]:
    for entry in sorted(root.iterdir()):
        path = entry / "LC_MESSAGES" / f"{DOMAIN}.po"
        if entry.is_dir() and path.is_file():
            if not _IDENTIFIER.fullmatch(entry.name):
                raise CatalogError(f"{entry}: not a locale identifier such as de, pt_BR or zh_Hans")
            yield entry.name, path


def _read(path: Path, code: str) -> Catalog:
    try:
        with path.open("rb") as handle:
            catalog = read_po(handle, locale=code, domain=DOMAIN, abort_invalid=True)
    except (PoFileError, UnknownLocaleError, UnicodeDecodeError, ValueError) as exc:
        raise CatalogError(f"{path}: {exc}") from None
    for message, errors in catalog.check():
        if errors:
            raise CatalogError(f"{path}:{message.lineno}: {errors[0]}")
    return catalog


def _override(base: Catalog, extra: Catalog) -> None:
    """The operator's translated, non-fuzzy messages replace the shipped ones."""
    for message in extra:
        if not message.id or not message.string or message.fuzzy:
            continue
        shipped = base.get(message.id)
        if shipped is None:
            base[message.id] = message
        else:
            shipped.string = message.string


def _language(code: str, catalog: Catalog) -> Language:
    buffer = io.BytesIO()
    write_mo(buffer, catalog)
    buffer.seek(0)
    try:
        locale = Locale.parse(code)
        name = locale.get_display_name(locale) or code
    except (UnknownLocaleError, ValueError):
        name = code
    return Language(code, code.replace("_", "-"), name, Translations(fp=buffer, domain=DOMAIN))


# -- choosing a language (pure) ---------------------------------------------------------------

def candidates(tag: str) -> list[str]:
    """Locale identifiers a language tag may be served by, most specific first.

    Chinese without a script takes it from the region (Traditional in Taiwan, Hong Kong
    and Macau, Simplified elsewhere), so ``zh-CN`` finds ``zh_Hans`` but ``zh-TW`` does not.
    """
    parts = [part for part in re.split(r"[-_]", tag.strip()) if part]
    if not parts or not parts[0].isalpha() or not 2 <= len(parts[0]) <= 3:
        return []
    language = parts[0].lower()
    script = next((p.title() for p in parts[1:] if len(p) == 4 and p.isalpha()), None)
    region = next((p.upper() for p in parts[1:] if _is_region(p)), None)
    if language == "zh" and script is None:
        script = "Hant" if region in _TRADITIONAL_REGIONS else "Hans"
    found = [f"{language}_{script}_{region}" if script and region else "",
             f"{language}_{script}" if script else "", f"{language}_{region}" if region else ""]
    if language != "zh":  # a Traditional reader is not served Simplified, nor the reverse
        found.append(language)
    return [code for code in found if code]


def _is_region(part: str) -> bool:
    return (len(part) == 2 and part.isalpha()) or (len(part) == 3 and part.isdigit())


def match(tag: str | None, available: Collection[str]) -> str | None:
    if not tag:
        return None
    by_lower = {code.lower(): code for code in available}
    return next((by_lower[c.lower()] for c in candidates(tag) if c.lower() in by_lower), None)


def parse_accept_language(header: str | None) -> list[str]:
    """The tags of an Accept-Language header, most wanted first (RFC 9110 12.5.4)."""
    weighted: list[tuple[float, int, str]] = []
    for position, item in enumerate((header or "").split(",")[:MAX_ACCEPT_LANGUAGE]):
        tag, _, params = item.strip().partition(";")
        quality = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if tag and tag != "*" and quality > 0:
            weighted.append((-quality, position, tag.strip()))
    return [tag for _, _, tag in sorted(weighted)]


def negotiate(available: Collection[str], *, requested: str | None, contact: str | None,
              accept_language: str | None, default: str) -> str:
    for tag in (requested, contact, *parse_accept_language(accept_language)):
        found = match(tag, available)
        if found is not None:
            return found
    return default


def pick_text(texts: Mapping[str, str], code: str, fallback: str = FALLBACK) -> str | None:
    """A list's name or description in language ``code``, else the default, else English.

    The lists table keys them by language tag (``de``, ``zh-CN``); a tag serves ``code`` if
    negotiating that tag against ``code`` alone would choose it. The key ``""`` holds the text
    given without a language (`gateway lists add news --name News`): the operator's default.
    """
    for tag, text in texts.items():
        if text and tag and match(tag, (code,)) == code:
            return text
    if texts.get(""):
        return texts[""]
    for tag, text in texts.items():
        if text and tag and match(tag, (fallback,)) == fallback:
            return text
    return None
