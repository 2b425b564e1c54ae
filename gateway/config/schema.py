"""The deployment settings schema (config.toml), validated strictly.

Every table forbids unknown keys so that a typo ("max_recipient") is an error at
start-up instead of a silently ignored setting. Values are parsed into plain
Python types here, once, so the rest of the gateway never sees a raw string.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from gateway.config.units import (
    KEY_RULE,
    HostPort,
    is_hostname,
    is_key,
    parse_duration,
    parse_host_port,
    parse_size,
)

Size = Annotated[int, BeforeValidator(parse_size)]
Duration = Annotated[float, BeforeValidator(parse_duration)]
Endpoint = Annotated[
    HostPort, BeforeValidator(lambda v: v if isinstance(v, HostPort) else parse_host_port(v))
]
Port25Endpoint = Annotated[
    HostPort, BeforeValidator(lambda v: v if isinstance(v, HostPort) else parse_host_port(v, 25))
]
Port53Endpoint = Annotated[
    HostPort, BeforeValidator(lambda v: v if isinstance(v, HostPort) else parse_host_port(v, 53))
]


def _network(value: object) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return value
    try:
        return ipaddress.ip_network(str(value), strict=True)
    except ValueError:
        raise ValueError(f"bad network {value!r}: expected CIDR such as \"10.0.0.0/8\"") from None


def _address(value: object) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return value
    try:
        return ipaddress.ip_address(str(value))
    except ValueError:
        raise ValueError(f"bad IP address {value!r}") from None


Network = Annotated[ipaddress.IPv4Network | ipaddress.IPv6Network, BeforeValidator(_network)]
IPAddress = Annotated[ipaddress.IPv4Address | ipaddress.IPv6Address, BeforeValidator(_address)]
Stream = Literal["marketing", "transactional"]
ALL_STREAMS: tuple[Stream, ...] = ("marketing", "transactional")


class Strict(BaseModel):
    """Base for every table: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


def domain_name(value: str) -> str:
    domain = value.strip().rstrip(".").lower()
    if not is_hostname(domain) or "." not in domain:
        raise ValueError(f"bad domain name {value!r}")
    return domain


DomainName = Annotated[str, BeforeValidator(domain_name)]


def _host_name(value: str) -> str:
    if not isinstance(value, str) or not is_hostname(value):
        raise ValueError(f"bad host name {value!r}")
    return value


HostName = Annotated[str, BeforeValidator(_host_name)]


def _reject_duplicates(label: str, names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"duplicate {label} {name!r}")
        seen.add(name)


def _list_key(value: str) -> str:
    if not isinstance(value, str) or not is_key(value):
        raise ValueError(f"bad list key {value!r}: use {KEY_RULE}")
    return value


ListKey = Annotated[str, BeforeValidator(_list_key)]


def _public_url(value: str) -> str:
    """The base of unsubscribe links: it goes inside <...> in List-Unsubscribe."""
    if not isinstance(value, str) or not re.fullmatch(r"https?://[^\s<>,\"]+", value):
        raise ValueError(f"bad public_url {value!r}: expected http(s)://HOST[:PORT][/PATH] "
                         "without spaces, commas or angle brackets")
    return value.rstrip("/")


class Account(Strict):
    username: str = Field(min_length=1, max_length=256)
    password_hash: str = Field(min_length=1)
    allowed_from_domains: list[DomainName] = Field(min_length=1)
    default_list: ListKey | None = None
    default_stream: Stream = "marketing"
    # Streams this account may declare. Transactional mail skips consent and caps, so a
    # newsletter tool that must never skip them gets streams = ["marketing"].
    streams: list[Stream] = Field(default_factory=lambda: list(ALL_STREAMS), min_length=1)

    @model_validator(mode="after")
    def _default_allowed(self) -> Account:
        if self.default_stream not in self.streams:
            raise ValueError(f"default_stream {self.default_stream} is not in streams")
        return self

    @field_validator("password_hash")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if not value.startswith("scrypt$"):
            raise ValueError("expected a hash printed by `gateway passwd` (scrypt$...)")
        return value


