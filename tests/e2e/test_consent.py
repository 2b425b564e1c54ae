"""Consent and suppression over SMTP: who is refused at RCPT, who at end of DATA, and why."""

from __future__ import annotations

import asyncio
import smtplib
from typing import Any

import pytest

from gateway.smtp.passwords import hash_password
from tests.e2e.conftest import Running, StartGateway


def message(stream: str = "marketing", list_key: str = "news", campaign: str = "spring") -> bytes:
    return (f"From: Shop <news@example.com>\r\nSubject: Spring offers\r\nX-Gateway-Stream: {stream}\r\n"
            f"X-Gateway-List: {list_key}\r\nX-Gateway-Campaign: {campaign}\r\n\r\nHello\r\n").encode()


def send(port: int, rcpts: list[str], data: bytes) -> Any:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        return client.sendmail("news@example.com", rcpts, data)


def session(port: int, rcpts: list[str], data: bytes, **login: str) -> list[tuple[int, bytes]]:
    """Every reply of one transaction: MAIL, each RCPT, then DATA's end (if any RCPT passed)."""
    replies = []
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("mailer.example.com")
        if login:
            client.login(login["user"], login["password"])
        replies.append(client.mail("news@example.com"))
        accepted = 0
        for rcpt in rcpts:
            reply = client.rcpt(rcpt)
            replies.append(reply)
            accepted += reply[0] == 250
        if accepted:
            replies.append(client.data(data))
    return replies


async def delivered_to(running: Running, count: int) -> list[str]:
    await running.sink.wait_for(count, timeout=15)
    await asyncio.sleep(0.3)  # anything more that would arrive
    return sorted(r for m in running.sink.messages for r in m.rcpt_tos)


async def test_suppressed_address_is_refused_at_rcpt_and_trace_says_why(start_gateway: StartGateway) -> None:
    running = await start_gateway()
    await running.consent("news", "ann@example.net", "dead@example.net")
    await running.suppress("dead@example.net", "hard-bounce")
    replies = await asyncio.to_thread(session, running.port, ["dead@example.net", "ann@example.net"], message())
    assert replies[1] == (550, b"5.7.1 <dead@example.net>: recipient suppressed (hard-bounce)")
    assert replies[2][0] == 250 and replies[3][0] == 250
    assert await delivered_to(running, 1) == ["ann@example.net"]
    rows = await running.wait_for_event("dead@Example.NET", "refused")  # domain case as typed
    assert rows[-1].detail == "550 5.7.1 <dead@example.net>: recipient suppressed (hard-bounce)"


async def test_no_consent_refuses_marketing_at_data_but_not_transactional_mail(start_gateway: StartGateway) -> None:
    running = await start_gateway()
    await running.consent("news", "ann@example.net")
    with pytest.raises(smtplib.SMTPDataError) as refused:
        await asyncio.to_thread(send, running.port, ["bob@example.net"], message())
    assert (refused.value.smtp_code, refused.value.smtp_error) == (
        550, b"5.7.1 <bob@example.net>: no consent for list news")
    # A receipt to the same person needs no consent.
    assert await asyncio.to_thread(send, running.port, ["bob@example.net"], message("transactional")) == {}
    # Mixed: accepted for the rest, the refused one recorded as suppressed.
    assert await asyncio.to_thread(send, running.port, ["ann@example.net", "bob@example.net"], message()) == {}
    assert await delivered_to(running, 2) == ["ann@example.net", "bob@example.net"]
    rows = await running.wait_for_event("bob@example.net", "suppressed")
    assert [r.detail for r in rows if r.kind == "suppressed"] == ["suppressed: no-consent (news)"]
    assert [r.kind for r in rows if r.kind == "refused"] == ["refused"]  # the first, all-refused message


async def test_campaign_suppression_only_within_that_campaign(start_gateway: StartGateway) -> None:
    running = await start_gateway()
    await running.consent("news", "cat@example.net")
    await running.suppress("cat@example.net", "manual", scope="campaign", scope_key="spring")
    with pytest.raises(smtplib.SMTPDataError) as refused:
        await asyncio.to_thread(send, running.port, ["cat@example.net"], message(campaign="spring"))
    assert refused.value.smtp_error == b"5.7.1 <cat@example.net>: recipient suppressed (manual)"
    assert await asyncio.to_thread(send, running.port, ["cat@example.net"], message(campaign="autumn")) == {}
    assert await delivered_to(running, 1) == ["cat@example.net"]


async def test_frequency_cap_drops_the_second_message_within_the_window(start_gateway: StartGateway) -> None:
    running = await start_gateway()
    await running.consent("news", "dee@example.net", frequency="weekly")
    assert await asyncio.to_thread(send, running.port, ["dee@example.net"], message(campaign="one")) == {}
    assert await delivered_to(running, 1) == ["dee@example.net"]
    # The default action for a cap is "drop": the mailer hears 250, the person gets nothing.
    assert await asyncio.to_thread(send, running.port, ["dee@example.net"], message(campaign="two")) == {}
    rows = await running.wait_for_event("dee@example.net", "suppressed")
    assert [r.detail for r in rows if r.kind == "suppressed"] == ["suppressed: frequency-cap (news, weekly)"]
    assert await delivered_to(running, 1) == ["dee@example.net"]


