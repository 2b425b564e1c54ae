"""Reading DSNs, ARF reports, auto-replies and plain-text bounces (samples written here)."""

from __future__ import annotations

import base64
import random

import pytest

from gateway.feedback.reports import Report, parse_report
from gateway.feedback.verdicts import ReportKind

TOKEN = "abcdefghijklmnopqrstuvwxyz234567abcdefgh"
BOUNCE = "bounces.example.com"


def _mail(text: str) -> bytes:
    return text.lstrip("\n").replace("\n", "\r\n").encode("utf-8")


POSTFIX_DSN = _mail(f"""
Return-Path: <>
From: MAILER-DAEMON@mx.sender.example (Mail Delivery System)
To: b+{TOKEN}@{BOUNCE}
Subject: Undelivered Mail Returned to Sender
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B1"

--B1
Content-Type: text/plain; charset=us-ascii

This is the mail system at host mx.sender.example.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients.

<alice@Example.NET>: host mx.example.net[192.0.2.7] said: 550 5.1.1
    <alice@example.net>: Recipient address rejected: User unknown in virtual
    mailbox table (in reply to RCPT TO command)

--B1
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.sender.example
Arrival-Date: Mon,  3 Jun 2024 10:00:00 +0000

Final-Recipient: rfc822; alice@Example.NET
Original-Recipient: rfc822;alice@example.net
Action: failed
Status: 5.1.1
Remote-MTA: dns; mx.example.net
Diagnostic-Code: smtp; 550 5.1.1 <alice@example.net>: Recipient address
    rejected: User unknown in virtual mailbox table

Final-Recipient: rfc822; bob@example.org
Action: delayed
Status: 4.4.1
Diagnostic-Code: X-Postfix; connect to mx.example.org[192.0.2.9]:25: Connection
    timed out

--B1
Content-Type: text/rfc822-headers

Return-Path: <b+{TOKEN}@{BOUNCE}>
From: News <news@sender.example>
To: alice@example.net
Subject: Hello
Message-ID: <m1@sender.example>
Feedback-ID: spring:news:marketing:sender

--B1--
""")


def test_rfc3464_dsn_gives_each_recipient_with_its_fields() -> None:
    report = parse_report(POSTFIX_DSN, bounce_domain=BOUNCE)
    assert report.kind is ReportKind.DSN
    alice, bob = report.recipients
    assert alice.address == "alice@example.net"  # domain lower-cased
    assert alice.original == "alice@example.net"
    assert (alice.action, alice.status, alice.remote_mta) == ("failed", "5.1.1", "mx.example.net")
    assert alice.diagnostic == ("550 5.1.1 <alice@example.net>: Recipient address rejected: "
                                "User unknown in virtual mailbox table")
    assert (bob.action, bob.status) == ("delayed", "4.4.1")
    assert bob.diagnostic.startswith("connect to mx.example.org")
    assert report.verp_tokens == (TOKEN,)
    assert report.feedback_id == "spring:news:marketing:sender"
    assert report.original_message_id == "<m1@sender.example>"
    assert "Subject: Hello" in report.original_headers
    assert "alice@example.net" in report.summary


def test_dsn_fields_without_blank_lines_between_recipients() -> None:
    raw = _mail("""
From: postmaster@example.net
Subject: Delivery Status Notification (Failure)
Content-Type: multipart/report; report-type=delivery-status; boundary=x

--x
Content-Type: message/delivery-status

Reporting-MTA: dns;mx.example.net
Final-Recipient: rfc822;a@example.net
Action: failed
Status: 5.0.0
Diagnostic-Code: smtp;550 5.1.1 no such user
Final-Recipient: rfc822;b@example.net
Action: failed
Status: 5.2.2
--x--
""")
    report = parse_report(raw)
    assert [(r.address, r.status) for r in report.recipients] == [("a@example.net", "5.0.0"),
                                                                  ("b@example.net", "5.2.2")]
    assert report.recipients[0].diagnostic == "550 5.1.1 no such user"


