"""The one-click loop over real sockets: a campaign copy's List-Unsubscribe URL, POSTed as
Gmail does, unsubscribes the person at once; the next message to that list is refused. The
same link's preference page, in each shipped language, keeps some topics and changes the
frequency."""

from __future__ import annotations

import asyncio
import re
import smtplib
from typing import Any

import httpx
import pytest

from gateway.rewrite.headers import split_message, values
from gateway.sandbox.sink import ReplyScript
from gateway.storage import queue_store
from tests.e2e.conftest import Running, StartGateway
from tests.e2e.test_consent import message

ONE_CLICK = {"content": b"List-Unsubscribe=One-Click",
             "headers": {"Content-Type": "application/x-www-form-urlencoded", "User-Agent": "GoogleOneClick/1"}}


def send(port: int, rcpts: list[str], data: bytes) -> Any:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        return client.sendmail("news@example.com", rcpts, data)


async def start(start_gateway: StartGateway) -> tuple[Running, str]:
    running = await start_gateway({"http": {"public_listen": "127.0.0.1:0", "public_url": "http://127.0.0.1:1"}})
    for _ in range(100):
        if running.gateway.public is not None and running.gateway.public.port:
            return running, f"http://127.0.0.1:{running.gateway.public.port}"
        await asyncio.sleep(0.02)
    raise AssertionError("public listener did not start")


def unsubscribe_path(data: bytes) -> str:
    [link] = values(split_message(data)[0], b"List-Unsubscribe")
    found = re.match(r"<http://127\.0\.0\.1:1(/u/[a-z2-7]{40})>", link)
    assert found, link
    return found.group(1)


async def test_one_click_unsubscribes_at_once_and_idempotently(start_gateway: StartGateway) -> None:
    running, base = await start(start_gateway)
    await running.consent("news", "ann@example.net", "bob@example.net")
    await asyncio.to_thread(send, running.port, ["ann@example.net", "bob@example.net"], message(campaign="one"))
    await running.sink.wait_for(2, timeout=15)
    ann = next(m for m in running.sink.messages if m.rcpt_tos == ("ann@example.net",))
    path = unsubscribe_path(ann.data)
    async with httpx.AsyncClient(base_url=base) as web:
        page = await web.get(path)  # what a mail scanner does: nothing changes
        assert page.status_code == 200 and "Spring" not in page.text and "Unsubscribe" in page.text
        assert "ann@example.net" not in page.text
        assert page.headers["referrer-policy"] == "same-origin"  # never the token to another site
        assert "default-src 'none'" in page.headers["content-security-policy"]
        first = await web.post(path, **ONE_CLICK)
        again = await web.post(path, **ONE_CLICK)
        forged = await web.post(path[:-1] + ("a" if path[-1] != "a" else "b"), **ONE_CLICK)
    assert first.status_code == again.status_code == 200 and "News" in first.text
    assert first.headers.get("location") is None  # no redirect (RFC 8058)
    assert forged.status_code == 404
    refused = await asyncio.to_thread(send, running.port, ["ann@example.net", "bob@example.net"],
                                      message(campaign="two"))
    assert refused == {}  # bob still gets it; ann is recorded as suppressed
    rows = await running.wait_for_event("ann@example.net", "suppressed")
    assert [r.detail for r in rows if r.kind == "suppressed"] == ["suppressed: unsubscribe (list news)"]
    history = await running.gateway.db.read(lambda c: queue_store.trace(c, "bob@example.net"))
    assert [r.kind for r in history].count("delivered") >= 1


async def test_queued_mail_to_the_list_is_dropped_by_an_unsubscribe(start_gateway: StartGateway) -> None:
    running, base = await start(start_gateway)
    await running.consent("news", "cid@example.net")
    await asyncio.to_thread(send, running.port, ["cid@example.net"], message(campaign="one"))
    await running.sink.wait_for(1, timeout=15)
    path = unsubscribe_path(running.sink.messages[0].data)
    running.sink.script = ReplyScript().on_rcpt("cid@example.net", "451 4.3.0 try again later")
    await asyncio.to_thread(send, running.port, ["cid@example.net"], message(campaign="two"))
    await running.wait_for_event("cid@example.net", "deferred")  # waiting in the queue
    async with httpx.AsyncClient(base_url=base) as web:
        assert (await web.post(path, **ONE_CLICK)).status_code == 200
    rows = await running.wait_for_event("cid@example.net", "suppressed")
    assert [r.detail for r in rows if r.kind == "suppressed"][-1].startswith("suppressed: unsubscribe")
    assert [r.kind for r in rows].count("unsubscribed") == 1  # written after the drops, once
    assert await running.gateway.db.read(queue_store.count_pending) == {}


