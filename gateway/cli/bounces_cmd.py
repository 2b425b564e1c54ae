"""`gateway bounces classify|test`: read saved bounces and try the rules in policies/bounces.toml."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from gateway.config.loader import ConfigError, load_settings
from gateway.config.schema import Settings
from gateway.feedback.classify import RULES_FILE, Classifier
from gateway.feedback.reports import Report, ReportedRecipient, parse_report
from gateway.feedback.verdicts import Verdict

AddConfig = Callable[[argparse.ArgumentParser], None]
MAX_FILE = 32 * 1024 * 1024

SOURCE_TREE = Path(__file__).resolve().parents[2]  # gateway/cli/ -> the checkout


def add_parsers(verbs: Any, add_config: AddConfig) -> None:
    bounces = verbs.add_parser("bounces", help="classify saved bounces and test bounce rules")
    actions = bounces.add_subparsers(dest="bounces_verb", required=True, metavar="ACTION")

    classify = actions.add_parser(
        "classify", help="read saved messages (DSN, ARF, auto-reply ...) and print each verdict")
    classify.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                          help="message files (raw RFC 5322); a directory means every file under it")
    classify.add_argument("--json", action="store_true", help="one JSON object per line")
    classify.add_argument("--bounce-domain", default=None,
                          help="domain of the VERP addresses (default: [bounce] domain of -c)")
    _common(classify)

    test = actions.add_parser("test", help="show which rule classifies a reply and why")
    test.add_argument("text", metavar="REPLY", help='e.g. "550 5.1.1 <a@example.net>: User unknown"')
    test.add_argument("--status", default="", help="a DSN Status to read with the text, e.g. 5.0.0")
    test.add_argument("--delayed", action="store_true", help="read it as a DSN Action: delayed")
    test.add_argument("--json", action="store_true", help="print the explanation as JSON")
    _common(test)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rules", type=Path, metavar="FILE",
                        help="rule file (default: bounces.toml in the policy dir of -c, "
                             "else ./policies/bounces.toml, else the one shipped with the gateway)")
    parser.add_argument("--provider", default="", help="provider name for provider-specific rules")
    parser.add_argument("-c", "--config", action="append", type=Path, metavar="FILE",
                        help="settings file, for the policy dir and bounce domain")


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config) if args.config else None
    rules = args.rules or _default_rules(settings)
    if not rules.is_file():
        raise ConfigError([f"{rules}: bounce rule file not found (give --rules FILE or -c CONFIG)"])
    classifier = Classifier.load(rules)
    if args.bounces_verb == "test":
        return _test(args, classifier)
    domain = args.bounce_domain if args.bounce_domain is not None else (
        settings.bounce.domain if settings else "")
    return _classify(args, classifier, domain)


def _default_rules(settings: Settings | None) -> Path:
    """The configured policy dir's rules; without -c, ./policies, then the source tree's
    own policies/ (so that the command works from any directory in a checkout)."""
    if settings is not None:
        return settings.policy.dir / RULES_FILE
    here = Path("policies") / RULES_FILE
    shipped = SOURCE_TREE / "policies" / RULES_FILE
    return here if here.is_file() or not shipped.is_file() else shipped


def _test(args: argparse.Namespace, classifier: Classifier) -> int:
    if args.status or args.delayed:
        rcpt = ReportedRecipient(address="", action="delayed" if args.delayed else "failed",
                                 status=args.status, diagnostic=args.text)
        verdict = classifier.recipient(rcpt, provider=args.provider)
        explanation = classifier.explain(args.text, provider=args.provider, status=args.status)
        reasons = explanation.reasons + (("read as a delayed DSN: never hard",) if args.delayed else ())
        where = explanation.where
    else:
        explanation = classifier.explain(args.text, provider=args.provider)
        verdict, reasons, where = explanation.verdict, explanation.reasons, explanation.where
    if args.json:
        print(json.dumps({"class": verdict.bounce_class.value, "severity": verdict.severity.value,
                          "rule": verdict.rule, "status": verdict.status, "where": where,
                          "reasons": list(reasons)}, ensure_ascii=False))
        return 0
    status = f" (status {verdict.status})" if verdict.status else ""
    print(f"verdict: {verdict.severity.value} {verdict.bounce_class.value}{status}")
    print(f"rule:    {verdict.rule}" + (f"  [{where}]" if where else ""))
    for reason in reasons:
        print(f"why:     {reason}")
    return 0


def _classify(args: argparse.Namespace, classifier: Classifier, domain: str) -> int:
    failures = 0
    rows: list[list[str]] = []
    for path in _files(args.paths):
        try:
            raw = _read(path)
        except OSError as exc:
            print(f"gateway: {path}: cannot read: {exc.strerror or exc}", file=sys.stderr)
            failures += 1
            continue
        report = parse_report(raw, bounce_domain=domain)
        verdicts = classifier.report(report, provider=args.provider)
        if args.json:
            print(json.dumps(_json_line(path, report, verdicts), ensure_ascii=False), flush=True)
        else:
            rows.extend(_table_rows(path, report, verdicts))
    if rows:
        _print_table([["PATH", "KIND", "ADDRESS", "ACTION", "STATUS", "CLASS", "SEVERITY", "RULE"], *rows])
    return 1 if failures else 0


def _files(paths: Sequence[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file()
                              and not any(part.startswith(".") for part in p.relative_to(path).parts))
        else:
            yield path


def _read(path: Path) -> bytes:
    with path.open("rb") as handle:
        return handle.read(MAX_FILE)


def _json_line(path: Path, report: Report,
               verdicts: tuple[tuple[ReportedRecipient, Verdict], ...]) -> dict[str, Any]:
    line: dict[str, Any] = {
        "path": str(path), "kind": report.kind.value,
        "recipients": [{"address": rcpt.address, "status": rcpt.status or verdict.status,
                        "class": verdict.bounce_class.value, "severity": verdict.severity.value,
                        "action": rcpt.action, "rule": verdict.rule, "diagnostic": rcpt.diagnostic}
                       for rcpt, verdict in verdicts],
        "verp_tokens": list(report.verp_tokens), "summary": report.summary}
    if report.arf is not None:
        line["feedback_type"] = report.arf.feedback_type
    return line


def _table_rows(path: Path, report: Report,
                verdicts: tuple[tuple[ReportedRecipient, Verdict], ...]) -> list[list[str]]:
    if not verdicts:
        return [[str(path), report.kind.value, "-", "-", "-", "-", "-", "-"]]
    return [[str(path), report.kind.value, rcpt.address or "?", rcpt.action,
             rcpt.status or verdict.status or "-", verdict.bounce_class.value, verdict.severity.value,
             verdict.rule] for rcpt, verdict in verdicts]


def _print_table(rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
