"""The admin JSON API, mounted at /api on the admin listener when ``http.api_token_file`` is set.

Lists, contacts (with hygiene warnings and erasure), consents (double opt-in with a
confirmation token, withdrawal, an append-only history with proofs) and suppressions.

Every request needs ``Authorization: Bearer TOKEN``; the check runs before anything
else, the body included. The OpenAPI schema (/api/openapi.json) and its docs page
(/api/docs) are open: they describe the API and hold no data. Errors are JSON
``{"error": ...}``; invalid input adds ``"problems": [{"field", "message"}]``. Database
trouble answers 503; bad input never gets a 500.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Query, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StrictBool,
    StrictStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.config.units import KEY_RULE, is_key
from gateway.ingest import double_opt_in, hygiene
from gateway.ingest.addresses import address_hash, normalize_recipient
from gateway.ingest.rules import DEFAULT_ROLE_LOCAL_PARTS, FREQUENCIES, SUPPRESSION_REASONS
from gateway.rewrite.tokens import Binding, Purpose, TokenCodec
from gateway.storage import consent_store
from gateway.storage.consent_store import ContactRow
from gateway.storage.database import Database
from gateway.storage.errors import StorageError

log = logging.getLogger(__name__)

SCOPES = ("global", "list", "campaign")  # suppression scopes, as gateway.ingest.rules matches them
SOURCES = ("form", "import", "api")  # where a consent change came from (consent_history.source)
CONFIRM_ERROR = "invalid or expired confirmation token"
ERASURE_PROOF = "erasure request"
OPEN_PATHS = frozenset({"/openapi.json", "/docs", "/docs/oauth2-redirect"})
MAX_ATTRIBUTES_JSON = 16 * 1024
SUPPRESSION_PAGE = 1000


@dataclass(frozen=True)
class ApiContext:
    """What the API works with; the runtime builds it from the running gateway."""

    db: Database
    codec: TokenCodec
    public_url: str
    token: str
    role_local_parts: frozenset[str] = DEFAULT_ROLE_LOCAL_PARTS
    # A double opt-in left pending longer than this cannot be confirmed any more.
    confirm_window: timedelta = timedelta(days=30)
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)


# -- validated values -------------------------------------------------------------------------

def _address(value: str) -> str:
    normalized = normalize_recipient(value)
    if normalized is None:
        raise ValueError("not a valid email address (local@domain, within RFC 5321 lengths)")
    return normalized


def _list_key(value: str) -> str:
    if not is_key(value):
        raise ValueError(f"not a valid list key: use {KEY_RULE}")
    return value


_LOCALE = re.compile(r"[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8})*")


def _locale(value: str) -> str:
    if len(value) > 35 or not _LOCALE.fullmatch(value):
        raise ValueError("not a language tag such as en, de or pt-BR")
    return value


def _ip(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError("not an IPv4 or IPv6 address") from None


def _hash(value: str) -> str:
    if not re.fullmatch(r"[0-9a-fA-F]{64}", value):
        raise ValueError("not a SHA-256 hex digest (64 hexadecimal characters of the lower-cased address)")
    return value.lower()


def _one_of(choices: Sequence[str]) -> Callable[[str], str]:
    def check(value: str) -> str:
        if value not in choices:
            raise ValueError(f"must be one of: {', '.join(choices)}")
        return value
    return check


def _attributes(value: dict[str, JsonValue]) -> dict[str, JsonValue]:
    if any(not 1 <= len(key) <= 64 for key in value):
        raise ValueError("attribute names must be 1-64 characters")
    if len(json.dumps(value, ensure_ascii=False).encode("utf-8")) > MAX_ATTRIBUTES_JSON:
        raise ValueError(f"attributes must stay within {MAX_ATTRIBUTES_JSON // 1024} KiB of JSON")
    return value


Address = Annotated[StrictStr, AfterValidator(_address),
                    Field(max_length=320, examples=["alice@example.com"])]
ListKey = Annotated[StrictStr, AfterValidator(_list_key), Field(examples=["news"])]
Locale = Annotated[StrictStr, AfterValidator(_locale)]
IpAddress = Annotated[StrictStr, AfterValidator(_ip)]
AddressHash = Annotated[StrictStr, AfterValidator(_hash)]
Frequency = Annotated[StrictStr, AfterValidator(_one_of(FREQUENCIES)),
                      Field(json_schema_extra={"enum": list(FREQUENCIES)})]
Reason = Annotated[StrictStr, AfterValidator(_one_of(SUPPRESSION_REASONS)),
                   Field(json_schema_extra={"enum": list(SUPPRESSION_REASONS)})]
SuppressionScope = Literal["global", "list", "campaign"]
ConsentStatus = Literal["pending", "confirmed", "withdrawn"]
Source = Literal["form", "import", "api"]
UserAgent = Annotated[StrictStr, Field(max_length=1000)]
Proof = Annotated[StrictStr, Field(min_length=1, max_length=20_000,
                                   description="the exact form text and its version, or other evidence")]
Attributes = Annotated[dict[str, JsonValue], AfterValidator(_attributes)]


class Body(BaseModel):
    """A request body: unknown fields are refused, not ignored."""

    model_config = ConfigDict(extra="forbid")


class Out(BaseModel):
    model_config = ConfigDict(populate_by_name=True)


# -- bodies and answers -----------------------------------------------------------------------

class ErrorOut(Out):
    error: str


class Problem(Out):
    field: str
    message: str


class InvalidOut(Out):
    error: str
    problems: list[Problem]


class ListIn(Body):
    key: ListKey
    kind: Literal["marketing", "transactional"] = "marketing"
    double_opt_in: StrictBool = False
    names: dict[Locale, Annotated[StrictStr, Field(min_length=1, max_length=200)]] = Field(
        min_length=1, description="friendly name per locale, shown on preference pages")
    descriptions: dict[Locale, Annotated[StrictStr, Field(max_length=2000)]] = Field(default_factory=dict)
    cap_days: dict[Frequency, Annotated[float, Field(gt=0, le=3660)]] = Field(
        default_factory=dict, description="days between messages per frequency (defaults apply otherwise)")


class ListOut(Out):
    key: str
    kind: str
    double_opt_in: bool
    names: dict[str, str]
    descriptions: dict[str, str]
    cap_days: dict[str, float]
    created_at: datetime


class ListsOut(Out):
    lists: list[ListOut]


class ContactIn(Body):
    address: Address
    locale: Locale | None = None
    attributes: Attributes = Field(default_factory=dict)


class ContactOut(Out):
    address: str | None = Field(description="null once erased")
    address_hash: str
    locale: str | None
    attributes: dict[str, JsonValue]
    created_at: datetime
    erased_at: datetime | None


class HygieneOut(Out):
    suggestion: str | None = Field(description="the address with the likely intended domain; never applied")
    role: bool
    disposable: bool
    warnings: list[str]


class ContactCreated(Out):
    contact: ContactOut
    hygiene: HygieneOut


class ConsentOut(Out):
    list_key: str = Field(serialization_alias="list")
    status: str
    frequency: str | None
    updated_at: datetime


class HistoryOut(Out):
    id: int
    list_key: str = Field(serialization_alias="list")
    status: str
    frequency: str | None
    source: str
    at: datetime
    ip: str | None
    user_agent: str | None
    proof: str | None


class ContactDetail(Out):
    contact: ContactOut
    consents: list[ConsentOut]
    history: list[HistoryOut] = Field(description="every consent change, oldest first, with its proof")


class ConsentIn(Body):
    address: Address
    list_key: ListKey = Field(alias="list")
    source: Source = "api"
    ip: IpAddress | None = None
    user_agent: UserAgent | None = None
    frequency: Frequency | None = None
    proof: Proof | None = Field(default=None, validate_default=True)

    @field_validator("proof")
    @classmethod
    def _form_needs_proof(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None and info.data.get("source") == "form":
            raise ValueError("required when source is form: the form text and its version")
        return value


class ConsentResult(Out):
    address: str
    list_key: str = Field(serialization_alias="list")
    status: ConsentStatus
    frequency: str | None = None
    confirmation_token: str | None = Field(default=None, description="double opt-in lists only")
    confirmation_url: str | None = Field(default=None, description="PUBLIC_URL/confirm/TOKEN")
    warnings: list[str] = Field(default_factory=list, description="address hygiene")


class ConfirmIn(Body):
    token: Annotated[StrictStr, Field(max_length=100)]
    list_key: ListKey = Field(alias="list", description="the list the token was issued for")
    ip: IpAddress | None = None
    user_agent: UserAgent | None = None


class WithdrawIn(Body):
    address: Address
    list_key: ListKey = Field(alias="list")
    source: Source = "api"
    ip: IpAddress | None = None
    user_agent: UserAgent | None = None


class SuppressionIn(Body):
    address: Address | None = None
    address_hash: AddressHash | None = None
    scope: SuppressionScope = "global"
    key: StrictStr = Field(default="", validate_default=True,
                           description="list key or campaign; empty for a global suppression")
    reason: Reason
    expires_at: AwareDatetime | None = None
    note: Annotated[StrictStr, Field(max_length=2000)] | None = None

    @field_validator("expires_at")
    @classmethod
    def _in_the_future(cls, value: datetime | None) -> datetime | None:
        """Within the range the database can hold (the endpoint checks it is in the future)."""
        if value is None:
            return None
        try:
            return value.astimezone(UTC)
        except (OverflowError, ValueError):
            raise ValueError("out of range") from None

    @field_validator("address_hash")
    @classmethod
    def _not_both(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("address") is not None:
            raise ValueError("give address or address_hash, not both")
        return value

    @field_validator("key")
    @classmethod
    def _key_fits_scope(cls, value: str, info: ValidationInfo) -> str:
        return _scope_key(info.data.get("scope"), value)

    @model_validator(mode="after")
    def _someone(self) -> SuppressionIn:
        if self.address is None and self.address_hash is None:
            raise ValueError("give address or address_hash")
        return self


def _scope_key(scope: object, key: str) -> str:
    if scope is None:  # a filter without a scope: any key that could exist
        if key and not is_key(key):
            raise ValueError(f"not a valid key: {KEY_RULE}")
        return key
    if scope == "global" and key:
        raise ValueError("must be empty for a global suppression")
    if scope in ("list", "campaign") and not is_key(key):
        raise ValueError(f"a {scope} suppression needs its {scope} key: {KEY_RULE}")
    return key


class SuppressionQuery(Body):
    address: Address | None = None
    address_hash: AddressHash | None = None
    after_id: int = Field(default=0, ge=0, le=2**63 - 1,
                          description="page on: the last id of the previous page")
    limit: int = Field(default=100, ge=1, le=SUPPRESSION_PAGE)

    @model_validator(mode="after")
    def _not_both(self) -> SuppressionQuery:
        if self.address is not None and self.address_hash is not None:
            raise ValueError("give address or address_hash, not both")
        return self


class SuppressionRemoval(Body):
    address: Address | None = None
    address_hash: AddressHash | None = None
    scope: SuppressionScope | None = None
    key: StrictStr | None = None
    reason: Reason | None = None

    @field_validator("key")
    @classmethod
    def _key_fits_scope(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else _scope_key(info.data.get("scope"), value)

    @model_validator(mode="after")
    def _someone(self) -> SuppressionRemoval:
        if (self.address is None) == (self.address_hash is None):
            raise ValueError("give address or address_hash (one of them)")
        return self


class SuppressionOut(Out):
    id: int
    address: str | None
    address_hash: str
    scope: str
    key: str
    reason: str
    source: str
    created_at: datetime
    expires_at: datetime | None
    note: str | None


class SuppressionsOut(Out):
    suppressions: list[SuppressionOut]
    next_after_id: int | None = Field(description="pass as after_id for the next page; null at the end")


class RemovedOut(Out):
    removed: int


# -- errors -----------------------------------------------------------------------------------

class ApiError(Exception):
    def __init__(self, status: int, message: str, problems: Sequence[Problem] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.problems = list(problems)


def _invalid(field: str, message: str) -> ApiError:
    return ApiError(422, f"invalid request: {field}: {message}", [Problem(field=field, message=message)])


def _unknown_list(key: str) -> ApiError:
    return ApiError(404, f"unknown list {key}")


_PLACES = frozenset({"body", "query", "path", "header", "cookie"})


def problems_of(errors: Iterable[Mapping[str, Any]]) -> list[Problem]:
    """FastAPI's validation errors as field/message pairs that a person can act on."""
    found: list[Problem] = []
    for error in errors:
        loc = [str(part) for part in error.get("loc", ())]
        if loc and loc[0] in _PLACES and (len(loc) > 1 or loc[0] != "body"):
            loc = loc[1:]
        kind = error.get("type", "")
        message = str(error.get("msg", "invalid"))
        if kind == "json_invalid":
            loc, message = ["body"], f"not valid JSON ({error.get('ctx', {}).get('error', 'parse error')})"
        elif kind == "extra_forbidden":
            message = "unknown field"
        elif kind == "missing":
            message = "a JSON object is required" if loc == ["body"] else "required"
        elif kind in ("model_attributes_type", "dict_type") and loc in ([], ["body"]):
            message = "must be a JSON object"
        message = message.removeprefix("Value error, ")
        if loc and loc[-1] == "[key]":  # a mapping's key, e.g. names.x_1 for a bad locale
            loc, message = loc[:-1], f"bad key: {message}"
        found.append(Problem(field=".".join(loc) or "body", message=message))
    return found


