"""Making a rule table of case-insensitive regexes cheap to try (pure).

Python's ``re`` tries every branch of an alternation at every position, and
``IGNORECASE`` makes that slower still; a bounce rule table is dozens of rules with dozens
of branches each. Two tricks keep one classification in the tens of microseconds:

* the reply is lower-cased once and each pattern is lower-cased outside its escapes
  (``\\S`` stays ``\\S``), so the regexes run without ``IGNORECASE``;
* from each pattern we derive literal strings of which every match must contain at
  least one ("user unknown", "nxdomain"); a rule whose literals are all absent from the
  reply is skipped with a few ``in`` tests instead of a regex search.

The literal extraction reads the regex parse tree (``re._parser``). Anything it does not
understand makes it give up for that pattern, which only costs speed, never a match.
"""

from __future__ import annotations

import importlib
from collections import Counter
from collections.abc import Iterable
from typing import Any

MIN_LITERAL = 3  # UTF-8 bytes: shorter required strings are in almost every reply (two CJK characters pass)
KEY = 2  # the index files literals under two-character slices: no literal may be shorter

try:  # the parser is internal to re; without it every rule is simply searched in full
    _parser: Any = importlib.import_module("re._parser")
    _c: Any = importlib.import_module("re._constants")
except ImportError:  # pragma: no cover - other Python implementations
    _parser = _c = None


def lower_pattern(pattern: str) -> str:
    """Lower-case a regex's literal characters, leaving escapes (``\\S``, ``\\B``) alone."""
    out: list[str] = []
    escaped = False
    for char in pattern:
        if escaped:
            out.append(char)
            escaped = False
        elif char == "\\":
            out.append(char)
            escaped = True
        else:
            out.append(char.lower())
    return "".join(out)


def required_literals(patterns: Iterable[str]) -> frozenset[str] | None:
    """Strings of which any match of any of ``patterns`` contains one; None if unknown.

    ``patterns`` must already be lower-cased (:func:`lower_pattern`).
    """
    found: set[str] = set()
    for pattern in patterns:
        literals = _pattern_literals(pattern)
        if literals is None:
            return None
        found |= literals
    return frozenset(found)


def _pattern_literals(pattern: str) -> frozenset[str] | None:
    if _parser is None:
        return None
    try:
        tree = _parser.parse(pattern, 0)
        best = _best(list(tree))
    except Exception:  # any construct this reader does not know: no prefilter for it
        return None
    if best is None or min(len(s.encode("utf-8")) for s in best) < MIN_LITERAL or min(map(len, best)) < KEY:
        return None
    return best


def _best(items: list[tuple[Any, Any]]) -> frozenset[str] | None:
    """The most selective requirement of a sequence of regex items."""
    candidates: list[frozenset[str]] = []
    run: list[str] = []
    for op, arg in items:
        if op is _c.LITERAL:
            run.append(chr(arg))
            continue
        if op is _c.AT:  # \b, ^, $: zero width, the literals around it stay adjacent
            continue
        if run:
            candidates.append(frozenset({"".join(run)}))
            run = []
        inner = _required_of(op, arg)
        if inner:
            candidates.append(inner)
    if run:
        candidates.append(frozenset({"".join(run)}))
    if not candidates:
        return None
    return max(candidates, key=lambda c: (min(len(s.encode("utf-8")) for s in c), -len(c)))


def _required_of(op: Any, arg: Any) -> frozenset[str] | None:
    if op is _c.SUBPATTERN:
        return _best(list(arg[3]))
    if op is _c.ATOMIC_GROUP:
        return _best(list(arg))
    if op is _c.BRANCH:
        branches = [_best(list(branch)) for branch in arg[1]]
        if any(b is None for b in branches):
            return None
        return frozenset().union(*(b for b in branches if b is not None))
    if op in (_c.MAX_REPEAT, _c.MIN_REPEAT, _c.POSSESSIVE_REPEAT) and arg[0] >= 1:
        return _best(list(arg[2]))
    return None


class LiteralIndex:
    """Which of many literal strings occur in a text, with little work per text.

    Each literal is filed under one of its two-character slices, the one least common
    among all the literals (so "nxdomain" is filed under "xd", not "in"). The text's own
    two-character slices, intersected with those keys, leave a few literals to test
    with ``in``.
    """

    def __init__(self, literals: Iterable[str]) -> None:
        unique = sorted(set(literals))
        counts = Counter(gram for literal in unique for gram in set(_grams(literal)))
        self._by_key: dict[str, list[str]] = {}
        for literal in unique:
            key = min(_grams(literal), key=lambda gram: (counts[gram], gram))
            self._by_key.setdefault(key, []).append(literal)

    def present(self, text: str) -> frozenset[str]:
        keys = self._by_key.keys() & _grams(text)
        return frozenset(literal for key in keys for literal in self._by_key[key] if literal in text)


def _grams(text: str) -> set[str]:
    return set(map(str.__add__, text, text[1:]))
