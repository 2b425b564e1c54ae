"""The preference centre in a real browser (headless Chromium at phone width), opened from
the List-Unsubscribe link of a message the gateway really delivered to the sink.

Selenium is synchronous; the gateway runs on this test's event loop, so every browser
step runs in a worker thread (asyncio.to_thread) while the loop keeps serving.
"""

from __future__ import annotations

import asyncio
import re
import smtplib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from gateway.ingest.addresses import address_hash
from gateway.rewrite.headers import split_message, values
from gateway.rewrite.tokens import Binding, Purpose
from gateway.storage import consent_store
from gateway.storage.consent_store import ListRecord
from tests.browser.conftest import PHONE, phone
from tests.e2e.conftest import Running, StartGateway
from tests.e2e.test_consent import message

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

T = TypeVar("T")
ANN = "ann@example.net"
LISTS = [
    ListRecord("news", "marketing", False,
               {"en": "Weekly newsletter", "de": "Wöchentlicher Newsletter", "zh": "每周通讯",
                "es": "Boletín semanal", "ms": "Surat berita mingguan"},
               {"en": "What is new in the shop", "de": "Neues aus dem Laden", "zh": "商店新品与动态"}, {},
               datetime.now(UTC)),
    ListRecord("offers", "marketing", False,
               {"en": "Special offers", "de": "Sonderangebote", "zh": "特别优惠", "es": "Ofertas especiales",
                "ms": "Tawaran istimewa"}, {}, {}, datetime.now(UTC)),
    ListRecord("club", "marketing", True, {"en": "Members' club", "de": "Mitgliederclub"}, {}, {},
               datetime.now(UTC)),
]
PAGES = {"company_name": "Example Shop", "privacy_url": "https://shop.example.com/privacy",
         "colours": {"brand": "#0a7d44"},
         "channels": [{"label": "SMS alerts", "url": "https://shop.example.com/sms"}]}


async def in_browser(step: Callable[[], T]) -> T:
    return await asyncio.to_thread(step)


async def start(start_gateway: StartGateway) -> tuple[Running, str]:
    running = await start_gateway({"http": {"public_listen": "127.0.0.1:0", "public_url": "http://127.0.0.1:1"},
                                   "pages": PAGES})
    for _ in range(100):
        if running.gateway.public is not None and running.gateway.public.port:
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("public listener did not start")
    await running.gateway.db.write(lambda conn: _add_lists(conn))
    await running.consent("news", ANN, frequency="monthly")
    await running.consent("offers", ANN, frequency="monthly")
    return running, f"http://127.0.0.1:{running.gateway.public.port}"


async def _add_lists(conn: Any) -> None:
    for record in LISTS:
        await consent_store.add_list(conn, record)


async def delivered_link(running: Running, base: str) -> str:
    """The https link of List-Unsubscribe in the copy the sink received, pointed at our port."""
    def send() -> Any:
        with smtplib.SMTP("127.0.0.1", running.port, timeout=10) as client:
            return client.sendmail("news@example.com", [ANN], message(campaign="spring"))

    await asyncio.to_thread(send)
    await running.sink.wait_for(1, timeout=15)
    [link] = values(split_message(running.sink.messages[-1].data)[0], b"List-Unsubscribe")
    found = re.match(r"<http://127\.0\.0\.1:1(/u/[a-z2-7]{40})>", link)
    assert found, link
    return base + found.group(1)


async def consents(running: Running) -> dict[str, tuple[str, str | None]]:
    async def read(conn: Any) -> dict[str, tuple[str, str | None]]:
        contact = await consent_store.contact_by_hash(conn, address_hash(ANN))
        assert contact is not None
        return {c.list_key: (c.status, c.frequency) for c in await consent_store.consents_of(conn, contact.id)}
    return await running.gateway.db.read(read)


def fits_the_phone(driver: WebDriver) -> None:
    width = driver.execute_script("return window.innerWidth")
    scroll = driver.execute_script("return document.documentElement.scrollWidth")
    assert width <= 380 and scroll <= width, (width, scroll)


