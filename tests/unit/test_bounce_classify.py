"""Bounce classification: the shipped rules, the hard/soft policy, rule file validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config.loader import ConfigError
from gateway.delivery import replies
from gateway.dns.errors import InvalidDomain, NoMailHost, NoSuchDomain, NullMx, TemporaryDnsError
from gateway.feedback.classify import Classifier
from gateway.feedback.prefilter import LiteralIndex, lower_pattern, required_literals
from gateway.feedback.reports import ReportedRecipient
from gateway.feedback.verdicts import BounceClass, Severity
from gateway.records import AttemptResult

RULES = Path(__file__).resolve().parents[2] / "policies" / "bounces.toml"
HARD, SOFT = Severity.HARD, Severity.SOFT


@pytest.fixture(scope="module")
def classifier() -> Classifier:
    return Classifier.load(RULES)


@pytest.mark.parametrize(("reply", "bounce_class"), [
    ("550 5.1.1 <a@example.net>: Recipient address rejected: User unknown in virtual mailbox table",
     BounceClass.USER_UNKNOWN),
    ("550-5.1.1 The email account that you tried to reach does not exist. Please try double-checking "
     "the recipient's email address for typos or unnecessary spaces.", BounceClass.USER_UNKNOWN),
    ("550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
     BounceClass.USER_UNKNOWN),
    ("554 delivery error: dd This user doesn't have a yahoo.com account (a@yahoo.com) [0]",
     BounceClass.USER_UNKNOWN),
    ("550 5.7.1 No such user!", BounceClass.USER_UNKNOWN),  # wording beats a misleading 5.7.1
    ("550 Message was not accepted -- invalid mailbox.  Local mailbox a@mail.ru is unavailable: "
     "user not found", BounceClass.USER_UNKNOWN),
    ("550 Mailbox not found. http://service.mail.qq.com/cgi-bin/help?subtype=1&&no=1000728",
     BounceClass.USER_UNKNOWN),
    ("Sorry, no mailbox here by that name. (#5.1.1)", BounceClass.USER_UNKNOWN),
    ("550 用户不存在", BounceClass.USER_UNKNOWN),
    ("宛先不明", BounceClass.USER_UNKNOWN),
    ("550 Пользователь не найден", BounceClass.USER_UNKNOWN),
    ("550 5.1.1 Benutzer unbekannt", BounceClass.USER_UNKNOWN),
    ("550 5.1.1 <a@b.example>", BounceClass.USER_UNKNOWN),  # the status alone says so
    ("550-5.2.1 The email account that you tried to reach is disabled.", BounceClass.MAILBOX_DISABLED),
    ("554 30 Sorry, your message to a@yahoo.com cannot be delivered. This mailbox is disabled (554.30).",
     BounceClass.MAILBOX_DISABLED),
    ("Host or domain name not found. Name service error for name=nowhere.example type=A: Host not found",
     BounceClass.DOMAIN_NOT_FOUND),
    ("554 5.4.4 SMTPSEND.DNS.NonExistentDomain; nonexistent domain", BounceClass.DOMAIN_NOT_FOUND),
    ("Sorry, I couldn't find any host named nowhere.example. (#5.1.2)", BounceClass.DOMAIN_NOT_FOUND),
])
def test_dead_addresses_are_hard(classifier: Classifier, reply: str, bounce_class: BounceClass) -> None:
    verdict = classifier.reply(reply)
    assert (verdict.bounce_class, verdict.severity) == (bounce_class, HARD), verdict


@pytest.mark.parametrize(("reply", "bounce_class"), [
    ("550 5.1.1 <a@example.net>: blocked by spam filter", BounceClass.SPAM_BLOCK),
    ("550 5.1.1 Message rejected: sender IP listed at zen.spamhaus.org", BounceClass.SPAM_BLOCK),
    ("550 mailbox unavailable", BounceClass.OTHER),
    ("550 Requested action not taken: mailbox unavailable", BounceClass.OTHER),
    ("550 5.7.1 Unfortunately, messages from [192.0.2.1] weren't sent. Please contact your Internet "
     "service provider since part of their network is on our block list (S3150).", BounceClass.POLICY),
    ("554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org",
     BounceClass.SPAM_BLOCK),
    ("421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume",
     BounceClass.RATE_LIMIT),
    ("550 Ip frequency limited", BounceClass.RATE_LIMIT),
    ("550-5.7.26 Unauthenticated email from example.com is not accepted due to domain's DMARC policy",
     BounceClass.AUTH_FAILURE),
    ("552-5.2.2 The email account that you tried to reach is over quota.", BounceClass.MAILBOX_FULL),
    ("554 5.2.2 mailbox full; STOREDRV.Deliver.Exception:QuotaExceededException", BounceClass.MAILBOX_FULL),
    ("552 5.3.4 Message size exceeds fixed maximum message size", BounceClass.MESSAGE_TOO_LARGE),
    ("554 5.7.1 <a@example.net>: Relay access denied", BounceClass.RELAY_DENIED),
    ("553 sorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)", BounceClass.RELAY_DENIED),
    ("550 5.7.1 Message rejected: virus found in attachment", BounceClass.CONTENT),
    ("550 5.1.0 <news@sender.example>: Sender address rejected: Domain not found", BounceClass.POLICY),
    ("550 5.7.1 Mail from 192.0.2.1 refused: no PTR record", BounceClass.POLICY),
    ("550 5.2.1 <a@example.net>: this account has been temporarily disabled", BounceClass.MAILBOX_DISABLED),
    ("550 Envelope blocked - User Entry", BounceClass.POLICY),
    ("550 5.4.1 Recipient address rejected: Access denied. AS(201806281)", BounceClass.POLICY),
    ("Host or domain name not found. Name service error for name=example.com type=MX: Host not found, "
     "try again", BounceClass.NETWORK),
])
def test_everything_else_is_soft(classifier: Classifier, reply: str, bounce_class: BounceClass) -> None:
    verdict = classifier.reply(reply)
    assert (verdict.bounce_class, verdict.severity) == (bounce_class, SOFT), verdict


@pytest.mark.parametrize("reply", [
    "450 4.1.1 <a@example.net>: Recipient address rejected: User unknown in local recipient table",
    "451 4.1.1 no such user",
    "421 4.2.1 The user you are trying to contact is receiving mail at a rate that prevents additional "
    "messages from being delivered",
])
def test_temporary_failures_are_never_hard(classifier: Classifier, reply: str) -> None:
    verdict = classifier.reply(reply)
    assert verdict.severity is SOFT
    explanation = classifier.explain(reply)
    if explanation.rule != "default" and "user" in explanation.rule:
        assert "temporary failure" in explanation.reasons[-1]


def test_local_failure_texts(classifier: Classifier) -> None:
    def read(exc: Exception) -> tuple[str, str]:
        verdict = classifier.attempt(replies.permanent(str(exc)))
        assert verdict is not None
        return verdict.bounce_class.value, verdict.severity.value

    assert read(NoSuchDomain("nowhere.example")) == ("domain-not-found", "hard")
    assert read(NullMx("example.org")) == ("no-mx", "hard")
    assert read(NoMailHost("example.org")) == ("no-mx", "hard")
    assert read(InvalidDomain("exa mple")) == ("domain-not-found", "hard")
    temporary = classifier.attempt(replies.transient(str(TemporaryDnsError("example.org"))))
    assert temporary is not None and temporary.severity is SOFT
    for text, bounce_class in [
        ("DNS MX query for example.org timed out after 5s", "network"),
        ("no DNS server answered the MX query for example.org (SERVFAIL/REFUSED)", "network"),
        ("connect to mx.example.org[192.0.2.9]:25 failed: [Errno 111] Connection refused", "network"),
        ("lost connection with mx.example.org[192.0.2.9]:25: Connection reset by peer", "network"),
        ("mx.example.org[192.0.2.9]:25 greeted with 554 No SMTP service here", "policy"),
        ("mx.example.org[192.0.2.9]:25 greeted with 421 Too many connections", "rate-limit"),
        ("connect to mx.example.org[192.0.2.9]:25 failed: [SSL: CERTIFICATE_VERIFY_FAILED]", "tls"),
        ("gave up after 9 attempts: 452 4.2.2 Mailbox full", "expired"),
        ("gave up after 3 attempts: 550 5.1.1 user unknown", "expired"),
        ("5.6.7 remote server does not support SMTPUTF8, needed for this address", "content"),
        ("internal error: KeyError", "network"),
    ]:
        verdict = classifier.reply(text)
        assert (verdict.bounce_class.value, verdict.severity) == (bounce_class, SOFT), text


def test_attempt_hook(classifier: Classifier) -> None:
    assert classifier.attempt(AttemptResult("delivered", "250 2.0.0 ok")) is None
    hard = classifier.attempt(replies.from_reply(550, "5.1.1 <a@example.net>: User unknown"))
    assert hard is not None and hard.is_hard and hard.status == "5.1.1" and hard.rule == "user-unknown"
    # A transient result is never hard, whatever its text says.
    soft = classifier.attempt(AttemptResult("transient", "domain x.example does not exist (NXDOMAIN)"))
    assert soft is not None and soft.severity is SOFT


def test_dsn_recipients(classifier: Classifier) -> None:
    failed = ReportedRecipient("a@example.net", status="5.1.1", diagnostic="")
    assert classifier.recipient(failed).is_hard
    delayed = ReportedRecipient("a@example.net", action="delayed", status="5.1.1",
                                diagnostic="550 5.1.1 user unknown")
    assert classifier.recipient(delayed).severity is SOFT
    generic = ReportedRecipient("a@example.net", status="5.0.0", diagnostic="550 5.1.1 no such user")
    assert classifier.recipient(generic).is_hard
    expired = ReportedRecipient("a@example.net", status="4.4.7", diagnostic="retry timeout exceeded")
    assert classifier.recipient(expired).bounce_class is BounceClass.EXPIRED
    relayed = classifier.recipient(ReportedRecipient("a@example.net", action="relayed", status="2.0.0"))
    assert relayed.severity is SOFT and relayed.rule == "action-relayed"


def test_explain_names_rule_line_and_reason(classifier: Classifier) -> None:
    explanation = classifier.explain("550 5.1.1 <a@b.example>: User unknown")
    assert explanation.rule == "user-unknown"
    assert explanation.where.startswith(f"{RULES}:")
    line = int(explanation.where.rsplit(":", 1)[1])
    assert RULES.read_text().splitlines()[line - 1].strip() == "[[rule]]"
    assert explanation.reasons == ("text matched 'User unknown'",)
    default = classifier.explain("250 ok then")
    assert default.rule == "default" and default.verdict.severity is SOFT


def _rules(text: str) -> Classifier:
    return Classifier.from_text(text, name="test.toml")


def test_first_match_wins_and_conditions_combine() -> None:
    classifier = _rules("""