async def test_the_mailto_address_unsubscribes_too_and_a_forged_one_changes_nothing(
        start_gateway: StartGateway) -> None:
    running, _ = await start(start_gateway)
    await running.consent("news", "dot@example.net", "eli@example.net")
    await asyncio.to_thread(send, running.port, ["dot@example.net"], message(campaign="one"))
    await running.sink.wait_for(1, timeout=15)
    [link] = values(split_message(running.sink.messages[0].data)[0], b"List-Unsubscribe")
    mailto = re.search(r"<mailto:(unsubscribe\+[a-z2-7]{40}@bounces\.example\.com)>", link)
    assert mailto is not None
    forged = "unsubscribe+" + "a" * 40 + "@bounces.example.com"

    def mail_from_outside(rcpt: str) -> Any:  # a mail client, no AUTH, from another network
        with smtplib.SMTP("127.0.0.1", running.port, source_address=("127.0.0.99", 0), timeout=10) as client:
            return client.sendmail("dot@example.net", [rcpt], b"Subject: unsubscribe\r\n\r\n")

    await asyncio.to_thread(mail_from_outside, mailto.group(1).upper())  # MTAs may change the case
    await asyncio.to_thread(mail_from_outside, forged)
    rows = []
    for _ in range(100):
        running.gateway.inbound.wake()
        rows = await running.gateway.db.read(lambda c: queue_store.new_inbound(c))
        if not rows:
            break
        await asyncio.sleep(0.05)
    assert rows == []
    with pytest.raises(smtplib.SMTPDataError) as refused:
        await asyncio.to_thread(send, running.port, ["dot@example.net"], message(campaign="two"))
    assert refused.value.smtp_error == b"5.7.1 <dot@example.net>: recipient suppressed (unsubscribe)"
    assert await asyncio.to_thread(send, running.port, ["eli@example.net"], message(campaign="two")) == {}


async def test_a_person_who_signs_up_again_gets_mail_again(start_gateway: StartGateway) -> None:
    running, base = await start(start_gateway)
    await running.consent("news", "fay@example.net")
    await asyncio.to_thread(send, running.port, ["fay@example.net"], message(campaign="one"))
    await running.sink.wait_for(1, timeout=15)
    async with httpx.AsyncClient(base_url=base) as web:
        assert (await web.post(unsubscribe_path(running.sink.messages[0].data), **ONE_CLICK)).status_code == 200
    with pytest.raises(smtplib.SMTPDataError):
        await asyncio.to_thread(send, running.port, ["fay@example.net"], message(campaign="two"))
    await running.consent("news", "fay@example.net")  # a new, confirmed sign-up
    assert await asyncio.to_thread(send, running.port, ["fay@example.net"], message(campaign="three")) == {}
    await running.sink.wait_for(2, timeout=15)


TITLES = {"en": "Your email preferences", "de": "Ihre E-Mail-Einstellungen", "es": "Sus preferencias de correo electrónico",
          "ms": "Pilihan e-mel anda", "zh_Hans": "您的邮件订阅设置"}
SAVED = {"en": "Your preferences have been saved.", "de": "Ihre Einstellungen wurden gespeichert.",
         "es": "Sus preferencias se han guardado.", "ms": "Pilihan anda telah disimpan.", "zh_Hans": "您的设置已保存。"}


async def test_the_preference_page_keeps_some_topics_and_changes_frequency_in_five_languages(
        start_gateway: StartGateway) -> None:
    running, base = await start(start_gateway)
    await running.consent("news", "gus@example.net", frequency="monthly")
    await running.consent("offers", "gus@example.net", frequency="monthly")
    await asyncio.to_thread(send, running.port, ["gus@example.net"], message(campaign="one"))
    await running.sink.wait_for(1, timeout=15)
    path = unsubscribe_path(running.sink.messages[0].data).replace("/u/", "/preferences/")
    frequencies = {"en": "daily", "de": "weekly", "es": "biweekly", "ms": "quarterly", "zh_Hans": "monthly"}
    async with httpx.AsyncClient(base_url=base) as web:
        for code, frequency in frequencies.items():
            page = await web.get(path, params={"lang": code})
            assert f"<h1>{TITLES[code]}</h1>" in page.text
            csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
            assert csrf
            saved = await web.post(path, data={"csrf": csrf.group(1), "lang": code, "shown": ["news", "offers"],
                                               "topic": "news", "frequency": frequency})
            assert saved.status_code == 200 and SAVED[code] in saved.text
            consents = await running.gateway.db.read(lambda c: _consents(c, "gus@example.net"))
            assert consents == {"news": ("confirmed", frequency), "offers": ("withdrawn", "monthly")}
    with pytest.raises(smtplib.SMTPDataError) as refused:
        await asyncio.to_thread(send, running.port, ["gus@example.net"], message(list_key="offers", campaign="two"))
    assert refused.value.smtp_error == b"5.7.1 <gus@example.net>: recipient suppressed (unsubscribe)"


async def _consents(conn: Any, address: str) -> dict[str, tuple[str, str | None]]:
    from gateway.ingest.addresses import address_hash
    from gateway.storage import consent_store

    contact = await consent_store.contact_by_hash(conn, address_hash(address))
    assert contact is not None
    return {c.list_key: (c.status, c.frequency) for c in await consent_store.consents_of(conn, contact.id)}