def styled(driver: WebDriver) -> None:
    """The stylesheet loaded under the Content-Security-Policy (the header has the brand colour)."""
    from selenium.webdriver.common.by import By
    colour = driver.find_element(By.CSS_SELECTOR, "header.brand").value_of_css_property("background-color")
    assert colour in ("rgba(10, 125, 68, 1)", "rgb(10, 125, 68)"), colour
    problems = [entry["message"] for entry in driver.get_log("browser") if "Content Security Policy" in entry["message"]]
    assert problems == []


def wait_for_heading(driver: WebDriver, part: str) -> None:
    """Until the next page's <h1> contains ``part`` (the old page's elements go stale meanwhile)."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 10, ignored_exceptions=(NoSuchElementException, StaleElementReferenceException)).until(
        lambda d: part in d.find_element(By.TAG_NAME, "h1").text)


def shot(driver: WebDriver, folder: Path, name: str) -> None:
    height = driver.execute_script("return document.documentElement.scrollHeight")
    phone(driver, max(PHONE[1], int(height)))  # the whole page in one picture
    assert driver.save_screenshot(str(folder / f"{name}.png"))
    phone(driver)


async def test_untick_a_topic_choose_weekly_and_save(start_gateway: StartGateway, browser: WebDriver,
                                                     screenshots: Path) -> None:
    running, base = await start(start_gateway)
    link = await delivered_link(running, base)

    def use_the_page() -> str:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import Select

        browser.get(link)
        assert browser.find_element(By.TAG_NAME, "h1").text == "Your email preferences"
        assert browser.find_element(By.CSS_SELECTOR, "label[for=topic-news]").text == "Weekly newsletter"
        fits_the_phone(browser)
        styled(browser)
        shot(browser, screenshots, "preferences-en")
        offers = browser.find_element(By.ID, "topic-offers")
        assert offers.is_selected()
        browser.find_element(By.CSS_SELECTOR, "label[for=topic-offers]").click()  # the label toggles it
        assert not offers.is_selected()
        Select(browser.find_element(By.ID, "frequency")).select_by_value("weekly")
        browser.find_element(By.CSS_SELECTOR, "button[value=save]").click()
        wait_for_heading(browser, "saved")
        fits_the_phone(browser)
        shot(browser, screenshots, "preferences-saved-en")
        return str(browser.find_element(By.TAG_NAME, "main").text)

    text = await in_browser(use_the_page)
    assert "Your preferences have been saved." in text and "How often: Weekly" in text
    assert await consents(running) == {"news": ("confirmed", "weekly"), "offers": ("withdrawn", "monthly")}
    history = await running.gateway.db.read(lambda c: consent_store.consent_history_of(c, address_hash(ANN)))
    assert {(r["list_key"], r["source"], r["ip"]) for r in history if r["source"] == "preference-page"} == {
        ("offers", "preference-page", "127.0.0.1"), ("news", "preference-page", "127.0.0.1")}
    assert all("Chrome" in r["user_agent"] for r in history if r["source"] == "preference-page")


async def test_the_page_in_german_chinese_spanish_and_malay(start_gateway: StartGateway, browser: WebDriver,
                                                            screenshots: Path) -> None:
    running, base = await start(start_gateway)
    link = await delivered_link(running, base)

    def read_in(code: str, how: str) -> tuple[str, str, str, str]:
        from selenium.webdriver.common.by import By

        if how == "switch":  # the language switch on the English page
            browser.get(link)
            browser.find_element(By.CSS_SELECTOR, f"nav.languages a[hreflang={code.replace('_', '-')}]").click()
        else:
            browser.get(link)
        fits_the_phone(browser)
        styled(browser)
        shot(browser, screenshots, f"preferences-{code}")
        return (str(browser.find_element(By.TAG_NAME, "html").get_attribute("lang")),
                browser.find_element(By.TAG_NAME, "h1").text,
                browser.find_element(By.CSS_SELECTOR, "label[for=topic-news]").text,
                browser.find_element(By.CSS_SELECTOR, "button[value=save]").text)

    assert await in_browser(lambda: read_in("de", "switch")) == (
        "de", "Ihre E-Mail-Einstellungen", "Wöchentlicher Newsletter", "Einstellungen speichern")
    assert await in_browser(lambda: read_in("es", "switch")) == (
        "es", "Sus preferencias de correo electrónico", "Boletín semanal", "Guardar preferencias")
    assert await in_browser(lambda: read_in("ms", "switch")) == (
        "ms", "Pilihan e-mel anda", "Surat berita mingguan", "Simpan pilihan")
    await set_locale(running, "zh-CN")  # the contact's own language, without a switch
    assert await in_browser(lambda: read_in("zh_Hans", "contact locale")) == (
        "zh-Hans", "您的邮件订阅设置", "每周通讯", "保存设置")
    assert await consents(running) == {"news": ("confirmed", "monthly"), "offers": ("confirmed", "monthly")}


async def set_locale(running: Running, locale: str) -> None:
    from sqlalchemy import update

    from gateway.storage.tables import contacts
    await running.gateway.db.write(lambda conn: conn.execute(update(contacts).values(locale=locale)))


async def test_saving_with_the_keyboard_only(start_gateway: StartGateway, browser: WebDriver,
                                             screenshots: Path) -> None:
    running, base = await start(start_gateway)
    link = await delivered_link(running, base)

    def tab_to(element_id: str, limit: int = 30) -> None:
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.keys import Keys
        for _ in range(limit):
            ActionChains(browser).send_keys(Keys.TAB).perform()
            if browser.switch_to.active_element.get_attribute("id") == element_id:
                return
        raise AssertionError(f"Tab never reached #{element_id}")

    def by_keyboard() -> str:
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys

        browser.get(link)
        tab_to("topic-offers")
        focused = browser.switch_to.active_element
        assert focused.value_of_css_property("outline-style") != "none"  # focus is visible
        ActionChains(browser).send_keys(Keys.SPACE).perform()
        assert not browser.find_element(By.ID, "topic-offers").is_selected()
        tab_to("frequency")
        ActionChains(browser).send_keys(Keys.ARROW_DOWN).perform()  # monthly -> every three months
        assert browser.find_element(By.ID, "frequency").get_attribute("value") == "quarterly"
        shot(browser, screenshots, "preferences-keyboard")
        tab_to("save")
        ActionChains(browser).send_keys(Keys.ENTER).perform()
        wait_for_heading(browser, "saved")
        return str(browser.find_element(By.TAG_NAME, "main").text)

    text = await in_browser(by_keyboard)
    assert "Every three months" in text
    assert await consents(running) == {"news": ("confirmed", "quarterly"), "offers": ("withdrawn", "monthly")}


async def test_confirming_a_double_opt_in(start_gateway: StartGateway, browser: WebDriver,
                                          screenshots: Path) -> None:
    running, base = await start(start_gateway)
    await running.consent("club", "new@example.net", status="pending", frequency="weekly")
    contact = await running.gateway.db.read(
        lambda c: consent_store.contact_by_hash(c, address_hash("new@example.net")))
    assert contact is not None
    token = running.gateway.copies.codec.issue(Purpose.CONFIRM, contact.id, Binding("new@example.net", "club"))

    def confirm() -> str:
        from selenium.webdriver.common.by import By

        browser.get(f"{base}/confirm/{token}?lang=de")
        assert "Mitgliederclub" in browser.find_element(By.TAG_NAME, "main").text
        fits_the_phone(browser)
        shot(browser, screenshots, "confirm-de")
        browser.find_element(By.CSS_SELECTOR, "main button[type=submit]").click()
        wait_for_heading(browser, "bestätigt")
        shot(browser, screenshots, "confirmed-de")
        return str(browser.find_element(By.TAG_NAME, "main").text)

    assert "Ihr Abonnement von Mitgliederclub ist bestätigt" in await in_browser(confirm)
    history = await running.gateway.db.read(
        lambda c: consent_store.consent_history_of(c, address_hash("new@example.net")))
    assert (history[-1]["status"], history[-1]["source"], history[-1]["proof"]) == ("confirmed", "confirm-page", token)