async def test_transactional_mail_skips_unsubscribes_but_never_hard_bounces(start_gateway: StartGateway) -> None:
    running = await start_gateway()
    await running.suppress("eve@example.net", "unsubscribe")
    await running.suppress("fox@example.net", "complaint")
    replies = await asyncio.to_thread(session, running.port, ["eve@example.net", "fox@example.net"],
                                      message("transactional"))
    assert replies[2] == (550, b"5.7.1 <fox@example.net>: recipient suppressed (complaint)")
    assert replies[-1][0] == 250
    assert await delivered_to(running, 1) == ["eve@example.net"]
    with pytest.raises(smtplib.SMTPDataError) as refused:  # but no marketing after an unsubscribe
        await asyncio.to_thread(send, running.port, ["eve@example.net"], message())
    assert refused.value.smtp_error == b"5.7.1 <eve@example.net>: recipient suppressed (unsubscribe)"


async def test_role_accounts_and_unknown_lists(start_gateway: StartGateway) -> None:
    running = await start_gateway()
    await running.consent("news", "postmaster@example.net")
    with pytest.raises(smtplib.SMTPDataError) as refused:
        await asyncio.to_thread(send, running.port, ["postmaster@example.net"], message())
    assert refused.value.smtp_error == b"5.7.1 <postmaster@example.net>: recipient suppressed (role-account)"
    with pytest.raises(smtplib.SMTPDataError) as refused:
        await asyncio.to_thread(send, running.port, ["gus@example.net"], message(list_key="nosuch"))
    assert refused.value.smtp_error == b"5.7.1 <gus@example.net>: unknown list (nosuch)"


async def test_pinned_list_is_checked_at_rcpt_and_actions_are_configurable(start_gateway: StartGateway) -> None:
    account = {"username": "crm", "password_hash": hash_password("login-secret", n=2**10),
               "allowed_from_domains": ["example.com"], "default_list": "news"}
    running = await start_gateway({"smtp": {"listen_trusted_local": ["127.0.0.1:0"], "accounts": [account]},
                                   "consent": {"actions": {"no-consent": "drop"}}})
    await running.consent("news", "hal@example.net")
    await running.suppress("ida@example.net", "hard-bounce")
    body = b"From: news@example.com\r\nSubject: pinned\r\n\r\nHi\r\n"
    replies = await asyncio.to_thread(session, running.port_of("trusted-local"),
                                      ["hal@example.net", "ida@example.net", "jon@example.net"], body,
                                      user="crm", password="login-secret")
    assert replies[2] == (550, b"5.7.1 <ida@example.net>: recipient suppressed (hard-bounce)")
    assert replies[3][0] == 250  # no consent, but configured to drop: the mailer is not told
    assert replies[4][0] == 250
    assert await delivered_to(running, 1) == ["hal@example.net"]
    rows = await running.wait_for_event("jon@example.net", "suppressed")
    assert [r.detail for r in rows if r.kind == "suppressed"] == ["suppressed: no-consent (news)"]


async def test_a_pinned_accounts_transactional_mail_is_decided_by_its_own_rules(start_gateway: StartGateway) -> None:
    account = {"username": "crm", "password_hash": hash_password("login-secret", n=2**10),
               "allowed_from_domains": ["example.com"], "default_list": "news"}
    running = await start_gateway({"smtp": {"listen_trusted_local": ["127.0.0.1:0"], "accounts": [account]}})
    await running.consent("news", "kim@example.net", frequency="weekly")
    newsletter = b"From: news@example.com\r\nSubject: news\r\n\r\nHi\r\n"
    reset = b"From: news@example.com\r\nSubject: reset\r\nX-Gateway-Stream: transactional\r\n\r\nlink\r\n"
    port = running.port_of("trusted-local")
    assert (await asyncio.to_thread(session, port, ["kim@example.net"], newsletter, user="crm",
                                    password="login-secret"))[-1][0] == 250
    # At RCPT the pinned list's cap drops kim; the header says transactional, so DATA decides again.
    assert (await asyncio.to_thread(session, port, ["kim@example.net"], reset, user="crm",
                                    password="login-secret"))[-1][0] == 250
    assert await delivered_to(running, 2) == ["kim@example.net", "kim@example.net"]


async def test_the_same_person_twice_is_one_recipient(start_gateway: StartGateway) -> None:
    running = await start_gateway()
    await running.consent("news")  # the list, nobody on it yet
    replies = await asyncio.to_thread(session, running.port, ["bob@example.net", "Bob@Example.net"], message())
    assert replies[1] == replies[2] == (250, b"2.1.5 recipient ok")
    assert replies[3] == (550, b"5.7.1 <bob@example.net>: no consent for list news")  # not a 250 for nobody
    await running.consent("news", "bob@example.net")
    await asyncio.to_thread(session, running.port, ["bob@example.net", "BOB@example.net"], message())
    assert await delivered_to(running, 1) == ["bob@example.net"]


async def test_an_account_may_only_declare_its_streams(start_gateway: StartGateway) -> None:
    account = {"username": "crm", "password_hash": hash_password("login-secret", n=2**10),
               "allowed_from_domains": ["example.com"], "default_list": "news", "streams": ["marketing"]}
    running = await start_gateway({"smtp": {"listen_trusted_local": ["127.0.0.1:0"], "accounts": [account]}})
    await running.consent("news", "liz@example.net")
    disguised = b"From: news@example.com\r\nSubject: offers\r\nX-Gateway-Stream: transactional\r\n\r\nbuy\r\n"
    replies = await asyncio.to_thread(session, running.port_of("trusted-local"), ["liz@example.net"], disguised,
                                      user="crm", password="login-secret")
    assert replies[-1] == (550, b"5.7.1 stream transactional not allowed for this account")