def _error(status: int, message: str, problems: Sequence[Problem] = (),
           headers: Mapping[str, str] | None = None) -> JSONResponse:
    content: dict[str, Any] = {"error": message}
    if problems:
        content["problems"] = [problem.model_dump() for problem in problems]
    return JSONResponse(content, status_code=status, headers=dict(headers or {}))


async def _on_invalid(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    problems = problems_of(exc.errors())
    summary = "; ".join(f"{p.field}: {p.message}" for p in problems[:5])
    return _error(422, f"invalid request: {summary}" if summary else "invalid request", problems)


async def _on_api_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return _error(exc.status, exc.message, exc.problems)


async def _on_http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    return _error(exc.status_code, str(exc.detail), headers=exc.headers)


async def _on_storage_error(_request: Request, exc: Exception) -> Response:
    log.warning("admin API: %s", exc)
    return _error(503, "storage unavailable, try again", headers={"Retry-After": "5"})


# -- authentication ---------------------------------------------------------------------------

class BearerAuth:
    """Refuse any request without the right bearer token before the app sees it (pure ASGI)."""

    def __init__(self, app: ASGIApp, token: str, open_paths: frozenset[str] = OPEN_PATHS) -> None:
        self.app = app
        self._token = token.encode("ascii")
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _route_path(scope) not in self.open_paths:
            problem = self._problem(Headers(scope=scope).get("authorization"))
            if problem is not None:
                challenge = 'Bearer realm="gateway admin API"'
                if problem.startswith("invalid"):
                    challenge += ', error="invalid_token"'
                await _error(401, problem, headers={"WWW-Authenticate": challenge})(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _problem(self, header: str | None) -> str | None:
        if header is None:
            return "missing bearer token (Authorization: Bearer TOKEN)"
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return "missing bearer token (Authorization: Bearer TOKEN)"
        if not hmac.compare_digest(given.strip().encode("utf-8"), self._token):
            return "invalid bearer token"
        return None


def _route_path(scope: Scope) -> str:
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


# -- the application --------------------------------------------------------------------------

UNAUTHORIZED: dict[int | str, dict[str, Any]] = {401: {"model": ErrorOut, "description": "no or wrong token"}}
INVALID: dict[int | str, dict[str, Any]] = {422: {"model": InvalidOut, "description": "invalid input"}}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorOut}}
CONFLICT: dict[int | str, dict[str, Any]] = {409: {"model": ErrorOut}}
BAD_TOKEN: dict[int | str, dict[str, Any]] = {400: {"model": ErrorOut, "description": CONFIRM_ERROR}}


