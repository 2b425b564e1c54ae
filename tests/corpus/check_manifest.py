"""Check that expected.toml and replies.toml agree with the samples and with the manifest rules.

Run from anywhere: ``python tests/corpus/check_manifest.py``. Prints counts per kind and
severity; exits 1 with one line per problem. The loaders are importable so that a test
comparing the classifier with this corpus can reuse them.
"""

from __future__ import annotations

import re
import sys
import tomllib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

CORPUS = Path(__file__).resolve().parent
KINDS = {"dsn", "arf", "auto-reply", "not-bounce"}
ACTIONS = {"failed", "delayed"}
SEVERITIES = {"hard", "soft"}
CLASSES = {
    "user-unknown", "mailbox-full", "mailbox-disabled", "domain-not-found", "no-mx", "spam-block", "policy",
    "rate-limit", "content", "message-too-large", "auth-failure", "tls", "relay-denied", "network", "expired",
    "other", "complaint",
}
HARD_CLASSES = {"user-unknown", "mailbox-disabled", "domain-not-found", "no-mx"}
STATUS = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")
RECIPIENT_KEYS = {"address", "action", "status", "class", "severity"}


@dataclass(frozen=True)
class ExpectedRecipient:
    address: str
    action: str
    status: str
    bounce_class: str
    severity: str


@dataclass(frozen=True)
class ExpectedSample:
    path: str
    kind: str
    note: str
    recipients: tuple[ExpectedRecipient, ...]


@dataclass(frozen=True)
class ExpectedReply:
    text: str
    bounce_class: str
    severity: str


def load_expected(corpus: Path = CORPUS) -> list[ExpectedSample]:
    """Read expected.toml into values; raises KeyError/TypeError on a malformed table."""
    raw = tomllib.loads((corpus / "expected.toml").read_text(encoding="utf-8"))
    samples = []
    for path, table in raw.items():
        recipients = tuple(
            ExpectedRecipient(r["address"], r["action"], r["status"], r["class"], r["severity"])
            for r in table["recipients"]
        )
        samples.append(ExpectedSample(path, table["kind"], table["note"], recipients))
    return samples


def load_replies(corpus: Path = CORPUS) -> list[ExpectedReply]:
    raw = tomllib.loads((corpus / "replies.toml").read_text(encoding="utf-8"))
    return [ExpectedReply(r["text"], r["class"], r["severity"]) for r in raw["reply"]]


def recipient_problems(path: str, kind: str, r: ExpectedRecipient) -> list[str]:
    where = f"{path}: recipient {r.address or '(none)'!r}"
    problems = []
    if r.action not in ACTIONS:
        problems.append(f"{where}: action {r.action!r} not in {sorted(ACTIONS)}")
    if r.status and not STATUS.match(r.status):
        problems.append(f"{where}: status {r.status!r} is not x.y.z")
    if r.bounce_class not in CLASSES:
        problems.append(f"{where}: unknown class {r.bounce_class!r}")
    if r.severity not in SEVERITIES:
        problems.append(f"{where}: severity {r.severity!r} not hard|soft")
    if r.severity == "hard" and (r.bounce_class not in HARD_CLASSES or r.action != "failed"):
        problems.append(f"{where}: hard is only for failed {sorted(HARD_CLASSES)}")
    if "@" in r.address and r.address.split("@")[1] != r.address.split("@")[1].lower():
        problems.append(f"{where}: domain must be lower-case")
    if kind == "arf" and (r.bounce_class, r.severity, r.status, r.action) != ("complaint", "soft", "", "failed"):
        problems.append(f"{where}: arf recipients are complaint/soft/status \"\"/action failed")
    if kind == "dsn" and r.bounce_class == "complaint":
        problems.append(f"{where}: complaint is for arf only")
    return problems


def sample_problems(sample: ExpectedSample) -> list[str]:
    problems = []
    if sample.kind not in KINDS:
        problems.append(f"{sample.path}: kind {sample.kind!r} not in {sorted(KINDS)}")
    if not sample.note:
        problems.append(f"{sample.path}: empty note")
    if sample.kind in {"auto-reply", "not-bounce"} and sample.recipients:
        problems.append(f"{sample.path}: {sample.kind} must have recipients = []")
    if sample.kind == "arf" and not sample.recipients:
        problems.append(f"{sample.path}: arf needs the complained-about recipient (address \"\" if redacted)")
    for r in sample.recipients:
        problems.extend(recipient_problems(sample.path, sample.kind, r))
    return problems


def key_problems(corpus: Path) -> list[str]:
    raw = tomllib.loads((corpus / "expected.toml").read_text(encoding="utf-8"))
    problems = []
    for path, table in raw.items():
        extra = set(table) - {"kind", "note", "recipients"}
        if extra:
            problems.append(f"{path}: unknown keys {sorted(extra)}")
        for r in table.get("recipients", []):
            if set(r) != RECIPIENT_KEYS:
                problems.append(f"{path}: recipient keys {sorted(r)} != {sorted(RECIPIENT_KEYS)}")
    return problems


def file_problems(corpus: Path, samples: list[ExpectedSample]) -> list[str]:
    listed = {s.path for s in samples}
    on_disk = {p.relative_to(corpus).as_posix() for p in corpus.rglob("*.eml")}
    problems = [f"{p}: listed in expected.toml but missing" for p in sorted(listed - on_disk)]
    problems += [f"{p}: sample not listed in expected.toml" for p in sorted(on_disk - listed)]
    for p in sorted(listed & on_disk):
        if len(Path(p).parts) != 2:
            problems.append(f"{p}: samples live at <group>/<name>.eml")
    return problems


def reply_problems(replies: list[ExpectedReply]) -> list[str]:
    problems = []
    for n, r in enumerate(replies, 1):
        where = f"replies.toml reply #{n}"
        if not r.text:
            problems.append(f"{where}: empty text")
        if r.bounce_class not in CLASSES - {"complaint"}:
            problems.append(f"{where}: bad class {r.bounce_class!r}")
        if r.severity not in SEVERITIES:
            problems.append(f"{where}: bad severity {r.severity!r}")
        if r.severity == "hard" and r.bounce_class not in HARD_CLASSES:
            problems.append(f"{where}: hard is only for {sorted(HARD_CLASSES)}")
    return problems


def summary(samples: list[ExpectedSample], replies: list[ExpectedReply]) -> str:
    kinds = Counter(s.kind for s in samples)
    severities = Counter(r.severity for s in samples for r in s.recipients)
    actions = Counter(r.action for s in samples if s.kind == "dsn" for r in s.recipients)
    reply_sev = Counter(r.severity for r in replies)
    return (f"samples {len(samples)}: " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))
            + f"\nrecipients: hard {severities['hard']}, soft {severities['soft']}; "
            f"dsn actions: failed {actions['failed']}, delayed {actions['delayed']}"
            + f"\nreplies {len(replies)}: hard {reply_sev['hard']}, soft {reply_sev['soft']}")


def main() -> int:
    try:
        samples, replies = load_expected(), load_replies()
    except (tomllib.TOMLDecodeError, KeyError, TypeError) as exc:
        print(f"manifest unreadable: {exc!r}", file=sys.stderr)
        return 1
    problems = key_problems(CORPUS) + file_problems(CORPUS, samples) + reply_problems(replies)
    for sample in samples:
        problems.extend(sample_problems(sample))
    for problem in problems:
        print(problem, file=sys.stderr)
    print(summary(samples, replies))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
