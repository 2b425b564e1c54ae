"""The parser and classifier against tests/corpus (written separately, as an independent check).

Scores, over every sample and every listed reply:
- kind (dsn, arf, auto-reply, not-bounce);
- per recipient: found at all, severity, class;
- false hard bounces (we say hard, the corpus says soft): there must be none.
On failure the message lists every miss and a per-class table, so a weakness shows its pattern.
"""

from __future__ import annotations

import tomllib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gateway.feedback.classify import Classifier
from gateway.feedback.reports import ReportedRecipient, parse_report
from gateway.feedback.verdicts import Verdict

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests" / "corpus"
RULES = ROOT / "policies" / "bounces.toml"
BOUNCE_DOMAIN = "bounces.example.com"
MIN_ACCURACY = 0.97

pytestmark = pytest.mark.skipif(not (CORPUS / "expected.toml").exists(), reason="no corpus")


@dataclass
class Score:
    total: int = 0
    right: int = 0
    misses: list[str] = field(default_factory=list)
    by_class: Counter[tuple[str, bool]] = field(default_factory=Counter)

    def add(self, ok: bool, miss: str, expected_class: str = "") -> None:
        self.total += 1
        self.right += ok
        if expected_class:
            self.by_class[(expected_class, ok)] += 1
        if not ok:
            self.misses.append(miss)

    @property
    def accuracy(self) -> float:
        return self.right / self.total if self.total else 1.0

    def table(self) -> str:
        classes = sorted({name for name, _ in self.by_class})
        return "\n".join(f"  {name:18} {self.by_class[(name, True)]:4} right {self.by_class[(name, False)]:4} wrong"
                         for name in classes)


@dataclass
class Scores:
    kind: Score = field(default_factory=Score)
    found: Score = field(default_factory=Score)
    severity: Score = field(default_factory=Score)
    bounce_class: Score = field(default_factory=Score)
    false_hard: list[str] = field(default_factory=list)

    def recipient(self, where: str, expected: dict[str, str], got: tuple[ReportedRecipient, Verdict] | None) -> None:
        label = f"{where} {expected['address'] or '(no address)'}"
        self.found.add(got is not None, f"{label}: not found")
        if got is None:
            self.severity.add(False, f"{label}: not found", expected["class"])
            return
        rcpt, verdict = got
        self.verdict(label, expected, verdict, rcpt.diagnostic)

    def verdict(self, label: str, expected: dict[str, str], verdict: Verdict, text: str) -> None:
        said = f"{verdict.severity.value} {verdict.bounce_class.value} ({verdict.rule})"
        want = f"{expected['severity']} {expected['class']}"
        detail = f"{label}: got {said}, want {want} | {text[:160]}"
        self.severity.add(verdict.severity.value == expected["severity"], detail, expected["class"])
        self.bounce_class.add(verdict.bounce_class.value == expected["class"], detail, expected["class"])
        if verdict.is_hard and expected["severity"] == "soft":
            self.false_hard.append(detail)

    def report(self) -> str:
        parts = [f"kind {self.kind.right}/{self.kind.total}, recipients found {self.found.right}/{self.found.total}, "
                 f"severity {self.severity.right}/{self.severity.total} ({self.severity.accuracy:.1%}), "
                 f"class {self.bounce_class.right}/{self.bounce_class.total}, false hard {len(self.false_hard)}"]
        for title, lines in (("FALSE HARD", self.false_hard), ("kind", self.kind.misses),
                             ("recipient not found", self.found.misses), ("severity", self.severity.misses),
                             ("class", self.bounce_class.misses)):
            if lines:
                parts.append(f"{title} misses:\n  " + "\n  ".join(lines))
        parts.append("severity by expected class:\n" + self.severity.table())
        parts.append("class by expected class:\n" + self.bounce_class.table())
        return "\n".join(parts)


def _match(expected: list[dict[str, str]],
           got: list[tuple[ReportedRecipient, Verdict]]) -> list[tuple[ReportedRecipient, Verdict] | None]:
    """Pair expected recipients with ours: same address first, then unnamed ones in order."""
    left = list(got)
    pairs: list[tuple[ReportedRecipient, Verdict] | None] = []
    for want in expected:
        found = next((g for g in left if want["address"] and g[0].address.lower() == want["address"].lower()),
                     None)
        if found is None and not want["address"]:
            found = next((g for g in left if not g[0].address), left[0] if len(expected) == 1 and left else None)
        if found is not None:
            left.remove(found)
        pairs.append(found)
    return pairs


@pytest.fixture(scope="module")
def classifier() -> Classifier:
    return Classifier.load(RULES)


def test_samples(classifier: Classifier) -> None:
    manifest = tomllib.loads((CORPUS / "expected.toml").read_text(encoding="utf-8"))
    scores = Scores()
    for name, want in sorted(manifest.items()):
        report = parse_report((CORPUS / name).read_bytes(), bounce_domain=BOUNCE_DOMAIN)
        scores.kind.add(report.kind.value == want["kind"], f"{name}: got {report.kind.value}, want {want['kind']}")
        verdicts = list(classifier.report(report))
        expected = [r for r in want.get("recipients", []) if r["action"] in ("failed", "delayed")]
        for wanted, got in zip(expected, _match(expected, verdicts), strict=True):
            scores.recipient(name, wanted, got)
    summary = scores.report()
    print(summary)
    assert not scores.false_hard, summary
    assert scores.kind.accuracy >= MIN_ACCURACY, summary
    assert scores.found.accuracy >= MIN_ACCURACY, summary
    assert scores.severity.accuracy >= MIN_ACCURACY, summary


def test_replies(classifier: Classifier) -> None:
    replies = tomllib.loads((CORPUS / "replies.toml").read_text(encoding="utf-8"))["reply"]
    scores = Scores()
    for number, reply in enumerate(replies):
        scores.verdict(f"reply {number}", reply, classifier.reply(reply["text"]), reply["text"])
    summary = scores.report()
    print(summary)
    assert not scores.false_hard, summary
    assert scores.severity.accuracy >= MIN_ACCURACY, summary