EXIM = _mail(f"""
From: Mail Delivery System <Mailer-Daemon@mx.example.com>
To: b+{TOKEN}@{BOUNCE}
Subject: Mail delivery failed: returning message to sender

This message was created automatically by mail delivery software.

A message that you sent could not be delivered to one or more of its
recipients. This is a permanent error. The following address(es) failed:

  carol@example.com
    host mx.example.com [192.0.2.1]
    SMTP error from remote mail server after RCPT TO:<carol@example.com>:
    550 5.1.1 No such user here

  dave@example.com
    Unrouteable address

------ This is a copy of the message, including all the headers. ------

Return-path: <b+{TOKEN}@{BOUNCE}>
From: news@sender.example
To: carol@example.com, dave@example.com
Subject: hi

body
""")


def test_exim_plain_text_bounce() -> None:
    report = parse_report(EXIM, bounce_domain=BOUNCE)
    assert report.kind is ReportKind.DSN
    carol, dave = report.recipients
    assert carol.address == "carol@example.com"
    assert carol.status == "5.1.1" and "No such user here" in carol.diagnostic
    assert dave.address == "dave@example.com" and dave.diagnostic == "Unrouteable address"
    assert report.verp_tokens == (TOKEN,)


def test_qmail_bounce() -> None:
    raw = _mail("""
From: MAILER-DAEMON@mail.example.org
Subject: failure notice

Hi. This is the qmail-send program at mail.example.org.
I'm afraid I wasn't able to deliver your message to the following addresses.
This is a permanent error; I've given up. Sorry it didn't work out.

<erin@example.org>:
Sorry, no mailbox here by that name. (#5.1.1)

<frank@example.org>:
192.0.2.3 does not like recipient.
Remote host said: 552 5.2.2 Mailbox full
Giving up on 192.0.2.3.

--- Below this line is a copy of the message.

Return-Path: <news@sender.example>
To: erin@example.org
""")
    report = parse_report(raw)
    assert [(r.address, r.status) for r in report.recipients] == [("erin@example.org", "5.1.1"),
                                                                  ("frank@example.org", "5.2.2")]
    assert "Mailbox full" in report.recipients[1].diagnostic


def test_sendmail_bounce_with_transcript() -> None:
    raw = _mail("""
From: Mail Delivery Subsystem <MAILER-DAEMON@relay.example.net>
Subject: Returned mail: see transcript for details

The original message was received at Mon, 3 Jun 2024 10:00:00 GMT
from localhost [127.0.0.1]

   ----- The following addresses had permanent fatal errors -----
<gina@example.net>
    (reason: 550 5.1.1 <gina@example.net>... User unknown)

   ----- Transcript of session follows -----
... while talking to mx.example.net.:
>>> RCPT To:<gina@example.net>
<<< 550 5.1.1 <gina@example.net>... User unknown
""")
    report = parse_report(raw)
    assert [r.address for r in report.recipients] == ["gina@example.net"]
    assert report.recipients[0].status == "5.1.1"
    assert "User unknown" in report.recipients[0].diagnostic


def test_exchange_ndr_text_uses_remote_server_reply() -> None:
    raw = _mail("""
From: Microsoft Outlook <MicrosoftExchange329e71ec88ae4615bbc36ab6ce41109e@contoso.example>
Subject: Undeliverable: Spring news
Content-Type: text/plain; charset=utf-8

Delivery has failed to these recipients or groups:

henry@contoso.example
The email address you entered couldn't be found. Please check the recipient's email address and try to resend.

Diagnostic information for administrators:

Generating server: EX1.contoso.example

henry@contoso.example
Remote Server returned '550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup'

Original message headers:

From: news@sender.example
To: henry@contoso.example
Message-ID: <m2@sender.example>
""")
    report = parse_report(raw)
    assert report.kind is ReportKind.DSN
    (henry,) = report.recipients
    assert henry.address == "henry@contoso.example"
    assert henry.status == "5.1.10" and "RecipientNotFound" in henry.diagnostic
    assert report.original_message_id == "<m2@sender.example>"


