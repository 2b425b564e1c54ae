"""The deployment settings schema (config.toml), validated strictly.

Every table forbids unknown keys so that a typo ("max_recipient") is an error at
start-up instead of a silently ignored setting. Values are parsed into plain
Python types here, once, so the rest of the gateway never sees a raw string.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import date
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
    # Reverse proxies in front of public_listen whose X-Forwarded-For is believed (IPs or
    # networks). Empty: the TCP peer is the client, and the header is ignored.
    trusted_proxies: list[Network] = Field(default_factory=list)


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
    # Soft bounces (mailbox full, ...): soft_bounce_limit of them spread over at least
    # soft_bounce_days, with no delivery in between, suppress the address for
    # soft_bounce_suppress_for. A gap longer than soft_bounce_decay starts the count again.
    soft_bounce_limit: int = Field(default=5, ge=1, le=1000)
    soft_bounce_days: Duration = Field(default=7 * 86400.0, ge=0)
    soft_bounce_suppress_for: Duration = Field(default=30 * 86400.0, gt=0)
    soft_bounce_decay: Duration = Field(default=14 * 86400.0, gt=0)
    # A DSN that names no valid VERP token is matched by address only when that address was
    # sent mail within this window (an address alone is weaker evidence; see docs/feedback.md).
    address_match_window: Duration = Field(default=14 * 86400.0, ge=0)

    @model_validator(mode="after")
    def _decay_covers_span(self) -> BounceSettings:
        if self.soft_bounce_decay < self.soft_bounce_days / max(self.soft_bounce_limit - 1, 1):
            raise ValueError("soft_bounce_decay is shorter than the gap between soft bounces that "
                             "soft_bounce_limit over soft_bounce_days needs: the limit is unreachable")
        return self


def _fbl_address(value: str) -> str:
    """A local part ("fbl") or a full address ("fbl@bounces.example.com"), lower-cased."""
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+(@[A-Za-z0-9.-]+)?",
                                                      value):
        raise ValueError(f"bad FBL address {value!r}: expected a local part or local@domain")
    return value.lower()


class ComplaintSettings(Strict):
    """Complaint (ARF) reports from mailbox providers' feedback loops."""

    # Where providers send reports: local parts at the bounce domain or full addresses there.
    # Reports that arrive at a VERP address are handled too.
    fbl_addresses: list[Annotated[str, BeforeValidator(_fbl_address)]] = Field(
        default_factory=lambda: ["fbl"])
    # A report is trusted when its DKIM signature passes for one of these domains ...
    dkim_domains: list[DomainName] = Field(default_factory=list)
    # ... or when it was received from one of these networks.
    trusted_networks: list[Network] = Field(default_factory=list)
    # "list": the complainer leaves the list the mail came from (global when it had none);
    # "global": no more mail of any kind.
    scope: Literal["list", "global"] = "list"


WebhookEvent = Literal["delivered", "deferred", "bounced", "expired", "suppressed", "refused",
                       "complained", "unsubscribed", "paused", "resumed", "warned"]
ALL_WEBHOOK_EVENTS: tuple[WebhookEvent, ...] = ("delivered", "deferred", "bounced", "expired", "suppressed",
                                                "refused", "complained", "unsubscribed", "paused", "resumed",
                                                "warned")


def _webhook_url(value: str) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"https?://[^\s]+", value):
        raise ValueError(f"bad webhook url {value!r}: expected http(s)://HOST[:PORT]/PATH")
    return value


class Webhook(Strict):
    name: Annotated[str, BeforeValidator(_list_key)]
    url: Annotated[str, BeforeValidator(_webhook_url)]
    # HMAC-SHA256 key for X-Gateway-Signature: owner-only file, 32+ bytes.
    secret_file: Path
    events: list[WebhookEvent] = Field(default_factory=lambda: list(ALL_WEBHOOK_EVENTS), min_length=1)
    timeout: Duration = Field(default=10.0, gt=0)
    retry_min: Duration = Field(default=1.0, gt=0)
    retry_max: Duration = Field(default=300.0, gt=0)
    # An event still failing after this many tries, or this long after it was queued, is
    # parked (kept, no longer retried) so that the recipient's later events go on.
    max_attempts: int = Field(default=50, ge=1)
    max_age: Duration = Field(default=86400.0, gt=0)
    # A webhook added later starts with the newest event; "start" also sends the stored ones.
    start: Literal["newest", "start"] = Field(default="newest", alias="from")

    @model_validator(mode="after")
    def _retry_order(self) -> Webhook:
        if self.retry_max < self.retry_min:
            raise ValueError("retry_max is shorter than retry_min")
        return self


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
                 "spam-trap", "soft-bounce", "no-consent", "unknown-list", "frequency-cap"]


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
    helo: HostName  # must match the address's PTR record
    # Share of new connections relative to the pool's other IPs; 0 = kept out of rotation.
    weight: int = Field(default=1, ge=0, le=1000)
    # First day of this IP's warm-up (policies/warmup.toml); unset = already warm.
    warmup_start: date | None = None


