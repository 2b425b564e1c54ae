"""`gateway dns check DOMAIN`: does DNS say what the Gmail/Yahoo sender rules need?

Exit status: 0 when every required check passes (warnings allowed), 1 when a required
check fails, 2 for bad input or configuration (the usual one-line error from main).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

from gateway.config.loader import load_settings
from gateway.config.schema import domain_name
from gateway.dns.checks import CheckResult
from gateway.dns.dnscheck import plan_from_settings, run_dns_check

AddConfig = Callable[[argparse.ArgumentParser], None]

MARKS = {"pass": "✓", "fail": "✗", "warn": "!", "info": "·"}


def add_parsers(verbs: Any, add_config: AddConfig) -> None:
    dns_verb = verbs.add_parser("dns", help="check the DNS records mail receivers look at")
    actions = dns_verb.add_subparsers(dest="dns_verb", required=True, metavar="ACTION")
    check = actions.add_parser(
        "check", help="SPF, DKIM, DMARC, reverse DNS, bounce MX, MTA-STS/TLS-RPT of a sending domain",
        description="Check a sending domain against the Gmail/Yahoo bulk-sender rules and print "
                    "the fix for each failure. Exit 0: required checks pass; 1: a required check "
                    "fails; 2: bad input or configuration.")
    check.add_argument("domain", metavar="DOMAIN", help="the From domain to check")
    check.add_argument("--json", action="store_true", help="print one JSON document instead")
    add_config(check)


def run(args: argparse.Namespace) -> int:
    domain = domain_name(args.domain)
    settings = load_settings(args.config)
    plan = plan_from_settings(settings, domain)
    servers = [(endpoint.host, endpoint.port) for endpoint in settings.dns.nameservers]
    results = asyncio.run(run_dns_check(plan, servers, settings.dns.timeout))
    failed = any(result.blocks for result in results)
    if args.json:
        document = {"domain": domain, "ok": not failed, "checks": [asdict(r) for r in results]}
        print(json.dumps(document, indent=2))
    else:
        where = ", ".join(str(e) for e in settings.dns.nameservers) or "system resolver"
        print(f"DNS check for {domain} (nameservers: {where})")
        sys.stdout.write("".join(f"{line}\n" for line in render(results)))
    return 1 if failed else 0


def render(results: Sequence[CheckResult]) -> list[str]:
    lines: list[str] = []
    for result in results:
        level = "" if result.required or result.status in ("pass", "info") else " (recommended)"
        lines.append(f"{MARKS[result.status]} {result.check} {result.subject}: {result.detail}{level}")
        if result.fix and result.status != "pass":
            lines.append(f"    fix: {result.fix}")
    failures = sum(1 for r in results if r.blocks)
    warnings = sum(1 for r in results if r.status == "warn")
    if failures:
        lines.append(f"FAILED: {failures} required check(s) fail the Gmail/Yahoo bulk-sender rules; "
                     f"{warnings} warning(s)")
    else:
        lines.append(f"OK: every required check passes; {warnings} warning(s)")
    return lines