def test_chinese_gb2312_base64_bounce() -> None:
    # Full-width punctuation, as Chinese bounces write it.
    text = ("此邮件是系统自动生成的，请勿回复。\n\n您发送的邮件无法投递到以下地址：\n"  # noqa: RUF001
            "收件人：ivan@example.cn\n退信原因：收件人不存在\n")  # noqa: RUF001
    body = base64.encodebytes(text.encode("gb2312")).decode("ascii")
    raw = _mail(f"""
From: =?gb2312?B?z7XNs83LxcU=?= <postmaster@example.cn>
Subject: =?gb2312?B?z7XNs83LxcU=?=
MIME-Version: 1.0
Content-Type: text/plain; charset="gb2312"
Content-Transfer-Encoding: base64

{body}""")
    report = parse_report(raw)
    assert report.kind is ReportKind.DSN
    (ivan,) = report.recipients
    assert ivan.address == "ivan@example.cn"
    assert "收件人不存在" in ivan.diagnostic


def test_japanese_iso2022jp_bounce() -> None:
    text = "次のアドレスへの配信に失敗しました。\n\n宛先: jun@example.jp\n理由: 宛先不明 (550 Unknown user)\n"
    body = text.encode("iso2022_jp").decode("ascii")
    raw = (b"From: MAILER-DAEMON@example.jp\r\nSubject: =?ISO-2022-JP?B?GyRCR1s/LklURz0bKEI=?=\r\n"
           b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=ISO-2022-JP\r\n\r\n"
           + body.encode("ascii"))
    report = parse_report(raw)
    assert [r.address for r in report.recipients] == ["jun@example.jp"]
    assert "宛先不明" in report.recipients[0].diagnostic


def test_koi8r_quoted_printable_bounce() -> None:
    import quopri

    text = "Сообщение не может быть доставлено.\n\n<petr@example.ru>: Пользователь не найден\n"
    body = quopri.encodestring(text.encode("koi8_r")).decode("ascii")
    raw = _mail(f"""
From: MAILER-DAEMON@example.ru
Subject: Undelivered mail
Content-Type: text/plain; charset=koi8-r
Content-Transfer-Encoding: quoted-printable

{body}""")
    report = parse_report(raw)
    assert [r.address for r in report.recipients] == ["petr@example.ru"]
    assert "Пользователь не найден" in report.recipients[0].diagnostic


def test_bounce_without_named_recipient_falls_back_to_original_to() -> None:
    raw = _mail("""
From: MAILER-DAEMON@mx.example.com
Subject: Delivery failure

Your message could not be delivered.
Reason: 550 Requested action not taken: mailbox unavailable

--- Original message follows.

From: news@sender.example
To: kim@example.com
Subject: x
""")
    report = parse_report(raw)
    assert [r.address for r in report.recipients] == ["kim@example.com"]
    assert "Reason: 550 Requested action not taken" in report.recipients[0].diagnostic


def test_delay_notice_in_plain_text_is_delayed() -> None:
    raw = _mail("""
From: Mail Delivery System <MAILER-DAEMON@mx.example.com>
Subject: Warning: message 1abc delayed 24 hours

This message was created automatically by mail delivery software.
A message that you sent has not yet been delivered to one or more of its
recipients after more than 24 hours on the queue on mx.example.com.

  lee@example.com
    host mx.example.net [192.0.2.4]: 451 4.7.1 Please try again later

No action is required on your part. Delivery attempts will continue for some time.
""")
    report = parse_report(raw)
    assert report.kind is ReportKind.DSN
    assert [(r.address, r.action) for r in report.recipients] == [("lee@example.com", "delayed")]


ARF = _mail(f"""
From: staff@hotmail.example
Subject: complaint about message from 192.0.2.10
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="part1"

--part1
Content-Type: text/plain

This is an email abuse report for an email message received from IP 192.0.2.10.

--part1
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: SomeGenerator/1.0
Version: 1
Original-Mail-From: <b+{TOKEN}@{BOUNCE}>
Original-Rcpt-To: <mia@example.com>
Arrival-Date: Thu, 8 Mar 2024 14:00:00 EDT
Source-IP: 192.0.2.10
Reported-Domain: sender.example

--part1
Content-Type: message/rfc822
Content-Disposition: inline

Return-Path: <b+{TOKEN}@{BOUNCE}>
From: <news@sender.example>
To: <mia@example.com>
Subject: Spring sale
Message-ID: <m3@sender.example>
Feedback-ID: spring:news:marketing:sender

body
--part1--
""")


