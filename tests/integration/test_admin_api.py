"""The admin JSON API (/api) over a real SQLite database, driven in-process through ASGI,
and once through a real gateway's admin listener."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.config.policy import Policy
from gateway.config.schema import Settings
from gateway.ingest.addresses import address_hash
from gateway.ingest.rules import Consent
from gateway.rewrite.tokens import Binding, Purpose, TokenCodec
from gateway.runtime import Gateway
from gateway.signing.keys import KeyProblem
from gateway.signing.token_keys import read_api_token
from gateway.storage import consent_store
from gateway.storage.database import Database
from gateway.storage.migrate import upgrade
from gateway.web.admin import admin_app
from gateway.web.api import CONFIRM_ERROR, ApiContext, admin_api
from tests.fakes import FakeClock

TOKEN = "t0k3n-" + "a" * 40
PUBLIC_URL = "https://mail.example.com"
T0 = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
ERROR_TYPE = "application/json"


@dataclass
class Api:
    client: httpx.AsyncClient  # sends the bearer token
    anonymous: httpx.AsyncClient
    db: Database
    codec: TokenCodec
    clock: FakeClock

    async def post(self, path: str, body: Any) -> httpx.Response:
        return await self.client.post(f"/api{path}", json=body)

    async def make_list(self, key: str, *, double_opt_in: bool = False) -> None:
        response = await self.post("/lists", {"key": key, "kind": "marketing", "double_opt_in": double_opt_in,
                                              "names": {"en": key.title()}})
        assert response.status_code == 201, response.text

    async def contact(self, address: str) -> dict[str, Any]:
        response = await self.client.get(f"/api/contacts/{address}")
        assert response.status_code == 200, response.text
        found: dict[str, Any] = response.json()
        return found


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    url = f"sqlite:///{tmp_path}/gateway.db"
    await upgrade(url)
    db = Database(url)
    await db.start()
    codec = TokenCodec({1: b"k" * 32}, 1)
    clock = FakeClock(T0)
    app = admin_app(lambda: True, api=admin_api(ApiContext(db, codec, PUBLIC_URL, TOKEN, clock=clock)))
    transport = httpx.ASGITransport(app=app)
    async with (httpx.AsyncClient(transport=transport, base_url="http://test",
                                  headers={"Authorization": f"Bearer {TOKEN}"}) as client,
                httpx.AsyncClient(transport=transport, base_url="http://test") as anonymous):
        yield Api(client, anonymous, db, codec, clock)
    await db.close()


def assert_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(ERROR_TYPE)
    body: dict[str, Any] = response.json()
    assert isinstance(body["error"], str) and body["error"]
    assert "Traceback" not in response.text
    return body


def problem_fields(response: httpx.Response) -> dict[str, str]:
    body = assert_error(response, 422)
    return {problem["field"]: problem["message"] for problem in body["problems"]}


# -- authentication and schema ------------------------------------------------------------------

async def test_requests_without_the_right_token_are_refused(api: Api) -> None:
    missing = assert_error(await api.anonymous.get("/api/lists"), 401)
    assert "missing bearer token" in missing["error"]
    wrong = await api.anonymous.get("/api/lists", headers={"Authorization": "Bearer " + "b" * 46})
    assert assert_error(wrong, 401) == {"error": "invalid bearer token"}
    assert wrong.headers["www-authenticate"].startswith("Bearer")
    basic = await api.anonymous.get("/api/lists", headers={"Authorization": f"Basic {TOKEN}"})
    assert_error(basic, 401)
    # Refused before the body is even read: no parse error for a stranger.
    garbage = await api.anonymous.post("/api/lists", content=b"{not json",
                                       headers={"content-type": "application/json"})
    assert_error(garbage, 401)
    # The rest of the admin listener is unchanged.
    assert (await api.anonymous.get("/healthz")).status_code == 200
    assert (await api.anonymous.get("/metrics")).status_code == 200
    assert (await api.client.get("/api/lists")).status_code == 200


async def test_without_a_token_file_there_is_no_api() -> None:
    app = admin_app(lambda: True)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        response = await client.get("/api/lists", headers={"Authorization": f"Bearer {TOKEN}"})
        assert response.status_code == 404
        assert (await client.get("/metrics")).status_code == 200


async def test_openapi_schema_lists_every_endpoint(api: Api) -> None:
    response = await api.anonymous.get("/api/openapi.json")
    assert response.status_code == 200
    schema = response.json()
    assert set(schema["paths"]) == {"/lists", "/contacts", "/contacts/{address}", "/consents",
                                    "/consents/confirm", "/consents/withdraw", "/suppressions"}
    assert schema["servers"] == [{"url": "/api"}]
    assert set(schema["paths"]["/suppressions"]) == {"get", "post", "delete"}
    assert "HTTPBearer" in schema["components"]["securitySchemes"]
    models = schema["components"]["schemas"]
    assert models["ListIn"]["additionalProperties"] is False
    assert "list" in models["ConsentIn"]["properties"]
    assert set(models["SuppressionIn"]["properties"]["reason"]["enum"]) >= {"hard-bounce", "complaint"}
    invalid = schema["paths"]["/consents"]["post"]["responses"]["422"]
    assert invalid["content"]["application/json"]["schema"]["$ref"].endswith("/InvalidOut")
    assert (await api.anonymous.get("/api/docs")).status_code == 200


# -- lists and contacts ---------------------------------------------------------------------------

async def test_lists_are_created_once(api: Api) -> None:
    body = {"key": "news", "kind": "marketing", "double_opt_in": True,
            "names": {"en": "News", "de": "Neuigkeiten"}, "descriptions": {"en": "Monthly news"},
            "cap_days": {"weekly": 6}}
    created = await api.post("/lists", body)
    assert created.status_code == 201
    assert created.json() == {**body, "cap_days": {"weekly": 6.0}, "created_at": "2026-03-02T09:30:00Z"}
    duplicate = await api.post("/lists", {**body, "names": {"en": "Other"}})
    assert assert_error(duplicate, 409) == {"error": "list news exists"}
    listed = (await api.client.get("/api/lists")).json()["lists"]
    assert [item["key"] for item in listed] == ["news"]
    assert listed[0]["names"] == {"en": "News", "de": "Neuigkeiten"}


async def test_a_contact_gets_hygiene_warnings_but_is_never_rewritten(api: Api) -> None:
    response = await api.post("/contacts", {"address": "Alice@GMIAL.com", "locale": "de",
                                            "attributes": {"first_name": "Alice", "plan": {"tier": 2}}})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["contact"]["address"] == "Alice@gmial.com"  # domain lower-cased, nothing else changed
    assert body["contact"]["address_hash"] == address_hash("alice@gmial.com")
    assert body["contact"]["attributes"] == {"first_name": "Alice", "plan": {"tier": 2}}
    assert body["hygiene"]["suggestion"] == "Alice@gmail.com"
    assert any("typo of gmail.com" in warning for warning in body["hygiene"]["warnings"])
    assert (await api.contact("alice@gmial.com"))["contact"]["locale"] == "de"
    assert assert_error(await api.post("/contacts", {"address": "alice@gmial.com"}), 409) == {
        "error": "contact exists"}
    role = (await api.post("/contacts", {"address": "postmaster@example.org"})).json()
    assert role["hygiene"]["role"] is True and role["hygiene"]["suggestion"] is None
    idn = (await api.post("/contacts", {"address": "bob@Bücher.example"})).json()
    assert idn["contact"]["address"] == "bob@xn--bcher-kva.example"
    assert_error(await api.client.get("/api/contacts/nobody@example.org"), 404)


# -- consents -------------------------------------------------------------------------------------

async def test_double_opt_in_is_pending_until_the_token_confirms_it(api: Api) -> None:
    await api.make_list("news", double_opt_in=True)
    form = "Newsletter signup v3: 'Yes, send me the monthly news.'"
    response = await api.post("/consents", {
        "address": "carol@example.org", "list": "news", "source": "form", "ip": "192.0.2.7",
        "user_agent": "Mozilla/5.0 (signup)", "proof": form, "frequency": "monthly"})
    assert response.status_code == 201, response.text
    pending = response.json()
    assert pending["status"] == "pending" and pending["frequency"] == "monthly"
    token = pending["confirmation_token"]
    assert pending["confirmation_url"] == f"{PUBLIC_URL}/confirm/{token}"
    assert "carol" not in token
    detail = await api.contact("carol@example.org")
    assert [(c["list"], c["status"]) for c in detail["consents"]] == [("news", "pending")]

    api.clock.now = T0 + timedelta(hours=3)
    confirmed = await api.post("/consents/confirm", {"token": token, "list": "news", "ip": "2001:db8::1",
                                                     "user_agent": "Mozilla/5.0 (click)"})
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["status"] == "confirmed" and confirmed.json()["address"] == "carol@example.org"

    detail = await api.contact("carol@example.org")
    assert [(c["list"], c["status"], c["frequency"]) for c in detail["consents"]] == [
        ("news", "confirmed", "monthly")]
    history = detail["history"]
    assert [(h["status"], h["source"], h["proof"], h["ip"], h["user_agent"]) for h in history] == [
        ("pending", "form", form, "192.0.2.7", "Mozilla/5.0 (signup)"),
        ("confirmed", "api", token, "2001:db8::1", "Mozilla/5.0 (click)")]
    assert history[1]["at"] == "2026-03-02T12:30:00Z" and history[1]["frequency"] == "monthly"

    # A second click, or a new signup for a confirmed address, changes nothing.
    again = await api.post("/consents/confirm", {"token": token, "list": "news"})
    assert again.status_code == 200 and again.json()["status"] == "confirmed"
    signup = await api.post("/consents", {"address": "carol@example.org", "list": "news", "proof": form})
    assert signup.status_code == 200 and signup.json()["status"] == "confirmed"
    assert signup.json()["confirmation_token"] is None
    assert len((await api.contact("carol@example.org"))["history"]) == 2


async def test_a_list_without_double_opt_in_is_confirmed_at_once(api: Api) -> None:
    await api.make_list("offers")
    response = await api.post("/consents", {"address": "dave@example.org", "list": "offers", "source": "import",
                                            "frequency": "weekly"})
    assert response.status_code == 201
    body = response.json()
    assert body["status"] == "confirmed" and body["confirmation_token"] is None
    detail = await api.contact("dave@example.org")
    assert [(c["list"], c["status"], c["frequency"]) for c in detail["consents"]] == [
        ("offers", "confirmed", "weekly")]
    records = await api.db.read(lambda conn: consent_store.records_for(
        conn, [address_hash("dave@example.org")], "offers", ""))
    assert records[address_hash("dave@example.org")].consent == Consent("confirmed", "weekly")


async def test_a_bad_confirmation_token_reveals_nothing(api: Api) -> None:
    await api.make_list("news", double_opt_in=True)
    await api.make_list("other", double_opt_in=True)
    pending = (await api.post("/consents", {"address": "erin@example.org", "list": "news"})).json()
    token = pending["confirmation_token"]
    flipped = ("b" if token[5] != "b" else "c").join([token[:5], token[6:]])
    contact_id = api.codec.parse(token).delivery_id
    forged = api.codec.issue(Purpose.UNSUBSCRIBE, contact_id, Binding("erin@example.org", "news"))
    other_key = TokenCodec({1: b"z" * 32}, 1).issue(Purpose.CONFIRM, contact_id, Binding("erin@example.org", "news"))
    attempts = [{"token": "nonsense", "list": "news"}, {"token": flipped, "list": "news"},
                {"token": token, "list": "other"}, {"token": forged, "list": "news"},
                {"token": other_key, "list": "news"}]
    for attempt in attempts:
        response = await api.post("/consents/confirm", attempt)
        assert assert_error(response, 400) == {"error": CONFIRM_ERROR}, attempt
    # Too late: a pending double opt-in expires.
    api.clock.now = T0 + timedelta(days=31)
    assert assert_error(await api.post("/consents/confirm", {"token": token, "list": "news"}), 400) == {
        "error": CONFIRM_ERROR}
    statuses = [h["status"] for h in (await api.contact("erin@example.org"))["history"]]
    assert statuses == ["pending"]


async def test_withdrawal_is_appended_and_old_tokens_stop_working(api: Api) -> None:
    await api.make_list("news", double_opt_in=True)
    token = (await api.post("/consents", {"address": "fay@example.org", "list": "news"})).json()[
        "confirmation_token"]
    withdrawn = await api.post("/consents/withdraw", {"address": "fay@example.org", "list": "news",
                                                      "source": "form", "ip": "198.51.100.4"})
    assert withdrawn.status_code == 200 and withdrawn.json()["status"] == "withdrawn"
    assert_error(await api.post("/consents/confirm", {"token": token, "list": "news"}), 400)
    detail = await api.contact("fay@example.org")
    assert [c["status"] for c in detail["consents"]] == ["withdrawn"]
    assert [(h["status"], h["ip"]) for h in detail["history"]] == [("pending", None),
                                                                   ("withdrawn", "198.51.100.4")]
    unknown = await api.post("/consents/withdraw", {"address": "nobody@example.org", "list": "news"})
    assert assert_error(unknown, 404) == {"error": "unknown contact"}
    no_list = await api.post("/consents/withdraw", {"address": "fay@example.org", "list": "gone"})
    assert assert_error(no_list, 404) == {"error": "unknown list gone"}
    no_list = await api.post("/consents", {"address": "fay@example.org", "list": "gone"})
    assert assert_error(no_list, 404) == {"error": "unknown list gone"}


async def test_erasure_removes_the_address_and_keeps_the_hashed_proof(api: Api) -> None:
    await api.make_list("offers")
    address = "gus@example.org"
    digest = address_hash(address)
    await api.post("/contacts", {"address": address, "attributes": {"name": "Gus"}, "locale": "en"})
    await api.post("/consents", {"address": address, "list": "offers", "source": "form", "proof": "form v1",
                                 "ip": "192.0.2.9"})
    await api.post("/suppressions", {"address": address, "scope": "campaign", "key": "spring",
                                     "reason": "manual"})
    api.clock.now = T0 + timedelta(days=1)

    response = await api.client.delete(f"/api/contacts/{address}")
    assert response.status_code == 204 and response.content == b""

    detail = await api.contact(address)  # a person who asks is found by the hash of their address
    assert detail["contact"]["address"] is None
    assert detail["contact"]["attributes"] == {} and detail["contact"]["locale"] is None
    assert detail["contact"]["erased_at"] == "2026-03-03T09:30:00Z"
    assert [c["status"] for c in detail["consents"]] == ["withdrawn"]
    history = await api.db.read(lambda conn: consent_store.consent_history_of(conn, digest))
    assert [(h["status"], h["proof"], h["ip"]) for h in history] == [
        ("confirmed", "form v1", "192.0.2.9"), ("withdrawn", "erasure request", None)]
    suppressions = (await api.client.get("/api/suppressions", params={"address": address})).json()
    assert [(s["address"], s["address_hash"], s["key"]) for s in suppressions["suppressions"]] == [
        (None, digest, "spring")]

    assert_error(await api.client.delete("/api/contacts/nobody@example.org"), 404)
    again = await api.post("/contacts", {"address": address})
    assert "erased" in assert_error(again, 409)["error"]
    refused = await api.post("/consents", {"address": address, "list": "offers"})
    assert "erased" in assert_error(refused, 409)["error"]


# -- suppressions ---------------------------------------------------------------------------------

async def test_suppressions_are_added_listed_and_lifted(api: Api) -> None:
    address = "hal@example.org"
    created = await api.post("/suppressions", {"address": address, "reason": "hard-bounce",
                                               "note": "550 5.1.1 user unknown"})
    assert created.status_code == 201, created.text
    assert created.json() | {"id": 0} == {
        "id": 0, "address": address, "address_hash": address_hash(address), "scope": "global", "key": "",
        "reason": "hard-bounce", "source": "api", "created_at": "2026-03-02T09:30:00Z", "expires_at": None,
        "note": "550 5.1.1 user unknown"}

    no_list = await api.post("/suppressions", {"address": address, "scope": "list", "key": "news",
                                               "reason": "unsubscribe"})
    assert assert_error(no_list, 404) == {"error": "unknown list news"}
    await api.make_list("news")
    by_hash = await api.post("/suppressions", {"address_hash": address_hash(address).upper(), "scope": "list",
                                               "key": "news", "reason": "unsubscribe",
                                               "expires_at": "2026-09-01T00:00:00+02:00"})
    assert by_hash.status_code == 201
    assert by_hash.json()["address"] is None
    assert by_hash.json()["expires_at"] == "2026-08-31T22:00:00Z"
    await api.post("/suppressions", {"address": "ivy@example.org", "reason": "complaint"})

    mine = (await api.client.get("/api/suppressions", params={"address": "HAL@example.org"})).json()
    assert [(s["scope"], s["reason"]) for s in mine["suppressions"]] == [("global", "hard-bounce"),
                                                                         ("list", "unsubscribe")]
    assert mine["next_after_id"] is None
    page = (await api.client.get("/api/suppressions", params={"limit": 2})).json()
    assert len(page["suppressions"]) == 2 and page["next_after_id"] is not None
    rest = (await api.client.get("/api/suppressions", params={"after_id": page["next_after_id"]})).json()
    assert [s["address"] for s in rest["suppressions"]] == ["ivy@example.org"]

    lifted = await api.client.delete("/api/suppressions", params={
        "address": address, "scope": "list", "key": "news", "reason": "unsubscribe"})
    assert lifted.status_code == 200 and lifted.json() == {"removed": 1}
    nothing = await api.client.delete("/api/suppressions", params={"address": address, "reason": "complaint"})
    assert nothing.json() == {"removed": 0}
    left = (await api.client.get("/api/suppressions", params={"address": address})).json()["suppressions"]
    assert [s["reason"] for s in left] == ["hard-bounce"]


# -- validation and failures ----------------------------------------------------------------------

async def test_bad_input_gets_a_clear_4xx(api: Api) -> None:
    await api.make_list("news")
    assert problem_fields(await api.post("/lists", {"key": "x", "names": {"en": "X"}, "colour": "red"})) == {
        "colour": "unknown field"}
    fields = problem_fields(await api.post("/contacts", {"address": "not-an-address"}))
    assert fields["address"].startswith("not a valid email address")
    body = assert_error(await api.post("/suppressions", {"address": "a@example.org", "reason": "bored"}), 422)
    assert body["problems"][0]["field"] == "reason"
    assert "must be one of: hard-bounce" in body["problems"][0]["message"]
    assert body["error"].startswith("invalid request: reason: must be one of")
    assert "key" in problem_fields(await api.post("/lists", {"key": "bad key!", "names": {"en": "X"}}))
    assert "names" in problem_fields(await api.post("/lists", {"key": "empty", "names": {}}))
    assert problem_fields(await api.post("/lists", {"key": "loc", "names": {"x_1": "X"}})) == {
        "names.x_1": "bad key: not a language tag such as en, de or pt-BR"}
    assert "double_opt_in" in problem_fields(await api.post("/lists", {"key": "s", "names": {"en": "S"},
                                                                       "double_opt_in": "yes"}))
    assert "frequency" in problem_fields(await api.post("/consents", {"address": "a@example.org",
                                                                      "list": "news", "frequency": "hourly"}))
    assert problem_fields(await api.post("/consents", {"address": "a@example.org", "list": "news",
                                                       "source": "form"})) == {
        "proof": "required when source is form: the form text and its version"}
    assert "ip" in problem_fields(await api.post("/consents", {"address": "a@example.org", "list": "news",
                                                               "ip": "999.1.1.1"}))
    assert "key" in problem_fields(await api.post("/suppressions", {"address": "a@example.org", "key": "news",
                                                                    "reason": "manual"}))
    assert "expires_at" in problem_fields(await api.post("/suppressions", {
        "address": "a@example.org", "reason": "manual", "expires_at": "2026-09-01T00:00:00"}))
    both = problem_fields(await api.post("/suppressions", {"address": "a@example.org", "reason": "manual",
                                                           "address_hash": "0" * 64}))
    assert both == {"address_hash": "give address or address_hash, not both"}
    assert problem_fields(await api.post("/suppressions", {"reason": "manual"})) == {
        "body": "give address or address_hash"}
    assert "address" in problem_fields(await api.client.get("/api/contacts/no-at-sign"))
    assert "address" in problem_fields(await api.client.get("/api/suppressions", params={"address": "x"}))
    assert problem_fields(await api.client.get("/api/suppressions", params={"page": "2"})) == {
        "page": "unknown field"}
    assert problem_fields(await api.client.delete("/api/suppressions", params={"reason": "manual"})) == {
        "body": "give address or address_hash (one of them)"}
    assert "body" in problem_fields(await api.client.post(
        "/api/lists", content=b"{oops", headers={"content-type": "application/json"}))
    assert problem_fields(await api.post("/lists", ["news"])) == {"body": "must be a JSON object"}
    assert problem_fields(await api.client.post("/api/lists")) == {"body": "a JSON object is required"}
    assert_error(await api.client.get("/api/nothing-here"), 404)
    assert_error(await api.client.put("/api/lists"), 405)


async def test_storage_failure_is_a_503(api: Api) -> None:
    await api.db.close()  # the writer is gone: writes fail as in a database outage
    response = await api.post("/lists", {"key": "news", "names": {"en": "News"}})
    assert assert_error(response, 503) == {"error": "storage unavailable, try again"}
    assert response.headers["retry-after"] == "5"


# -- the token file -------------------------------------------------------------------------------

def test_the_token_file_must_be_private_and_long_enough(tmp_path: Path) -> None:
    path = tmp_path / "api.token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    assert read_api_token(path) == TOKEN
    path.chmod(0o640)
    with pytest.raises(KeyProblem, match="group or others"):
        read_api_token(path)
    path.chmod(0o600)
    path.write_text("short\n")
    with pytest.raises(KeyProblem, match="at least 32 characters"):
        read_api_token(path)
    path.write_text("a" * 20 + " " + "b" * 20)
    with pytest.raises(KeyProblem, match="may hold only"):
        read_api_token(path)
    with pytest.raises(KeyProblem, match="not found"):
        read_api_token(tmp_path / "missing")


# -- through a running gateway --------------------------------------------------------------------

async def test_a_running_gateway_serves_the_api_on_its_admin_listener(tmp_path: Path) -> None:
    token_file = tmp_path / "api.token"
    token_file.write_text(TOKEN)
    os.chmod(token_file, 0o600)
    settings = Settings.model_validate({
        "smtp": {"listen": ["127.0.0.1:0"], "hostname": "gw.example.com"},
        "storage": {"url": f"sqlite:///{tmp_path}/gateway.db", "node_name": "api-test"},
        "http": {"admin_listen": "127.0.0.1:0", "public_listen": "off", "public_url": PUBLIC_URL,
                 "api_token_file": str(token_file)},
        "tokens": {"default_secret_file": str(tmp_path / "token.key")},
    })
    await upgrade(settings.storage.url)
    gateway = Gateway(settings, Policy.model_validate({"providers": {"default": {}}}))
    await gateway.start()
    try:
        assert gateway.admin is not None
        for _ in range(200):
            if gateway.admin.started:
                break
            await asyncio.sleep(0.01)
        port = gateway.admin.servers[0].sockets[0].getsockname()[1]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            assert (await client.get("/api/lists")).status_code == 401
            auth = {"Authorization": f"Bearer {TOKEN}"}
            made = await client.post("/api/lists", headers=auth, json={
                "key": "news", "double_opt_in": True, "names": {"en": "News"}})
            assert made.status_code == 201, made.text
            pending = await client.post("/api/consents", headers=auth, json={"address": "j@example.org",
                                                                             "list": "news"})
            token = pending.json()["confirmation_token"]
            assert pending.json()["confirmation_url"] == f"{PUBLIC_URL}/confirm/{token}"
            # The gateway's own token codec issued it (the one unsubscribe links use).
            parts = gateway.copies.codec.parse(token)
            gateway.copies.codec.verify(parts, Purpose.CONFIRM, Binding("j@example.org", "news"))
            confirmed = await client.post("/api/consents/confirm", headers=auth,
                                          json={"token": token, "list": "news"})
            assert confirmed.json()["status"] == "confirmed"
            assert (await client.get("/metrics")).status_code == 200
    finally:
        await gateway.stop()
