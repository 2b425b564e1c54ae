"""Bounce classification from the rule table in policies/bounces.toml (pure).

One reading for every kind of failure - a synchronous SMTP reply, a local failure
(DNS, connection), a DSN recipient - so that they all change an address's state the
same way. Rules are tried in order and the first match wins; a rule matches when every
condition it names holds (status, code, text, provider), and ``unless`` vetoes it.

Two guarantees do not depend on the rule file: a temporary failure (4xx code, 4.x.x
status, a DSN ``Action: delayed``) is never ``hard``, and ``hard`` is reserved for the
classes that prove the address itself is dead (see :data:`HARD_CLASSES`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from gateway.config.loader import SourceFile, parse_toml, read_toml, validate_layers
from gateway.feedback import mailtext
from gateway.feedback.prefilter import LiteralIndex, lower_pattern, required_literals
from gateway.feedback.reports import Report, ReportedRecipient
from gateway.feedback.rules import HARD_CLASSES, Rule, RuleFile
from gateway.feedback.verdicts import BounceClass, ReportKind, Severity, Verdict
from gateway.records import AttemptResult

__all__ = ["HARD_CLASSES", "Classifier", "Explanation", "ReplyFacts", "reply_facts"]

MAX_TEXT = 2000  # classification reads this much of a reply; real ones are far shorter
_CODE_RE = re.compile(r"^\s*([245][0-5][0-9])(?:[ \-]|$)")
# A reply quoted inside a longer text: "said: 550 5.1.1 ...", "RCPT TO:<a@b>: 550 ...".
_QUOTED_CODE_RE = re.compile(r"(?<![\w.\-/:#\[(])([245][0-5][0-9])(?=[ \-]\S|$)")

RULES_FILE = "bounces.toml"  # in the policy directory, next to providers.toml


@dataclass(frozen=True)
class ReplyFacts:
    """What classification reads from one failure text."""

    text: str
    code: int | None  # the basic SMTP code, when the text carries one
    statuses: tuple[str, ...]  # enhanced status codes found (the report's own first)
    lower: str = ""  # the text lower-cased, which the rules' regexes are matched against

    @property
    def temporary(self) -> bool:
        if self.code is not None:
            return self.code < 500
        return bool(self.statuses) and self.statuses[0].startswith("4")


def reply_facts(text: str, status: str = "") -> ReplyFacts:
    text = mailtext.one_line(text, MAX_TEXT)
    reply = re.sub(r"^gave up after \d+ attempts?:\s*", "", text) if text.startswith("gave up") else text
    match = _CODE_RE.match(reply) or _QUOTED_CODE_RE.search(reply)
    code = int(match.group(1)) if match else None
    found = mailtext.enhanced_status(text)
    statuses = tuple(dict.fromkeys(s for s in (status, found) if s))
    return ReplyFacts(text=text, code=code, statuses=statuses, lower=text.lower())


@dataclass(frozen=True)
class Explanation:
    """What `gateway bounces test` prints: the verdict and how it was reached."""

    verdict: Verdict
    rule: str  # rule name, or "default"
    where: str  # file:line of the rule, or "" for the default
    reasons: tuple[str, ...]  # one line per condition that matched, then any adjustment


@dataclass(frozen=True)
class _Text:
    """One ``text`` regex of a rule, lower-cased, with the literals every match contains."""

    regex: re.Pattern[str]
    literals: frozenset[str] | None  # None: no usable literal, always search
    written: str  # as in the file, to quote the match in explanations

    def search(self, facts: ReplyFacts, present: frozenset[str]) -> re.Match[str] | None:
        if self.literals is not None and self.literals.isdisjoint(present):
            return None
        return self.regex.search(facts.lower)

    def quote(self, facts: ReplyFacts, match: re.Match[str]) -> str:
        """The matched words as the reply wrote them (the search ran on lower case)."""
        shown = re.search(self.written, facts.text, re.IGNORECASE)
        return shown.group(0) if shown is not None else match.group(0)


@dataclass(frozen=True)
class _Compiled:
    rule: Rule
    line: int
    statuses: tuple[str, ...]
    codes: frozenset[int]
    texts: tuple[_Text, ...]
    unless: tuple[_Text, ...]
    providers: frozenset[str]
    literals: frozenset[str] | None  # every text match contains one of these (None: unknown)

    def status_match(self, facts: ReplyFacts) -> str | None:
        for status in facts.statuses:
            for wanted in self.statuses:
                if status == wanted or (wanted.endswith(".") and status.startswith(wanted)):
                    return f"status {status} matches {wanted!r}"
        return None

    def matches(self, facts: ReplyFacts, provider: str, present: frozenset[str],
                why: list[str] | None = None) -> bool:
        """Whether every condition holds; ``why`` (when given) gets one line per condition."""
        if self.providers and provider not in self.providers:
            return False
        if self.statuses:
            status = self.status_match(facts)
            if status is None:
                return False
            if why is not None:
                why.append(status)
        if self.codes and facts.code not in self.codes:
            return False
        hit = None
        if self.texts:
            if self.literals is not None and self.literals.isdisjoint(present):
                return False
            hit = next(((t, m) for t in self.texts if (m := t.search(facts, present)) is not None), None)
            if hit is None:
                return False
        if any(veto.search(facts, present) is not None for veto in self.unless):
            return False
        if why is not None:
            why[:0] = [f"provider {provider}"] if self.providers else []
            why.extend([f"code {facts.code}"] if self.codes else [])
            why.extend([f"text matched {hit[0].quote(facts, hit[1])!r}"] if hit else [])
        return True


class Classifier:
    """An ordered rule table; build it with :meth:`load` (or :meth:`from_rules` in tests)."""

    def __init__(self, rules: RuleFile, *, source: str = "", lines: dict[int, int] | None = None) -> None:
        lines = lines or {}
        self.source = source
        self.default = rules.default
        self._rules = tuple(_compile(rule, lines.get(index, 0)) for index, rule in enumerate(rules.rule))
        self._literals = LiteralIndex(literal for compiled in self._rules
                                      for text in (*compiled.texts, *compiled.unless)
                                      for literal in text.literals or ())

    @classmethod
    def from_policy_dir(cls, directory: Path) -> Classifier:
        return cls.load(directory / RULES_FILE)

    @classmethod
    def load(cls, path: Path) -> Classifier:
        """Read and validate a rule file; ConfigError names file, key and line."""
        return cls._from_source(read_toml(path))

    @classmethod
    def from_text(cls, text: str, *, name: str = "bounces.toml") -> Classifier:
        """A classifier from TOML text (tests, tools): same validation as :meth:`load`."""
        return cls._from_source(parse_toml(Path(name), text))

    @classmethod
    def _from_source(cls, source: SourceFile) -> Classifier:
        rules = validate_layers(RuleFile, [source])
        return cls(rules, source=str(source.path), lines=_rule_lines(source))

    @property
    def rules(self) -> tuple[Rule, ...]:
        return tuple(compiled.rule for compiled in self._rules)

    def reply(self, text: str, *, provider: str = "") -> Verdict:
        """An SMTP reply ("550 5.1.1 ...") or a local failure text."""
        return self._verdict(reply_facts(text), provider, delayed=False)

    def recipient(self, rcpt: ReportedRecipient, *, provider: str = "") -> Verdict:
        """A DSN recipient: its status and diagnostic; a delay is never a hard bounce."""
        if rcpt.action in ("delivered", "relayed", "expanded"):
            return Verdict(BounceClass.OTHER, Severity.SOFT, f"action-{rcpt.action}", rcpt.status)
        facts = reply_facts(rcpt.diagnostic, rcpt.status)
        return self._verdict(facts, provider, delayed=rcpt.action == "delayed")

    def attempt(self, result: AttemptResult) -> Verdict | None:
        """The scheduler's hook: None for a delivered attempt, else the reply's verdict."""
        if result.kind == "delivered":
            return None
        verdict = self.reply(result.reply)
        if result.kind == "transient" and verdict.is_hard:
            return _soften(verdict)
        return verdict

    def report(self, report: Report, *, provider: str = "") -> tuple[tuple[ReportedRecipient, Verdict], ...]:
        """Each failed or delayed recipient of a report with its verdict; ARF recipients are
        complaints (soft: a complaint says the person is there and does not want the mail)."""
        if report.kind is ReportKind.DSN:  # success notices (delivered, relayed, expanded) are no bounces
            return tuple((rcpt, self.recipient(rcpt, provider=provider)) for rcpt in report.recipients
                         if rcpt.action in ("failed", "delayed"))
        if report.kind is ReportKind.ARF:
            feedback_type = report.arf.feedback_type if report.arf else "abuse"
            verdict = Verdict(BounceClass.COMPLAINT, Severity.SOFT, f"arf-{feedback_type}")
            return tuple((rcpt, verdict) for rcpt in report.recipients)
        return ()

    def explain(self, text: str, *, provider: str = "", status: str = "") -> Explanation:
        """The verdict for a reply, with the rule that gave it and why (`gateway bounces test`)."""
        facts = reply_facts(text, status)
        present = self._literals.present(facts.lower)
        for compiled in self._rules:
            why: list[str] = []
            if compiled.matches(facts, provider, present, why):
                reasons = tuple(why)
                verdict = self._finish(compiled.rule.bounce_class, compiled.rule.severity,
                                       compiled.rule.name, facts, delayed=False)
                where = f"{self.source}:{compiled.line}" if compiled.line else self.source
                return Explanation(verdict, compiled.rule.name, where,
                                   reasons + _adjustment(compiled.rule.severity, verdict, facts))
        verdict = self._finish(self.default.bounce_class, self.default.severity, "default", facts,
                               delayed=False)
        return Explanation(verdict, "default", "",
                           ("no rule matched", *_adjustment(self.default.severity, verdict, facts)))

    def _verdict(self, facts: ReplyFacts, provider: str, *, delayed: bool) -> Verdict:
        present = self._literals.present(facts.lower)
        for compiled in self._rules:
            if compiled.matches(facts, provider, present):
                rule = compiled.rule
                return self._finish(rule.bounce_class, rule.severity, rule.name, facts, delayed=delayed)
        return self._finish(self.default.bounce_class, self.default.severity, "default", facts,
                            delayed=delayed)

    @staticmethod
    def _finish(bounce_class: BounceClass, severity: Severity, name: str, facts: ReplyFacts, *,
                delayed: bool) -> Verdict:
        if delayed or facts.temporary:
            severity = Severity.SOFT
        status = facts.statuses[0] if facts.statuses else ""
        return Verdict(bounce_class, severity, name, status)


def _soften(verdict: Verdict) -> Verdict:
    return Verdict(verdict.bounce_class, Severity.SOFT, verdict.rule, verdict.status)


def _adjustment(wanted: Severity, verdict: Verdict, facts: ReplyFacts) -> tuple[str, ...]:
    if wanted is Severity.HARD and not verdict.is_hard:
        return (f"severity soft, not hard: a temporary failure ({facts.code or facts.statuses[0]}) "
                "never proves the address dead",)
    return ()


def _compile(rule: Rule, line: int) -> _Compiled:
    texts = tuple(_text(p) for p in rule.text)
    every = [t.literals for t in texts if t.literals is not None]
    literals = frozenset().union(*every) if texts and len(every) == len(texts) else None
    return _Compiled(rule=rule, line=line, statuses=tuple(rule.status), codes=frozenset(rule.code),
                     texts=texts, unless=tuple(_text(p) for p in rule.unless),
                     providers=frozenset(p.lower() for p in rule.provider), literals=literals)


def _text(written: str) -> _Text:
    lowered = lower_pattern(written)
    return _Text(regex=re.compile(lowered), literals=required_literals([lowered]), written=written)


def _rule_lines(source: SourceFile) -> dict[int, int]:
    """Line of each [[rule]] header, so that `bounces test` can point at the rule."""
    lines: dict[int, int] = {}
    for number, line in enumerate(source.text.splitlines(), start=1):
        if re.match(r"\s*\[\[\s*rule\s*\]\]", line):
            lines[len(lines)] = number
    return lines