def test_arf_complaint() -> None:
    report = parse_report(ARF, bounce_domain=BOUNCE)
    assert report.kind is ReportKind.ARF
    assert report.arf is not None
    assert report.arf.feedback_type == "abuse"
    assert report.arf.source_ip == "192.0.2.10"
    assert report.arf.original_mail_from == f"b+{TOKEN}@{BOUNCE}"
    assert report.arf.original_rcpt_to == ("mia@example.com",)
    assert report.verp_tokens == (TOKEN,)
    assert report.feedback_id == "spring:news:marketing:sender"
    assert [r.address for r in report.recipients] == ["mia@example.com"]


def test_arf_auth_failure_is_not_a_complaint() -> None:
    raw = ARF.replace(b"Feedback-Type: abuse", b"Feedback-Type: auth-failure")
    report = parse_report(raw)
    assert report.kind is ReportKind.NOT_BOUNCE
    assert report.arf is not None and report.arf.feedback_type == "auth-failure"


@pytest.mark.parametrize("headers", [
    "Auto-Submitted: auto-replied\nSubject: Re: Spring news",
    "X-Autoreply: yes\nSubject: Re: hello",
    "Precedence: auto_reply\nSubject: hello",
    "Subject: Out of Office: Spring news",
    "Subject: Automatic reply: Spring news",
    "Subject: Abwesenheitsnotiz",
    "Subject: =?utf-8?b?UsOpcG9uc2UgYXV0b21hdGlxdWU=?=",
    "Subject: =?utf-8?b?6Ieq5Yqo5Zue5aSN?=",
    "Subject: =?utf-8?b?0JDQstGC0L7QvtGC0LLQtdGC?=",
])
def test_auto_replies(headers: str) -> None:
    raw = _mail(f"From: Olga <olga@example.com>\nTo: news@sender.example\n{headers}\n\n"
                "I am out of the office until Monday.\n")
    assert parse_report(raw).kind is ReportKind.AUTO_REPLY


@pytest.mark.parametrize("text", [
    "From: Pat <pat@example.com>\nSubject: Re: Spring news\n\nThanks, please call me.\n",
    "From: noreply-dmarc-support@google.example\nSubject: Report domain: sender.example Submitter: "
    "google.com Report-ID: 123\nContent-Type: application/zip\n\nUEsDBA==\n",
    "From: tls@example.net\nSubject: Report\nContent-Type: multipart/report; report-type=tlsrpt; "
    "boundary=z\n\n--z\nContent-Type: application/tlsrpt+gzip\n\nAAAA\n--z--\n",
])
def test_not_bounces(text: str) -> None:
    assert parse_report(_mail(text)).kind is ReportKind.NOT_BOUNCE


def test_human_reply_quoting_a_bounce_is_not_a_bounce() -> None:
    raw = _mail("From: Pat <pat@example.com>\nSubject: Re: Undeliverable: news\n\n"
                "> The email address you entered couldn't be found.\nWhy did I get this?\n")
    assert parse_report(raw).kind is ReportKind.NOT_BOUNCE