[[rule]]
name = "ms-block"
class = "spam-block"
severity = "soft"
provider = ["microsoft"]
text = ['S3150']

[[rule]]
name = "unknown"
class = "user-unknown"
severity = "hard"
status = ["5.1."]
code = [550]
unless = ['quota']
""")
    assert classifier.reply("550 5.1.1 bad S3150").rule == "unknown"
    assert classifier.reply("550 5.1.1 bad S3150", provider="microsoft").rule == "ms-block"
    assert classifier.reply("553 5.1.1 bad").rule == "default"  # code must match too
    assert classifier.reply("550 5.1.1 over quota").rule == "default"  # vetoed by unless
    assert classifier.reply("550 5.1.3 bad syntax").is_hard  # status prefix


@pytest.mark.parametrize(("body", "message"), [
    ('[[rule]]\nname = "x"\nclass = "policy"\nseverity = "soft"\ntext = ["(unclosed"]\n',
     "test.toml:5: rule[0].text[0]: bad regular expression"),
    ('[[rule]]\nname = "x"\nclass = "spam-block"\nseverity = "hard"\ntext = ["spam"]\n',
     "severity 'hard' is only for classes that prove the address dead"),
    ('[[rule]]\nname = "x"\nclass = "nonsense"\nseverity = "soft"\ntext = ["a"]\n', "test.toml:3: rule[0].class"),
    ('[[rule]]\nname = "x"\nclass = "policy"\nseverity = "maybe"\ntext = ["a"]\n', "test.toml:4: rule[0].severity"),
    ('[[rule]]\nname = "x"\nclass = "policy"\nseverity = "soft"\ntxt = ["a"]\n', "test.toml:5: rule[0].txt: unknown key"),
    ('[[rule]]\nname = "x"\nclass = "policy"\nseverity = "soft"\n', "needs at least one of status, code, text"),
    ('[[rule]]\nname = "x"\nclass = "policy"\nseverity = "soft"\nstatus = ["5.1"]\n', "bad status '5.1'"),
    ('[[rule]]\nname = "x"\nclass = "policy"\nseverity = "soft"\ntext = ["a|"]\n', "matches empty text"),
    ('[default]\nclass = "policy"\nseverity = "hard"\n', "test.toml:1: default: severity 'hard'"),
    ('[[rule]]\nname = "x"\nclass = "policy"\nseverity = "soft"\ncode = [50]\n', "test.toml:5: rule[0].code[0]: Input should be greater than or equal to 200"),
    ('[[rule]]\nname = "x"\nclass = "policy"\nseverity = "soft"\ncode = [550]\n'
     '[[rule]]\nname = "x"\nclass = "policy"\nseverity = "soft"\ncode = [551]\n', "used twice"),
    ('bogus = 1\n', "test.toml:1: bogus: unknown key"),
    ('[[rule]\n', "test.toml: invalid TOML"),
])
def test_validation_errors_name_file_key_and_line(body: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _rules(body)
    assert any(message in problem for problem in caught.value.problems), caught.value.problems


def test_missing_rule_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        Classifier.load(tmp_path / "bounces.toml")


def test_prefilter_literals_are_required_by_every_match() -> None:
    assert required_literals([lower_pattern(r"User unknown")]) == {"user unknown"}
    assert required_literals([lower_pattern(r"no such (?:user|mailbox)")]) == {"no such "}
    assert required_literals([lower_pattern(r"(?:unknown|invalid) (?:user|recipient)")]) == {"unknown",
                                                                                              "invalid"}
    assert required_literals([r"a.b"]) is None  # nothing long enough: always searched
    assert lower_pattern(r"\S+ USER\b") == r"\S+ user\b"
    index = LiteralIndex(["user unknown", "nxdomain", "不存在"])
    assert index.present("550 user unknown; nxdomain") == {"user unknown", "nxdomain"}
    assert index.present("用户不存在") == {"不存在"}


def test_shipped_rules_are_all_prefiltered_or_cheap(classifier: Classifier) -> None:
    """Every text regex of the shipped table has literals, so a reply never pays for all of them."""
    for rule in classifier.rules:
        for pattern in rule.text:
            assert required_literals([lower_pattern(pattern)]) is not None, (rule.name, pattern)


@pytest.mark.parametrize("reply", [
    "554 5.7.1 This host does not accept mail from 192.0.2.1",
    "550 5.7.1 Your account has been disabled",
    "550 5.7.1 Invalid address in From: header",
    "550 Return address is invalid",
    "550 5.7.1 Client host rejected: address unknown",
    "550 No mail exchanger for sender domain",
    "550 IP address 192.0.2.1 is disabled",
    "550 5.1.0 <news@sender.example>: Sender address rejected: User unknown in local recipient table",
    "554 5.7.1 Service unavailable; Helo command rejected: Host not found",
    "550 Der Absender existiert nicht",
    "550 5.1.1 host mx.spamfilter.example[192.0.2.1] said: message looks like spam",
])
def test_words_about_our_side_never_make_a_hard_bounce(classifier: Classifier, reply: str) -> None:
    """Sender, HELO, IP and header problems read like dead addresses but are about us."""
    assert classifier.reply(reply).severity is SOFT