class Pool(Strict):
    name: str = Field(min_length=1)
    ips: list[PoolAddress] = Field(min_length=1)
    # Streams sent from this pool (a stream in no pool's list uses the pool named "default").
    streams: list[Stream] = Field(default_factory=list)

    @model_validator(mode="after")
    def _distinct_ips(self) -> Pool:
        _reject_duplicates("pool address", [str(ip.address) for ip in self.ips])
        if not any(ip.weight for ip in self.ips):
            raise ValueError(f"pool {self.name!r} has no IP with a weight above 0")
        return self


class LoggingSettings(Strict):
    """``serve``'s log: ``--log-level`` on the command line overrides ``level``."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"  # json: one object per line on stdout
    addresses: bool = False  # write recipient addresses instead of their digest


class PolicySettings(Strict):
    dir: Path = Path("policies")


class ProcessSettings(Strict):
    # `gateway serve` writes its process id here; `gateway reload` signals it (SIGHUP).
    pid_file: Path = Path("var/gateway.pid")


_COLOUR = re.compile(r"#[0-9a-fA-F]{6}")


def _colour(value: str) -> str:
    if not isinstance(value, str) or not _COLOUR.fullmatch(value):
        raise ValueError(f"bad colour {value!r}: expected #rrggbb")
    return value.lower()


def _https_url(value: str) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"https://[^\s<>\"'()\\]+", value):
        raise ValueError(f"bad URL {value!r}: expected https://... without spaces, quotes or brackets")
    return value


def _link(value: str) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"(https://|mailto:|tel:)[^\s<>\"'\\]+", value):
        raise ValueError(f"bad link {value!r}: expected an https://, mailto: or tel: URL")
    return value


Colour = Annotated[str, BeforeValidator(_colour)]
HttpsUrl = Annotated[str, BeforeValidator(_https_url)]


class ChannelLink(Strict):
    label: str = Field(min_length=1, max_length=80)
    url: Annotated[str, BeforeValidator(_link)]


class PageColours(Strict):
    brand: Colour = "#1d4ed8"  # header bar, buttons, links, focus ring
    text: Colour = "#1f2937"
    background: Colour = "#ffffff"


class PagesSettings(Strict):
    """The preference centre and confirmation pages on http.public_listen (docs/preferences.md)."""

    company_name: str = Field(default="", max_length=120)
    logo_url: HttpsUrl | None = None
    colours: PageColours = Field(default_factory=PageColours)
    privacy_url: HttpsUrl | None = None
    channels: list[ChannelLink] = Field(default_factory=list, max_length=10)
    # Extra or overriding gettext catalogs: LOCALE/LC_MESSAGES/messages.po under this directory.
    locale_dir: Path | None = None
    default_locale: str = Field(default="en", pattern=r"^[a-z]{2,3}(_[A-Za-z0-9]{2,8})*$")
    # How long after its message a preference link may still join topics or turn the master
    # switch off (leaving always works): a recent delivery is what proves the mailbox.
    rejoin_window: Duration = Field(default=30 * 86400.0, gt=0)


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
    process: ProcessSettings = Field(default_factory=ProcessSettings)
    pages: PagesSettings = Field(default_factory=PagesSettings)
    complaints: ComplaintSettings = Field(default_factory=ComplaintSettings)
    webhooks: list[Webhook] = Field(default_factory=list)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)

    @field_validator("pools")
    @classmethod
    def _every_stream_has_a_pool(cls, pools: list[Pool]) -> list[Pool]:
        """Without a pool named "default" a stream in no pool's list would have nowhere to go."""
        if pools and not any(pool.name == "default" for pool in pools):
            for stream in ALL_STREAMS:
                if not any(stream in pool.streams for pool in pools):
                    raise ValueError(f"stream {stream} is in no pool's streams and no pool is named "
                                     f"\"default\": add it to a pool's streams or name a pool \"default\"")
        return pools

    @model_validator(mode="after")
    def _unique_names(self) -> Settings:
        _reject_duplicates("pool", [p.name for p in self.pools])
        _reject_duplicates("stream in pools", [s for p in self.pools for s in p.streams])
        _reject_duplicates("domain", [d.name for d in self.domains])
        _reject_duplicates("webhook", [w.name for w in self.webhooks])
        for address in self.complaints.fbl_addresses:
            if "@" in address and address.rpartition("@")[2] != self.bounce.domain:
                raise ValueError(f"complaints.fbl_addresses: {address} is not at the bounce domain "
                                 f"{self.bounce.domain}; only mail for that domain is accepted without AUTH")
        return self