def admin_api(ctx: ApiContext) -> FastAPI:
    """The /api application; mount it on the admin app (``admin_app(..., api=...)``)."""
    app = FastAPI(
        title="smtp-gateway admin API", version="1", openapi_url="/openapi.json", docs_url="/docs",
        redoc_url=None, description=__doc__,
        # Documents the scheme (and gives the docs page its Authorize button); BearerAuth enforces it.
        dependencies=[Security(HTTPBearer(auto_error=False,
                                          description="the content of http.api_token_file"))],
        responses={**UNAUTHORIZED, 503: {"model": ErrorOut, "description": "storage unavailable"}})
    app.add_middleware(BearerAuth, token=ctx.token)
    app.add_exception_handler(RequestValidationError, _on_invalid)
    app.add_exception_handler(ApiError, _on_api_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(StorageError, _on_storage_error)
    db = ctx.db

    # -- lists --

    @app.post("/lists", status_code=201, response_model=ListOut, responses={**CONFLICT, **INVALID},
              summary="create a list")
    async def create_list(body: ListIn) -> ListOut:
        record = consent_store.ListRecord(body.key, body.kind, body.double_opt_in, body.names,
                                          body.descriptions, body.cap_days, ctx.clock())
        if not await db.write(lambda conn: consent_store.add_list(conn, record)):
            raise ApiError(409, f"list {body.key} exists")
        return _list_out(record)

    @app.get("/lists", response_model=ListsOut, summary="all lists")
    async def get_lists() -> ListsOut:
        return ListsOut(lists=[_list_out(record) for record in await db.read(consent_store.all_lists)])

    # -- contacts --

    @app.post("/contacts", status_code=201, response_model=ContactCreated,
              responses={**CONFLICT, **INVALID}, summary="add a contact (hygiene is reported, never applied)")
    async def create_contact(body: ContactIn) -> ContactCreated:
        digest, now = address_hash(body.address), ctx.clock()

        async def add(conn: AsyncConnection) -> tuple[ContactRow, bool]:
            existing = await consent_store.contact_by_hash(conn, digest)
            if existing is not None:
                return existing, False
            new_id = await consent_store.contact_id(conn, body.address, digest, now, body.locale,
                                                    body.attributes)
            created = await consent_store.contact_by_id(conn, new_id)
            assert created is not None
            return created, True

        contact, created = await db.write(add)
        if not created:
            raise ApiError(409, "this address was erased on request and is kept only as a hash"
                           if contact.erased_at is not None else "contact exists")
        return ContactCreated(contact=_contact_out(contact), hygiene=_hygiene(body.address, ctx))

    @app.get("/contacts/{address:path}", response_model=ContactDetail, responses={**NOT_FOUND, **INVALID},
             summary="a contact, its consents per list and its consent history with proofs")
    async def get_contact(address: str) -> ContactDetail:
        digest = address_hash(_path_address(address))

        async def fetch(conn: AsyncConnection) -> ContactDetail | None:
            contact = await consent_store.contact_by_hash(conn, digest)
            if contact is None:
                return None
            current = await consent_store.consents_of(conn, contact.id)
            history = await consent_store.consent_history_of(conn, digest)
            return ContactDetail(
                contact=_contact_out(contact),
                consents=[ConsentOut(list_key=c.list_key, status=c.status, frequency=c.frequency,
                                     updated_at=c.updated_at) for c in current],
                history=[HistoryOut(id=row["id"], list_key=row["list_key"], status=row["status"],
                                    frequency=row["frequency"], source=row["source"], at=row["at"],
                                    ip=row["ip"], user_agent=row["user_agent"], proof=row["proof"])
                         for row in history])

        detail = await db.read(fetch)
        if detail is None:
            raise ApiError(404, "unknown contact")
        return detail

    @app.delete("/contacts/{address:path}", status_code=204, response_class=Response,
                responses={**NOT_FOUND, **INVALID},
                summary="erasure request: address and attributes go, hashed consent proof stays")
    async def erase_contact(address: str) -> Response:
        digest, now = address_hash(_path_address(address)), ctx.clock()

        async def erase(conn: AsyncConnection) -> bool:
            contact = await consent_store.contact_by_hash(conn, digest)
            if contact is not None:
                # Erasure ends every consent; the withdrawal is appended to the history.
                for consent in await consent_store.consents_of(conn, contact.id):
                    if consent.status != "withdrawn":
                        await consent_store.record_consent(conn, consent_store.ConsentChange(
                            contact.id, digest, consent.list_key, "withdrawn", "api", now,
                            proof=ERASURE_PROOF))
                await consent_store.erase_contact(conn, digest, now)
            # Suppressions stay in force, matched by hash; the address written in them goes.
            kept = [record for _, record in
                    await consent_store.find_suppressions(conn, address_hash=digest, limit=10_000)]
            if any(record.address is not None for record in kept):
                await consent_store.remove_suppressions(conn, digest)
                await consent_store.add_suppressions(conn, [replace(r, address=None) for r in kept])
            return contact is not None or bool(kept)

        if not await db.write(erase):
            raise ApiError(404, "unknown contact")
        return Response(status_code=204)

    # -- consents --

    @app.post("/consents", status_code=201, response_model=ConsentResult,
              responses={200: {"model": ConsentResult, "description": "already confirmed, nothing recorded"},
                         **NOT_FOUND, **CONFLICT, **INVALID},
              summary="record consent: pending with a confirmation token on double opt-in lists")
    async def give_consent(body: ConsentIn, response: Response) -> ConsentResult:
        digest, now = address_hash(body.address), ctx.clock()

        async def record(conn: AsyncConnection) -> ApiError | tuple[ContactRow, ConsentStatus, bool]:
            info = await consent_store.list_info(conn, body.list_key)
            if info is None:
                return _unknown_list(body.list_key)
            contact = await consent_store.contact_by_id(
                conn, await consent_store.contact_id(conn, body.address, digest, now))
            if contact is None or contact.address is None:
                return ApiError(409, "this address was erased on request and is kept only as a hash")
            current = await consent_store.consent_for(conn, contact.id, body.list_key)
            if info.double_opt_in and current is not None and current.status == "confirmed":
                return contact, "confirmed", False  # a new form entry must not undo a confirmation
            status: ConsentStatus = "pending" if info.double_opt_in else "confirmed"
            await consent_store.record_consent(conn, consent_store.ConsentChange(
                contact.id, digest, body.list_key, status, body.source, now, frequency=body.frequency,
                ip=body.ip, user_agent=body.user_agent, proof=body.proof))
            return contact, status, True

        outcome = await db.write(record)
        if isinstance(outcome, ApiError):
            raise outcome
        contact, status, recorded = outcome
        assert contact.address is not None
        result = ConsentResult(address=contact.address, list_key=body.list_key, status=status,
                               frequency=body.frequency, warnings=list(_hygiene(body.address, ctx).warnings))
        if status == "pending":
            token = ctx.codec.issue(Purpose.CONFIRM, contact.id, Binding(contact.address, body.list_key))
            result.confirmation_token = token
            result.confirmation_url = f"{ctx.public_url.rstrip('/')}/confirm/{token}"
        if not recorded:
            response.status_code = 200
        return result

    @app.post("/consents/confirm", response_model=ConsentResult, responses={**BAD_TOKEN, **INVALID},
              summary="confirm a double opt-in with its token; the token is kept as the proof")
    async def confirm_consent(body: ConfirmIn) -> ConsentResult:
        evidence = double_opt_in.Evidence("api", ctx.clock(), body.ip, body.user_agent)
        done = await db.write(lambda conn: double_opt_in.confirm(
            conn, ctx.codec, body.token, body.list_key, evidence, ctx.confirm_window))
        if done is None or done.contact.address is None:
            raise ApiError(400, CONFIRM_ERROR)
        return ConsentResult(address=done.contact.address, list_key=done.list_key, status="confirmed",
                             frequency=done.frequency)

    @app.post("/consents/withdraw", response_model=ConsentResult, responses={**NOT_FOUND, **INVALID},
              summary="withdraw consent for a list")
    async def withdraw_consent(body: WithdrawIn) -> ConsentResult:
        digest, now = address_hash(body.address), ctx.clock()

        async def withdraw(conn: AsyncConnection) -> ApiError | ContactRow:
            if await consent_store.list_info(conn, body.list_key) is None:
                return _unknown_list(body.list_key)
            contact = await consent_store.contact_by_hash(conn, digest)
            if contact is None or contact.address is None:
                return ApiError(404, "unknown contact")
            await consent_store.record_consent(conn, consent_store.ConsentChange(
                contact.id, digest, body.list_key, "withdrawn", body.source, now, ip=body.ip,
                user_agent=body.user_agent))
            return contact

        outcome = await db.write(withdraw)
        if isinstance(outcome, ApiError):
            raise outcome
        assert outcome.address is not None
        return ConsentResult(address=outcome.address, list_key=body.list_key, status="withdrawn")

    # -- suppressions --

    @app.post("/suppressions", status_code=201, response_model=SuppressionOut,
              responses={**NOT_FOUND, **INVALID}, summary="suppress an address (or its hash)")
    async def add_suppression(body: SuppressionIn) -> SuppressionOut:
        if body.expires_at is not None and body.expires_at <= ctx.clock():
            # A past expiry would lift a suppression in force; removing one is DELETE's job.
            raise _invalid("expires_at", "must be in the future")
        digest = body.address_hash or address_hash(body.address or "")
        record = consent_store.SuppressionRecord(body.address, digest, body.scope, body.key, body.reason,
                                                 "api", ctx.clock(), body.expires_at, body.note)

        async def add(conn: AsyncConnection) -> ApiError | SuppressionOut:
            if body.scope == "list" and await consent_store.list_info(conn, body.key) is None:
                return _unknown_list(body.key)
            await consent_store.add_suppressions(conn, [record])
            stored_rows = await consent_store.find_suppressions(conn, address_hash=digest, limit=10_000)
            for row_id, stored in stored_rows:
                if (stored.scope, stored.scope_key, stored.reason) == (body.scope, body.key, body.reason):
                    return _suppression_out(row_id, stored)
            raise StorageError("the suppression was not stored")

        outcome = await db.write(add)
        if isinstance(outcome, ApiError):
            raise outcome
        return outcome

    @app.get("/suppressions", response_model=SuppressionsOut, responses=INVALID,
             summary="suppressions of one address (or hash), or all of them page by page")
    async def get_suppressions(query: Annotated[SuppressionQuery, Query()]) -> SuppressionsOut:
        digest = query.address_hash or (address_hash(query.address) if query.address else None)
        rows = await db.read(lambda conn: consent_store.find_suppressions(
            conn, address_hash=digest, after_id=query.after_id, limit=query.limit))
        return SuppressionsOut(suppressions=[_suppression_out(row_id, record) for row_id, record in rows],
                               next_after_id=rows[-1][0] if len(rows) == query.limit else None)

    @app.delete("/suppressions", response_model=RemovedOut, responses=INVALID,
                summary="lift suppressions of an address; scope, key and reason narrow it down")
    async def remove_suppression(query: Annotated[SuppressionRemoval, Query()]) -> RemovedOut:
        digest = query.address_hash or address_hash(query.address or "")
        removed = await db.write(lambda conn: consent_store.remove_suppressions(
            conn, digest, scope=query.scope, scope_key=query.key, reason=query.reason))
        return RemovedOut(removed=removed)

    return app


def _path_address(address: str) -> str:
    try:
        return _address(address)
    except ValueError as exc:
        raise _invalid("address", str(exc)) from None


def _hygiene(address: str, ctx: ApiContext) -> HygieneOut:
    found = hygiene.check(address, role_local_parts=ctx.role_local_parts)
    return HygieneOut(suggestion=found.suggestion, role=found.role, disposable=found.disposable,
                      warnings=list(found.warnings))


def _list_out(record: consent_store.ListRecord) -> ListOut:
    return ListOut(key=record.key, kind=record.kind, double_opt_in=record.double_opt_in,
                   names=dict(record.names), descriptions=dict(record.descriptions),
                   cap_days=dict(record.cap_days), created_at=record.created_at)


def _contact_out(contact: ContactRow) -> ContactOut:
    return ContactOut(address=contact.address, address_hash=contact.address_hash, locale=contact.locale,
                      attributes=contact.attributes, created_at=contact.created_at,
                      erased_at=contact.erased_at)


def _suppression_out(row_id: int, record: consent_store.SuppressionRecord) -> SuppressionOut:
    return SuppressionOut(id=row_id, address=record.address, address_hash=record.address_hash,
                          scope=record.scope, key=record.scope_key, reason=record.reason,
                          source=record.source, created_at=record.created_at, expires_at=record.expires_at,
                          note=record.note)
