"""How long bounce classification and report parsing take (pure code, one core).

Classifies a mix of typical replies (user unknown from several providers, spam blocks,
rate limits, full mailboxes, local failures, non-English texts) against
policies/bounces.toml, ``--rounds`` passes after one warm-up pass, and parses a small
RFC 3464 DSN and a plain-text Exim bounce ``--parses`` times each. Reports microseconds
per reply (mean and p99 of the per-pass means) and per parsed report.

Prints one JSON object and a summary line:
    python -m bench.bounces                 # ~2 s
    python -m bench.bounces --rules my.toml
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from gateway.feedback.classify import Classifier
from gateway.feedback.reports import parse_report

REPLIES = (
    "550-5.1.1 The email account that you tried to reach does not exist. Please try double-checking "
    "the recipient's email address for typos or unnecessary spaces. Learn more at "
    "https://support.google.com/mail/?p=NoSuchUser a1si1234567qkb.123 - gsmtp",
    "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
    "554 delivery error: dd This user doesn't have a yahoo.com account (someone@yahoo.com) [0] - "
    "mta1234.mail.gq1.yahoo.com",
    "550 5.7.1 Unfortunately, messages from [192.0.2.1] weren't sent. Please contact your Internet "
    "service provider since part of their network is on our block list (S3150).",
    "421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or user "
    "complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes",
    "552-5.2.2 The email account that you tried to reach is over quota and inactive.",
    "550 5.7.26 Unauthenticated email from sender.example is not accepted due to domain's DMARC policy.",
    "host mx.example.net[192.0.2.7] said: 550 5.1.1 <a@example.net>: Recipient address rejected: "
    "User unknown in virtual mailbox table (in reply to RCPT TO command)",
    "550 Requested action not taken: mailbox unavailable",
    "connect to mx.example.org[192.0.2.9]:25 failed: [Errno 111] Connection refused",
    "domain example.invalid does not exist (NXDOMAIN)",
    "550 Mailbox not found. http://service.mail.qq.com/cgi-bin/help?subtype=1&&id=20022&&no=1000728",
    "554 DT:SPM 163 mx14,QMCowECpU0yp 发送的邮件内容包含了未被许可的信息，或被系统识别为垃圾邮件",  # noqa: RUF001
    "550 Message was not accepted -- invalid mailbox.  Local mailbox someone@mail.ru is unavailable: "
    "user not found",
    "451 4.7.1 Greylisting in action, please come back later",
    "gave up after 12 attempts: 421 4.7.0 Try again later, closing connection.",
)

DSN = (
    b"From: MAILER-DAEMON@mx.sender.example\r\nSubject: Undelivered Mail Returned to Sender\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n"
    b"--b\r\nContent-Type: text/plain\r\n\r\nThis is the mail system at host mx.sender.example.\r\n\r\n"
    b"--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.sender.example\r\n\r\n"
    b"Final-Recipient: rfc822; a@example.net\r\nAction: failed\r\nStatus: 5.1.1\r\n"
    b"Diagnostic-Code: smtp; 550 5.1.1 <a@example.net>: User unknown\r\n\r\n"
    b"--b\r\nContent-Type: text/rfc822-headers\r\n\r\nReturn-Path: <b+" + b"a" * 40
    + b"@bounces.example.com>\r\nTo: a@example.net\r\nSubject: hi\r\n\r\n--b--\r\n")
EXIM = (
    b"From: Mail Delivery System <Mailer-Daemon@mx.example.com>\r\n"
    b"Subject: Mail delivery failed: returning message to sender\r\n\r\n"
    b"This message was created automatically by mail delivery software.\r\n\r\n"
    b"A message that you sent could not be delivered to one or more of its\r\nrecipients. This is a "
    b"permanent error. The following address(es) failed:\r\n\r\n  carol@example.com\r\n"
    b"    host mx.example.com [192.0.2.1]\r\n    SMTP error from remote mail server after RCPT TO:"
    b"<carol@example.com>:\r\n    550 5.1.1 No such user here\r\n\r\n"
    b"------ This is a copy of the message, including all the headers. ------\r\n\r\n"
    b"Return-path: <news@sender.example>\r\nTo: carol@example.com\r\n\r\nbody\r\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rules", type=Path, default=Path("policies/bounces.toml"))
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--parses", type=int, default=2000)
    args = parser.parse_args()
    classifier = Classifier.load(args.rules)
    for text in REPLIES:
        classifier.reply(text)
    per_pass = []
    for _ in range(args.rounds):
        started = time.perf_counter()
        for text in REPLIES:
            classifier.reply(text)
        per_pass.append((time.perf_counter() - started) / len(REPLIES) * 1e6)
    parse_us = {name: _parse_cost(raw, args.parses) for name, raw in (("dsn", DSN), ("exim_text", EXIM))}
    result = {
        "rules": len(classifier.rules), "replies": len(REPLIES), "rounds": args.rounds,
        "classify_us_mean": round(statistics.fmean(per_pass), 2),
        "classify_us_p99": round(statistics.quantiles(per_pass, n=100)[98], 2),
        "classify_us_slowest_reply": round(_slowest(classifier), 2),
        "parse_us": {name: round(value, 1) for name, value in parse_us.items()},
    }
    print(json.dumps(result))
    print(f"classify: {result['classify_us_mean']} us/reply mean ({result['rules']} rules, "
          f"slowest reply {result['classify_us_slowest_reply']} us); parse: DSN {parse_us['dsn']:.0f} us, "
          f"plain-text bounce {parse_us['exim_text']:.0f} us")


def _parse_cost(raw: bytes, count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        parse_report(raw, bounce_domain="bounces.example.com")
    return (time.perf_counter() - started) / count * 1e6


def _slowest(classifier: Classifier) -> float:
    costs = []
    for text in REPLIES:
        started = time.perf_counter()
        for _ in range(500):
            classifier.reply(text)
        costs.append((time.perf_counter() - started) / 500 * 1e6)
    return max(costs)


if __name__ == "__main__":
    main()