class SmtpSettings(Strict):
    listen: list[Endpoint] = Field(default_factory=lambda: [parse_host_port("127.0.0.1:2525")])
    listen_tls: list[Endpoint] = Field(default_factory=list)
    listen_trusted_local: list[Endpoint] = Field(default_factory=list)
    hostname: HostName = "localhost"
    allowed_networks: list[Network] = Field(
        default_factory=lambda: [ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1")]
    )
    tls_cert: Path | None = None
    tls_key: Path | None = None
    max_message_size: Size = Field(default=25_000_000, gt=0)
    # The header section is parsed and rewritten on the event loop, once at intake and once
    # per recipient: it is bounded separately (Postfix: header_size_limit).
    max_header_size: Size = Field(default=1 << 20, gt=0)
    max_recipients: int = Field(default=100, ge=1, le=100_000)
    max_connections: int = Field(default=1000, ge=1)
    max_connections_per_ip: int = Field(default=20, ge=1)
    idle_timeout: Duration = Field(default=300.0, gt=0)
    max_auth_failures: int = Field(default=5, ge=1)
    auth_lockout: Duration = Field(default=60.0, gt=0)
    accounts: list[Account] = Field(default_factory=list)

    @field_validator("listen_trusted_local")
    @classmethod
    def _loopback_only(cls, value: list[HostPort]) -> list[HostPort]:
        for endpoint in value:
            if not ipaddress.ip_address(endpoint.host).is_loopback:
                raise ValueError(f"{endpoint} is not a loopback address; trusted-local listeners "
                                 "allow AUTH without TLS and must not be reachable from outside")
        return value

    @model_validator(mode="after")
    def _tls_pairs(self) -> SmtpSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be set together")
        if self.listen_tls and self.tls_cert is None:
            raise ValueError("listen_tls needs tls_cert and tls_key")
        _reject_duplicates("account username", [a.username for a in self.accounts])
        return self


class StorageSettings(Strict):
    url: str = "sqlite:///var/gateway.db"
    node_name: str | None = None

    @field_validator("url")
    @classmethod
    def _supported(cls, value: str) -> str:
        scheme = value.split(":", 1)[0]
        if scheme not in {"sqlite", "sqlite+aiosqlite", "postgresql", "postgresql+asyncpg"}:
            raise ValueError("expected sqlite:///PATH or postgresql://USER@HOST/DB")
        return value


def _endpoint_or_off(value: object) -> HostPort | None:
    """TOML has no null: "off" (or "") switches a listener off."""
    if value is None or isinstance(value, HostPort):
        return value
    if isinstance(value, str) and value.strip().lower() in {"", "off"}:
        return None
    return parse_host_port(value) if isinstance(value, str) else parse_host_port("")


OptionalEndpoint = Annotated[HostPort | None, BeforeValidator(_endpoint_or_off)]


class HttpSettings(Strict):
    admin_listen: OptionalEndpoint = Field(default_factory=lambda: parse_host_port("127.0.0.1:8025"))
    public_listen: OptionalEndpoint = Field(default_factory=lambda: parse_host_port("127.0.0.1:8080"))
    # RFC 8058 one-click needs https on the Internet; http is for trying things locally.
    public_url: Annotated[str, BeforeValidator(_public_url)] = "http://127.0.0.1:8080"
    # Bearer token for the admin API (/api/...), 32+ characters, mode 0600. Unset: no API.
    api_token_file: Path | None = None


class DnsSettings(Strict):
    nameservers: list[Port53Endpoint] = Field(default_factory=list)
    mx_overrides: dict[DomainName, list[Port25Endpoint]] = Field(default_factory=dict)
    timeout: Duration = Field(default=5.0, gt=0)
    # Port for hosts found through MX or A lookups (overrides carry their own). Tests and
    # sandboxes change it; on the Internet it is 25.
    mx_port: int = Field(default=25, ge=1, le=65535)


class BounceSettings(Strict):
    domain: DomainName = "bounces.localhost.localdomain"
    # Envelope sender b+TOKEN@domain per delivery, so that every bounce names its delivery.
    verp: bool = True


# RFC 6376 3.1: selector = sub-domain *( "." sub-domain ); labels of letters, digits, '-'.
_SELECTOR = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*")


def dkim_selector(value: str) -> str:
    if not isinstance(value, str) or not _SELECTOR.fullmatch(value):
        raise ValueError(f"bad DKIM selector {value!r}: use letters, digits and '-' (dots between labels)")
    return value.lower()


class DkimKey(Strict):
    selector: Annotated[str, BeforeValidator(dkim_selector)]
    algorithm: Literal["rsa", "ed25519"] = "rsa"
    key_file: Path
    # false: published in DNS but not signing yet (rotation), or retired.
    sign: bool = True


class SendingDomain(Strict):
    name: DomainName
    dkim: list[DkimKey] = Field(default_factory=list)
    # Sign mail whose From is any subdomain with this domain's keys (DMARC relaxed alignment).
    subdomains: bool = False

    @model_validator(mode="after")
    def _one_signer_per_algorithm(self) -> SendingDomain:
        _reject_duplicates("selector", [key.selector for key in self.dkim])
        for algorithm in ("rsa", "ed25519"):
            signing = [k.selector for k in self.dkim if k.sign and k.algorithm == algorithm]
            if len(signing) > 1:
                raise ValueError(f"selectors {', '.join(signing)} all sign with {algorithm}; "
                                 "set sign = false on all but one")
        return self


class SigningSettings(Strict):
    # A message whose From domain has no signing key: refused at DATA (550 5.7.1), or
    # passed on unsigned ("pass": for a gateway in front of a smarthost that signs).
    unsigned: Literal["refuse", "pass"] = "refuse"


def _field_name(value: str) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[\x21-\x39\x3b-\x7e]{1,76}", value):
        raise ValueError(f"bad header field name {value!r}")
    return value


FieldName = Annotated[str, BeforeValidator(_field_name)]


class HeaderSettings(Strict):
    stream_header: FieldName = "X-Gateway-Stream"
    list_header: FieldName = "X-Gateway-List"
    campaign_header: FieldName = "X-Gateway-Campaign"
    # Removed before signing, besides the control headers and every X-Gateway-* field.
    strip: list[FieldName] = Field(default_factory=list)
    # The mailer's own List-Unsubscribe: "replace" (ours, whose one-click endpoint works)
    # or "keep" (theirs stays and the gateway adds none).
    list_unsubscribe: Literal["replace", "keep"] = "replace"
    transactional_list_unsubscribe: bool = False


Reason = Literal["hard-bounce", "complaint", "unsubscribe", "manual", "import", "role-account",
                 "spam-trap", "no-consent", "unknown-list", "frequency-cap"]


class ConsentSettings(Strict):
    """Consent and suppression checks on every recipient (gateway/ingest/)."""

    enabled: bool = True
    # Local parts treated as role accounts: never sent marketing mail.
    role_accounts: list[str] = Field(default_factory=lambda: [
        "abuse", "postmaster", "hostmaster", "webmaster", "noc", "security", "mailer-daemon",
        "noreply", "no-reply", "root"])
    # What a refused recipient gets: "reject" (5xx at RCPT, or for the whole message when
    # nobody is left) or "drop" (accepted, recorded as suppressed, never sent).
    actions: dict[Reason, Literal["reject", "drop"]] = Field(default_factory=dict)


class TokenKey(Strict):
    id: int = Field(ge=0, le=255)
    secret_file: Path


class TokenSettings(Strict):
    """Keys for unsubscribe and VERP tokens. With none configured, the gateway creates
    ``default_secret_file`` (32 random bytes) on first start; nodes sharing a database
    must share the keys, so configure them explicitly there."""

    keys: list[TokenKey] = Field(default_factory=list)
    current: int | None = None  # the key new tokens use; default: the highest id
    default_secret_file: Path = Path("var/token.key")

    @model_validator(mode="after")
    def _current_known(self) -> TokenSettings:
        _reject_duplicates("token key id", [str(key.id) for key in self.keys])
        if self.current is not None and self.current not in {key.id for key in self.keys}:
            raise ValueError(f"current = {self.current} names no key in tokens.keys")
        return self


class PoolAddress(Strict):
    address: IPAddress
    helo: HostName


class Pool(Strict):
    name: str = Field(min_length=1)
    ips: list[PoolAddress] = Field(min_length=1)


class PolicySettings(Strict):
    dir: Path = Path("policies")


class Settings(Strict):
    smtp: SmtpSettings = Field(default_factory=SmtpSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    dns: DnsSettings = Field(default_factory=DnsSettings)
    bounce: BounceSettings = Field(default_factory=BounceSettings)
    domains: list[SendingDomain] = Field(default_factory=list)
    signing: SigningSettings = Field(default_factory=SigningSettings)
    headers: HeaderSettings = Field(default_factory=HeaderSettings)
    tokens: TokenSettings = Field(default_factory=TokenSettings)
    consent: ConsentSettings = Field(default_factory=ConsentSettings)
    pools: list[Pool] = Field(default_factory=list)
    policy: PolicySettings = Field(default_factory=PolicySettings)

    @model_validator(mode="after")
    def _unique_names(self) -> Settings:
        _reject_duplicates("pool", [p.name for p in self.pools])
        _reject_duplicates("domain", [d.name for d in self.domains])
        return self