def test_garbage_never_raises() -> None:
    rng = random.Random(8)
    samples = [b"", b"\x00\xff" * 100, b"Content-Type: multipart/report; boundary=\r\n\r\n--\r\n",
               POSTFIX_DSN[: len(POSTFIX_DSN) // 2], b"Subject: =?x-unknown?q?=FF?=\r\n\r\n\xfe",
               b"Content-Type: message/delivery-status\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!"]
    samples += [bytes(rng.randrange(256) for _ in range(rng.randrange(2000))) for _ in range(50)]
    samples += [bytes(b for b in POSTFIX_DSN if rng.random() > 0.02) for _ in range(30)]
    for sample in samples:
        assert isinstance(parse_report(sample, bounce_domain=BOUNCE), Report)


def test_deeply_nested_mime_does_not_blow_up() -> None:
    head = "".join(f'Content-Type: multipart/mixed; boundary="b{i}"\r\n\r\n--b{i}\r\n' for i in range(300))
    assert isinstance(parse_report(head.encode()), Report)


def test_verp_tokens_only_for_the_bounce_domain() -> None:
    raw = _mail(f"From: MAILER-DAEMON@x.example\nTo: b+{TOKEN}@{BOUNCE}\nSubject: failure notice\n\n"
                f"<z@example.com>: 550 5.1.1 no such user\nb+{'q' * 40}@other.example\n"
                f"unsubscribe+{'r' * 40}@{BOUNCE}\n")
    assert parse_report(raw, bounce_domain=BOUNCE).verp_tokens == (TOKEN,)


def test_exim_failed_recipients_header_wins_over_prose() -> None:
    raw = _mail("""
From: Mail Delivery System <Mailer-Daemon@mx.example.com>
X-Failed-Recipients: nora@example.com
Subject: Mail delivery failed: returning message to sender

A message that you sent could not be delivered to one or more of its
recipients. This is a permanent error. The following address(es) failed:

  alias@example.com
    (generated from nora@example.com)
    550 5.2.2 Mailbox quota exceeded
""")
    (nora,) = parse_report(raw).recipients
    assert nora.address == "nora@example.com" and nora.status == "5.2.2"


def test_returned_headers_without_marker_stay_out_of_the_diagnostic() -> None:
    raw = _mail("""
From: postmaster@gw.example.net
Subject: Message status - undeliverable

The message that you sent was undeliverable to the following:
	omar@gw.example.net (user not found)

Return-Path: <news@sender.example>
DKIM-Signature: v=1; a=rsa-sha256; d=sender.example; s=s1; b=abc
From: news@sender.example
To: omar@gw.example.net
""")
    report = parse_report(raw)
    (omar,) = report.recipients
    assert omar.address == "omar@gw.example.net"
    assert "DKIM" not in omar.diagnostic and "user not found" in omar.diagnostic
    assert "DKIM-Signature" in report.original_headers


def test_unplaced_recipients_keep_their_own_reasons() -> None:
    raw = _mail("""
From: MAILER-DAEMON@mx.example.org
Subject: Returned mail

while talking to mx.example.org:
<<< 550 5.1.1 <pia@example.org>... User unknown

while talking to mx.example.org:
<<< 452 4.2.2 <quinn@example.org>... Mailbox full
""")
    got = {r.address: r.status for r in parse_report(raw).recipients}
    assert got == {"pia@example.org": "5.1.1", "quinn@example.org": "4.2.2"}


def test_utf8_and_quoted_local_parts() -> None:
    raw = ("From: MAILER-DAEMON@mx.example.es\r\nSubject: Undelivered Mail Returned to Sender\r\n"
           "Content-Type: multipart/report; report-type=global-delivery-status; boundary=g\r\n\r\n"
           "--g\r\nContent-Type: message/global-delivery-status\r\n\r\nReporting-MTA: dns; mx\r\n\r\n"
           "Final-Recipient: utf-8; josé@Example.ES\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n"
           'Final-Recipient: rfc822; "john smith"@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\n'
           "--g--\r\n").encode()
    assert [r.address for r in parse_report(raw).recipients] == ["josé@example.es", '"john smith"@example.org']


def test_redacted_complainer_keeps_a_recipient_without_address() -> None:
    raw = ARF.replace(b"Original-Rcpt-To: <mia@example.com>\r\n", b"").replace(
        b"To: <mia@example.com>", b"To: [email removed]")
    report = parse_report(raw, bounce_domain=BOUNCE)
    assert report.kind is ReportKind.ARF
    assert [r.address for r in report.recipients] == [""]
    assert report.verp_tokens == (TOKEN,)
    redacted = ARF.replace(b"Original-Rcpt-To: <mia@example.com>", b"Original-Rcpt-To: redacted@example.com")
    assert [r.address for r in parse_report(redacted).recipients] == [""]


@pytest.mark.parametrize("body", [
    "Thank you for your message. I am currently out of the office until 12 May.",
    "Ich bin bis zum 3. Juni nicht im Büro. In dringenden Fällen wenden Sie sich an ...",
    "Je suis absente jusqu'au 5 mai.",
    "此邮件为自动回复：我正在休假。",  # noqa: RUF001 - Chinese punctuation
])
def test_auto_reply_recognised_by_its_text_alone(body: str) -> None:
    raw = f"From: Sam <sam@example.com>\r\nSubject: Re: Spring news\r\n\r\n{body}\r\n".encode()
    assert parse_report(raw).kind is ReportKind.AUTO_REPLY
