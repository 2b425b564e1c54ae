"""`gateway demo`: the whole gateway on one machine, with fake ISPs on loopback.

The demo is the gateway a newcomer would run, wired to a made-up Internet: a loopback DNS
server whose MX records point provider-looking hosts (``gmail-smtp-in.l.google.com``,
``*.mail.protection.outlook.com`` ...) at sinks on 127.0.1.x, so provider matching picks the
shipped profiles of policies/providers.toml. Recipient domains are under ``.example``
(RFC 2606): even a misconfigured copy of this setup could not mail a real person.

It then does what an operator's tools would do: creates lists and imports consented contacts
with the ordinary CLI verbs, sends a campaign through SMTP with an account, lets the fake ISPs
answer the way real ones do (rate limits, unknown users, a full mailbox, a later DSN, a
complaint), clicks one one-click unsubscribe link, and sends again to show the suppressions.
Everything is written under one directory (``var/demo/``), which a new run wipes.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.parser
import email.policy
import json
import os
import re
import secrets
import shutil
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO, TypeVar

import aiosmtplib
import httpx

from gateway import logs
from gateway.config.loader import load_settings
from gateway.config.policy import load_policy
from gateway.ingest.addresses import address_hash
from gateway.runtime import Gateway, remove_pid_file, write_pid_file
from gateway.sandbox.dnsserver import LoopbackDnsServer
from gateway.sandbox.sink import InboxWriter, ReceivedMessage, ReplyScript, SinkServer
from gateway.signing import keys
from gateway.smtp.passwords import hash_password
from gateway.storage import campaign_store, consent_store, queue_store
from gateway.storage.migrate import upgrade

MARKER = ".gateway-demo"
"""Only a directory holding this file is wiped by a new run (never someone's real data)."""
RATE_SPEEDUP = 6
"""Provider message rates run this many times faster than shipped, so a run takes seconds."""
SETTLE_TIMEOUT = 60.0
STEPS = 7
SENDERS = 4  # concurrent SMTP sessions of the "mailing tool"

SENDING_DOMAIN = "example.com"
BOUNCE_DOMAIN = "bounces.example.com"
SELECTOR = "s1"
NEWSLETTER = "newsletter"  # the mailing tool's account: marketing only
SHOP = "shop"  # the web shop's account: transactional only
T = TypeVar("T")
DNS_HOST = "127.0.0.53"
LOCAL = "127.0.0.1"


@dataclass(frozen=True)
class Isp:
    """One fake receiving provider: a sink at ``ip`` that the loopback DNS names as MX."""

    provider: str  # the profile of policies/providers.toml its MX host matches
    domain: str
    mx_host: str
    ip: str
    contacts: int
    hard_bounces: int  # the last addresses of its share answer 550 5.1.1 at RCPT


ISPS = (
    Isp("gmail", "gmail.example", "gmail-smtp-in.l.google.com", "127.0.1.1", 90, 3),
    Isp("microsoft", "outlook.example", "outlook-example.mail.protection.outlook.com", "127.0.1.2", 45, 2),
    Isp("yahoo", "yahoo.example", "mta5.am0.yahoodns.net", "127.0.1.3", 45, 2),
    Isp("gmx", "gmx.example", "mx00.gmx.net", "127.0.1.4", 30, 1),
    Isp("default", "example.net", "mx.example.net", "127.0.1.5", 90, 4),
)
POOL = ("127.0.0.10", "127.0.0.11", "127.0.0.12")  # marketing; .12 starts its warm-up today
TRANSACTIONAL_IP = "127.0.0.13"
NAMES = ("ada", "alan", "grace", "linus", "barbara", "ken", "margaret", "dennis", "radia", "tim",
         "frances", "edsger", "hedy", "donald", "karen", "vint")


@dataclass(frozen=True)
class Ports:
    smtp: int  # MX-facing: DSNs and complaints to the bounce domain arrive here
    submission: int  # loopback-only, AUTH without TLS: the mailing tool's
    admin: int
    public: int
    dns: int
    mx: int  # every fake ISP listens on this port of its own 127.0.1.x address
    webhook: int


PREFERRED = Ports(smtp=2600, submission=2587, admin=8600, public=8601, dns=5360, mx=2625, webhook=8602)


@dataclass(frozen=True)
class Contact:
    address: str
    isp: Isp
    frequency: str = ""  # chosen at sign-up; "" = every mail of the list


def contacts() -> list[Contact]:
    """The imported list, interleaved across ISPs as a mailing tool sends it; each ISP's
    unknown users come last, so the bounce rate rises late, as a real stale tail does."""
    shares = [[Contact(f"{NAMES[i % len(NAMES)]}.{i + 1}@{isp.domain}", isp,
                       "monthly" if i % MONTHLY_EVERY == MONTHLY_EVERY - 1 else "")
               for i in range(isp.contacts)] for isp in ISPS]
    ordered: list[Contact] = []
    for row in range(max(len(share) for share in shares)):
        ordered.extend(share[row] for share in shares if row < len(share))
    return ordered


BOUGHT = 200
BOUGHT_DEAD_EVERY = 5  # a bought list: one address in five no longer exists
BOUGHT_PACE = 25.0  # messages/s the mailing tool submits it at (as a real send is spread out)


def bought_list() -> list[str]:
    """Addresses an operator bought (a typical list-upload mistake), spread over the ISPs."""
    return [f"lead.{n + 1}@{ISPS[n % len(ISPS)].domain}" for n in range(BOUGHT)]


def dead_leads() -> list[str]:
    every = BOUGHT_DEAD_EVERY  # the dead ones spread over the ISPs, not all at one
    return [a for n, a in enumerate(bought_list()) if n % every == (n // every) % every]


def unknown_users() -> list[str]:
    found = []
    for isp in ISPS:
        found += [f"{NAMES[i % len(NAMES)]}.{i + 1}@{isp.domain}"
                  for i in range(isp.contacts - isp.hard_bounces, isp.contacts)]
    return found


MAILBOX_FULL = "grace.3@outlook.example"
MONTHLY_EVERY = 10  # every tenth person asked for one mail a month at most
_RATE_LINE = re.compile(r'^(\s*(?:provider_max_message_rate|max_message_rate|rate)\s*=\s*")'
                        r'(\d+(?:\.\d+)?)(/[a-z]+")', re.MULTILINE)


def speed_up_rates(text: str, factor: int) -> str:
    """policies/providers.toml with every message rate ``factor`` times higher (pure)."""
    def faster(match: re.Match[str]) -> str:
        return f"{match.group(1)}{float(match.group(2)) * factor:g}{match.group(3)}"
    return _RATE_LINE.sub(faster, text)


# -- set-up: directory, ports, files ----------------------------------------------------------


def _running_pid(pid_file: Path) -> int | None:
    """The pid of a demo still running from ``pid_file``, if any (its files must stay)."""
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def prepare_dir(root: Path, say: Callable[[str], None]) -> None:
    if root.exists():
        if not (root / MARKER).exists() and any(root.iterdir()):
            raise RuntimeError(f"{root} exists and was not made by `gateway demo`: "
                               "remove it or pass another --dir")
        running = _running_pid(root / "gateway.pid")
        if running is not None:
            raise RuntimeError(f"a demo is still running in {root} (process {running}): stop it "
                               "first, or pass another --dir")
        say(f"Removing {root}/ from the previous demo run: every run starts fresh.")
        shutil.rmtree(root)
    root.mkdir(parents=True)
    (root / MARKER).write_text("made by `gateway demo`; the next run deletes this directory\n")


def _bindable(host: str, port: int, kind: int = socket.SOCK_STREAM) -> bool:
    with socket.socket(socket.AF_INET, kind) as probe:
        if kind == socket.SOCK_STREAM:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _free_port(hosts: Sequence[str], preferred: int, what: str, say: Callable[[str], None],
               udp: bool = False) -> int:
    """The preferred port when every host can bind it, else one the system picks (and say so)."""
    def usable(port: int) -> bool:
        return all(_bindable(h, port) and (not udp or _bindable(h, port, socket.SOCK_DGRAM)) for h in hosts)

    if usable(preferred):
        return preferred
    for _ in range(20):
        with socket.socket() as probe:
            probe.bind((hosts[0], 0))
            port = int(probe.getsockname()[1])
        if usable(port):
            say(f"Port {preferred} ({what}) is taken on {hosts[0]}: using {port} instead.")
            return port
    raise RuntimeError(f"no free port for {what} on {', '.join(hosts)}")


def pick_ports(say: Callable[[str], None]) -> Ports:
    taken: set[int] = set()

    def pick(hosts: Sequence[str], preferred: int, what: str, udp: bool = False) -> int:
        port = _free_port(hosts, preferred, what, say, udp)
        while port in taken:  # a fallback must not land on another service's preferred port
            port = _free_port(hosts, 0, what, say, udp)
        taken.add(port)
        return port

    return Ports(smtp=pick([LOCAL], PREFERRED.smtp, "SMTP"),
                 submission=pick([LOCAL], PREFERRED.submission, "SMTP submission"),
                 admin=pick([LOCAL], PREFERRED.admin, "admin HTTP and /metrics"),
                 public=pick([LOCAL], PREFERRED.public, "unsubscribe pages"),
                 dns=pick([DNS_HOST], PREFERRED.dns, "loopback DNS", udp=True),
                 mx=pick([isp.ip for isp in ISPS], PREFERRED.mx, "fake ISPs"),
                 webhook=pick([LOCAL], PREFERRED.webhook, "webhook receiver"))


def _q(value: object) -> str:
    """A TOML basic string (JSON's escapes are TOML's)."""
    return json.dumps(str(value))


@dataclass(frozen=True)
class Files:
    root: Path
    config: Path
    password: str
    dkim_txt: str


def write_files(root: Path, ports: Ports, repo_policies: Path, today: str) -> Files:
    """Keys, secrets, the demo policy copy and gateway.toml; every path in it is absolute."""
    root = root.resolve()
    secrets_dir = root / "keys"
    secrets_dir.mkdir(mode=0o700)
    key = keys.generate_key("rsa")
    keys.write_private_file(secrets_dir / f"{SENDING_DOMAIN}.{SELECTOR}.pem", keys.private_pem(key))
    keys.write_private_file(secrets_dir / "token.key", secrets.token_urlsafe(32).encode() + b"\n")
    keys.write_private_file(secrets_dir / "api-token", secrets.token_urlsafe(32).encode())
    keys.write_private_file(secrets_dir / "webhook.key", secrets.token_urlsafe(32).encode())
    password = secrets.token_urlsafe(12)
    keys.write_private_file(secrets_dir / "smtp-password", f"{password}\n".encode())
    policies = root / "policies"
    policies.mkdir()
    for source in sorted(repo_policies.glob("*.toml")):
        text = source.read_text(encoding="utf-8")
        if source.name == "providers.toml":
            text = (f"# Demo copy of {source}: every message rate is {RATE_SPEEDUP}x the shipped "
                    "one,\n# so that the demo takes seconds. Everything else is as shipped.\n\n"
                    + speed_up_rates(text, RATE_SPEEDUP))
        (policies / source.name).write_text(text, encoding="utf-8")
    config = root / "gateway.toml"
    config.write_text(_config_text(root, ports, password, today), encoding="utf-8")
    return Files(root, config, password, keys.txt_value(key))


def _config_text(root: Path, ports: Ports, password: str, today: str) -> str:
    pool = ", ".join(f'{{ address = "{ip}", helo = "mta{n}.{SENDING_DOMAIN}"'
                     + (f", warmup_start = {today}" if ip == POOL[-1] else "") + " }"
                     for n, ip in enumerate(POOL, start=1))
    return f"""# Written by `gateway demo` (docs/demo.md); a new run deletes this directory.
# Use it with the other verbs while the demo runs, e.g. gateway trace ADDRESS -c {root}/gateway.toml

[smtp]
listen = ["{LOCAL}:{ports.smtp}"]              # where ISPs return DSNs and complaints
listen_trusted_local = ["{LOCAL}:{ports.submission}"]  # the mailing tool: AUTH without TLS, loopback only
hostname = "gw.{SENDING_DOMAIN}"
allowed_networks = []                           # every sender authenticates

[[smtp.accounts]]                               # the mailing tool; password in keys/smtp-password
username = "{NEWSLETTER}"
password_hash = "{hash_password(password)}"
allowed_from_domains = ["{SENDING_DOMAIN}"]
streams = ["marketing"]

[[smtp.accounts]]                               # the web shop's receipts; same password
username = "{SHOP}"
password_hash = "{hash_password(password)}"
allowed_from_domains = ["{SENDING_DOMAIN}"]
streams = ["transactional"]
default_stream = "transactional"

[storage]
url = {_q(f"sqlite:///{root}/gateway.db")}
node_name = "demo"

[http]
admin_listen = "{LOCAL}:{ports.admin}"
public_listen = "{LOCAL}:{ports.public}"
public_url = "http://{LOCAL}:{ports.public}"
api_token_file = {_q(root / "keys" / "api-token")}

[dns]
nameservers = ["{DNS_HOST}:{ports.dns}"]
mx_port = {ports.mx}
timeout = "2s"

[bounce]
domain = "{BOUNCE_DOMAIN}"

[complaints]
fbl_addresses = ["fbl"]
trusted_networks = ["{ISPS[2].ip}/32"]          # the fake Yahoo's feedback loop

[[webhooks]]
name = "crm"
url = "http://{LOCAL}:{ports.webhook}/hooks"
secret_file = {_q(root / "keys" / "webhook.key")}

[[domains]]
name = "{SENDING_DOMAIN}"
[[domains.dkim]]
selector = "{SELECTOR}"
algorithm = "rsa"
key_file = {_q(root / "keys" / f"{SENDING_DOMAIN}.{SELECTOR}.pem")}

[tokens]
default_secret_file = {_q(root / "keys" / "token.key")}

[[pools]]
name = "default"
streams = ["marketing"]
ips = [{pool}]

[[pools]]
name = "transactional"
streams = ["transactional"]
ips = [{{ address = "{TRANSACTIONAL_IP}", helo = "mta4.{SENDING_DOMAIN}" }}]

[pages]
company_name = "Example Shop (demo)"

[policy]
dir = {_q(root / "policies")}

[process]
pid_file = {_q(root / "gateway.pid")}

[logging]
addresses = true
"""


def zone(files: Files, ports: Ports) -> dict[tuple[str, str], list[str]]:
    """The made-up Internet: MX and A records of the fake ISPs, and the sender's own DNS
    (DKIM, SPF, DMARC, PTR, bounce MX), so `gateway dns check example.com` has answers."""
    records: dict[tuple[str, str], list[str]] = {}
    for isp in ISPS:
        records[(isp.domain, "MX")] = [f"10 {isp.mx_host}."]
        records[(isp.mx_host, "A")] = [isp.ip]
    ips = [*POOL, TRANSACTIONAL_IP]
    records[(f"{SELECTOR}._domainkey.{SENDING_DOMAIN}", "TXT")] = [files.dkim_txt]
    spf = "v=spf1 " + " ".join(f"ip4:{ip}" for ip in ips) + " -all"
    records[(SENDING_DOMAIN, "TXT")] = [spf]
    records[(BOUNCE_DOMAIN, "TXT")] = [spf]  # the envelope (VERP) domain is what receivers check
    records[(f"_dmarc.{SENDING_DOMAIN}", "TXT")] = [f"v=DMARC1; p=none; rua=mailto:dmarc@{SENDING_DOMAIN}"]
    records[(BOUNCE_DOMAIN, "MX")] = [f"10 gw.{SENDING_DOMAIN}."]
    records[(f"gw.{SENDING_DOMAIN}", "A")] = [LOCAL]
    for n, ip in enumerate(ips, start=1):
        helo = f"mta{n}.{SENDING_DOMAIN}"
        records[(helo, "A")] = [ip]
        records[(helo, "TXT")] = [f"v=spf1 ip4:{ip} -all"]  # null-sender mail is checked by HELO
        records[(".".join(reversed(ip.split("."))) + ".in-addr.arpa", "PTR")] = [f"{helo}."]
    return records


def scripts() -> dict[str, ReplyScript]:
    """How each fake ISP answers; the replies are the ones those providers really send."""
    scripted = {isp.provider: ReplyScript() for isp in ISPS}
    texts = {"gmail": "550 5.1.1 The email account that you tried to reach does not exist.",
             "microsoft": "550 5.1.1 RESOLVER.ADR.RecipNotFound; not found",
             "yahoo": "550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown",
             "gmx": "550 5.1.1 Requested action not taken: mailbox unavailable",
             "default": "550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown in virtual "
                        "mailbox table"}
    by_domain = {isp.domain: isp.provider for isp in ISPS}
    for address in [*unknown_users(), *dead_leads()]:
        provider = by_domain[address.split("@")[1]]
        scripted[provider].on_rcpt(address, texts[provider].format(rcpt=address))
    scripted["microsoft"].on_rcpt(MAILBOX_FULL,
                                  "552 5.2.2 Mailbox full; STOREDRV.Deliver.Exception:QuotaExceeded")
    # Gmail's answer to a sender it finds too fast: the shipped rule suspends that IP for an hour.
    scripted["gmail"].on_data("421 4.7.28 Our system has detected an unusual rate of unsolicited mail "
                              "originating from your IP address. Try again later.", times=1)
    return scripted


# -- running pieces ---------------------------------------------------------------------------


@dataclass
class WebhookReceiver:
    """The operator's CRM: answers 503 to the first few POSTs (it was down), then takes them."""

    path: Path
    refuse_first: int = 3
    received: int = 0
    _server: asyncio.Server | None = None

    async def start(self, port: int) -> None:
        self._server = await asyncio.start_server(self._serve, LOCAL, port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, ValueError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                body = await reader.readexactly(int(length.group(1)) if length else 0)
                self.received += 1
                if self.received <= self.refuse_first:
                    status = b"503 Service Unavailable"
                else:
                    status = b"204 No Content"
                    with self.path.open("ab") as out:
                        out.write(body.rstrip(b"\n") + b"\n")
                writer.write(b"HTTP/1.1 " + status + b"\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
        writer.close()


@dataclass
class World:
    files: Files
    ports: Ports
    gateway: Gateway
    sinks: dict[str, SinkServer]
    webhooks: WebhookReceiver
    say: Callable[[str], None]
    found: dict[str, str] = field(default_factory=dict)  # what the where-to-look block names

    def delivered_to(self, address: str) -> ReceivedMessage | None:
        sink = self.sinks[next(isp.provider for isp in ISPS if address.endswith("@" + isp.domain))]
        return next((m for m in sink.messages if address in m.rcpt_tos), None)

    async def suppressed(self, address: str) -> list[consent_store.SuppressionRecord]:
        found = await self.gateway.db.read(
            lambda c: consent_store.find_suppressions(c, address_hash=address_hash(address)))
        return [record for _, record in found]


def campaign_message(to: str, campaign: str, subject: str, list_key: str = "news") -> bytes:
    name = to.split(".")[0].title()
    return (f"From: Example Shop <news@{SENDING_DOMAIN}>\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"X-Gateway-Stream: marketing\r\nX-Gateway-List: {list_key}\r\nX-Gateway-Campaign: {campaign}\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\n\r\nHello {name},\r\n\r\n"
            "Everything in the spring collection is 20% off this week.\r\n").encode()


def order_message(to: str, number: int) -> bytes:
    return (f"From: Example Shop <shop@{SENDING_DOMAIN}>\r\nTo: {to}\r\nSubject: Your order #{number}\r\n"
            "X-Gateway-Stream: transactional\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
            f"Thank you for your order #{number}. It ships tomorrow.\r\n").encode()


@contextlib.asynccontextmanager
async def submission(world: World, account: str) -> AsyncIterator[aiosmtplib.SMTP]:
    client = aiosmtplib.SMTP(hostname=LOCAL, port=world.ports.submission, start_tls=False, timeout=30)
    await client.connect()
    try:
        await client.login(account, world.files.password)
        yield client
    finally:
        with contextlib.suppress(aiosmtplib.SMTPException):
            await client.quit()


async def send_each(world: World, account: str, messages: Sequence[tuple[str, bytes]],
                    sender: str, rate: float | None = None) -> dict[str, str]:
    """One message per recipient over a few sessions, like a mailing tool; reply per recipient.
    ``rate`` (messages/s over all sessions) spreads the send out; None sends as fast as it can."""
    replies: dict[str, str] = {}

    async def session(share: Sequence[tuple[str, bytes]]) -> None:
        async with submission(world, account) as client:
            for rcpt, data in share:
                try:
                    _, reply = await client.sendmail(sender, [rcpt], data)
                    replies[rcpt] = f"250 {reply}"
                except aiosmtplib.SMTPRecipientsRefused as exc:
                    replies[rcpt] = " ".join(f"{e.code} {e.message}" for e in exc.recipients)
                except aiosmtplib.SMTPResponseException as exc:
                    replies[rcpt] = f"{exc.code} {exc.message}"
                if rate is not None:
                    await asyncio.sleep(SENDERS / rate)

    await asyncio.gather(*(session(messages[n::SENDERS]) for n in range(SENDERS)))
    return replies


async def settle(world: World, expected_sinks: int) -> None:
    """Wait until every delivery that can go soon went (the rest wait minutes for a retry)."""
    started = time.monotonic()
    last = 0.0
    while True:
        now = datetime.now(UTC)
        counts = await world.gateway.db.read(queue_store.count_pending)
        due = await world.gateway.db.read(queue_store.next_due)
        got = sum(sink.messages_total for sink in world.sinks.values())
        quiet = due is None or (due - now).total_seconds() > 30
        if time.monotonic() - last >= 2 or (quiet and got >= expected_sinks):
            detail = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()) if n) or "empty"
            world.say(f"      {time.monotonic() - started:4.1f} s: fake ISPs took {got} messages; "
                      f"queue: {detail}")
            last = time.monotonic()
        if quiet and got >= expected_sinks:
            return
        if time.monotonic() - started > SETTLE_TIMEOUT:
            world.say("      (still going after a minute: the rest continues in the background)")
            return
        await asyncio.sleep(0.5)


async def wait_for_suppression(world: World, address: str, reason: str) -> None:
    for _ in range(200):
        world.gateway.inbound.wake()
        if any(r.reason == reason for r in await world.suppressed(address)):
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"demo: {address} was not suppressed ({reason}) in time")


def _send_as_isp(ip: str, port: int, rcpt: str, data: bytes) -> None:
    import smtplib

    with smtplib.SMTP(LOCAL, port, source_address=(ip, 0), timeout=10) as client:
        client.sendmail("", [rcpt], data)


def dsn(verp: str, recipient: str) -> bytes:
    """What Gmail sends when a mailbox it accepted mail for turns out not to exist (RFC 3464)."""
    return (f"From: Mail Delivery Subsystem <mailer-daemon@googlemail.com>\r\nTo: {verp}\r\n"
            "Subject: Delivery Status Notification (Failure)\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/report; report-type=delivery-status; boundary="b1"\r\n\r\n'
            "--b1\r\nContent-Type: text/plain\r\n\r\nYour message wasn't delivered to "
            f"{recipient} because the address couldn't be found.\r\n\r\n"
            "--b1\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; googlemail.com\r\n\r\n"
            f"Final-Recipient: rfc822; {recipient}\r\nAction: failed\r\nStatus: 5.1.1\r\n"
            "Diagnostic-Code: smtp; 550 5.1.1 The email account that you tried to reach does not "
            "exist.\r\n\r\n"
            f"--b1\r\nContent-Type: text/rfc822-headers\r\n\r\nReturn-Path: <{verp}>\r\n"
            f"From: Example Shop <news@{SENDING_DOMAIN}>\r\nTo: {recipient}\r\nSubject: Spring sale\r\n\r\n"
            "--b1--\r\n").encode()


def arf(verp: str, recipient: str, source_ip: str) -> bytes:
    """A complaint from the fake Yahoo's feedback loop (RFC 5965)."""
    now = datetime.now(UTC).strftime("%a, %d %b %Y %H:%M:%S +0000")
    return (f"From: Yahoo! Feedback Loop <feedback@arf.yahoo.example>\r\nTo: fbl@{BOUNCE_DOMAIN}\r\n"
            f"Subject: complaint\r\nDate: {now}\r\nMessage-ID: <arf-{secrets.token_hex(6)}@yahoo.example>\r\n"
            "MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=feedback-report; "
            'boundary="f1"\r\n\r\n'
            "--f1\r\nContent-Type: text/plain\r\n\r\nThis is an email abuse report.\r\n\r\n"
            "--f1\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\n"
            f"User-Agent: Yahoo!-Mail-Feedback/2.0\r\nVersion: 1\r\nOriginal-Mail-From: <{verp}>\r\n"
            f"Original-Rcpt-To: <{recipient}>\r\nArrival-Date: {now}\r\nSource-IP: {source_ip}\r\n"
            f"Reported-Domain: {SENDING_DOMAIN}\r\n\r\n--f1\r\nContent-Type: text/rfc822-headers\r\n\r\n"
            f"Return-Path: <{verp}>\r\nFrom: Example Shop <news@{SENDING_DOMAIN}>\r\nTo: {recipient}\r\n"
            "Subject: Spring sale\r\n\r\n--f1--\r\n").encode()


def unsubscribe_url(message: ReceivedMessage) -> str:
    head = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(message.data)
    found = re.search(r"<(https?://[^>]+)>", str(head.get("List-Unsubscribe", "")))
    if found is None:
        raise RuntimeError("demo: a delivered campaign message has no List-Unsubscribe URL")
    return found.group(1)


# -- the story --------------------------------------------------------------------------------


async def play(world: World) -> None:
    say = world.say
    people = contacts()
    bounced = set(unknown_users())
    say(f"\n[1/{STEPS}] Campaign 'spring-sale': {len(people)} messages to list 'news', one per person, "
        f"from account '{NEWSLETTER}' over SMTP (127.0.0.1:{world.ports.submission}).")
    with contextlib.suppress(aiosmtplib.SMTPAuthenticationError):
        client = aiosmtplib.SMTP(hostname=LOCAL, port=world.ports.submission, start_tls=False, timeout=10)
        async with client:
            await client.login(NEWSLETTER, "not-the-password")
    say("      (first a mailer with a wrong password: refused with 535, counted in gateway_smtp_auth_total)")
    started = time.monotonic()
    campaign = [(c.address, campaign_message(c.address, "spring-sale", "Spring sale")) for c in people]
    replies = await send_each(world, NEWSLETTER, campaign, f"news@{SENDING_DOMAIN}")
    accepted = sum(reply.startswith("250") for reply in replies.values())
    say(f"      accepted {accepted} of {len(people)} in {time.monotonic() - started:.1f} s "
        "(250 only after each message is on disk)")

    say(f"\n[2/{STEPS}] Delivering from {len(POOL)} marketing IPs ({', '.join(POOL)}; {POOL[-1]} "
        f"is on warm-up day 1), per-provider limits from {_shown(world.files.root, Path.cwd())}"
        "/policies/providers.toml:")
    for isp in ISPS:
        extra = {"gmail": "; throttles to its rate, and its first 421 4.7.28 suspends one IP for an hour",
                 "microsoft": f"; {MAILBOX_FULL} has a full mailbox (552 5.2.2, soft)"}.get(isp.provider, "")
        say(f"      {isp.provider:9} {isp.contacts:3} people @{isp.domain:15} MX {isp.mx_host} -> "
            f"{isp.ip}; {isp.hard_bounces} unknown users (550 5.1.1){extra}")
    expected = len(people) - len(bounced) - 2  # the mailbox-full one and Gmail's first deferral
    await settle(world, expected)

    say(f"\n[3/{STEPS}] The ISPs report back after delivery:")
    gmail = next(c.address for c in people if c.isp.provider == "gmail" and world.delivered_to(c.address))
    late = world.delivered_to(gmail)
    assert late is not None
    await asyncio.to_thread(_send_as_isp, ISPS[0].ip, world.ports.smtp, late.mail_from,
                            dsn(late.mail_from, gmail))
    await wait_for_suppression(world, gmail, "hard-bounce")
    say(f"      Gmail's DSN to the VERP address {late.mail_from[:22]}...: {gmail} suppressed (hard-bounce)")
    yahoo_ip = ISPS[2].ip
    complainer = next(c.address for c in people
                      if c.isp.provider == "yahoo" and world.delivered_to(c.address))
    report = world.delivered_to(complainer)
    assert report is not None
    await asyncio.to_thread(_send_as_isp, yahoo_ip, world.ports.smtp, f"fbl@{BOUNCE_DOMAIN}",
                            arf(report.mail_from, complainer, report.peer_ip))
    await wait_for_suppression(world, complainer, "complaint")
    say(f"      Yahoo's feedback loop (trusted network {yahoo_ip}/32) reports a complaint: "
        f"{complainer} leaves list 'news'")
    leaver = next(c.address for c in people if c.isp.provider == "default" and world.delivered_to(c.address))
    leaving = world.delivered_to(leaver)
    assert leaving is not None
    url = unsubscribe_url(leaving)
    async with httpx.AsyncClient(timeout=10) as http:
        answer = await http.post(url, data={"List-Unsubscribe": "One-Click"})
    await wait_for_suppression(world, leaver, "unsubscribe")
    say(f"      {leaver} clicks unsubscribe in their mail client: POST {url[:45]}... -> {answer.status_code}")

    say(f"\n[4/{STEPS}] Order confirmations from account '{SHOP}' (transactional stream, own IP "
        f"{TRANSACTIONAL_IP}, no unsubscribe link):")
    buyers = [leaver, *(c.address for c in people[15:19] if c.address != MAILBOX_FULL)]
    before = sum(sink.messages_total for sink in world.sinks.values())
    replies = await send_each(world, SHOP, [(b, order_message(b, 1000 + n)) for n, b in enumerate(buyers)],
                              f"shop@{SENDING_DOMAIN}")
    await settle(world, before + sum(r.startswith("250") for r in replies.values()))
    say(f"      {sum(r.startswith('250') for r in replies.values())} of {len(buyers)} accepted "
        f"(including {leaver}, who left the newsletter but still gets receipts)")
    for buyer, reply in replies.items():
        if not reply.startswith("250"):
            say(f"      {buyer}: {reply}")

    say(f"\n[5/{STEPS}] Campaign 'spring-sale-last-call' to people the gateway now knows better:")
    hard = sorted(bounced)[0]
    monthly = next(c.address for c in people if c.frequency and world.delivered_to(c.address))
    again = [hard, gmail, complainer, leaver, MAILBOX_FULL, monthly, people[20].address]
    last_call = [(a, campaign_message(a, "spring-sale-last-call", "Last call")) for a in again]
    replies = await send_each(world, NEWSLETTER, last_call, f"news@{SENDING_DOMAIN}")
    notes = {MAILBOX_FULL: "  (a full mailbox is soft: still tried)",
             monthly: "  (chose monthly: accepted, then dropped by the frequency cap)"}
    for address in again:
        say(f"      {address:28} {replies[address][:80]}{notes.get(address, '')}")
    sent = sum(sink.messages_total for sink in world.sinks.values())
    await settle(world, sent + sum(r.startswith("250") and a not in notes for a, r in replies.items()))
    world.found.update(hard=hard, dsn=gmail, complainer=complainer, leaver=leaver)
    await bought_list_campaign(world)
    # The rolling-rate gauges are refreshed once a minute; a newcomer opens /metrics now.
    await world.gateway.breakers.refresh()
    keeper = next(c.address for c in people if c.isp.provider == "default" and c.address != leaver
                  and world.delivered_to(c.address))
    kept = world.delivered_to(keeper)
    assert kept is not None
    world.found["preferences"] = unsubscribe_url(kept).replace("/u/", "/preferences/")
    world.found["keeper"] = keeper


async def bought_list_campaign(world: World) -> None:
    """The circuit breaker's case: a purchased list, one address in five dead (docs/reputation.md)."""
    world.say(f"\n[6/{STEPS}] Campaign 'offers-blast' to list 'offers', imported from a bought list "
              f"of {BOUGHT} addresses ({100 // BOUGHT_DEAD_EVERY}% of them dead):")
    before = sum(sink.messages_total for sink in world.sinks.values())
    blast = [(a, campaign_message(a, "offers-blast", "Offers you did not ask for", "offers"))
             for a in bought_list()]
    replies = await send_each(world, NEWSLETTER, blast, f"news@{SENDING_DOMAIN}", BOUGHT_PACE)
    world.say(f"      accepted {sum(r.startswith('250') for r in replies.values())} of {BOUGHT}")
    state = None
    for _ in range(300):
        state = await world.gateway.db.read(lambda c: campaign_store.campaign_state(c, "offers-blast"))
        if state is not None and state.paused:
            break
        await asyncio.sleep(0.1)
    await settle(world, before)
    sent = sum(sink.messages_total for sink in world.sinks.values()) - before
    if state is None or not state.paused:
        world.say(f"      not paused: {sent} delivered (see `gateway campaign show offers-blast`)")
        return
    world.say(f"      the hard-bounce breaker paused it: {state.detail}")
    world.say(f"      {sent} copies were delivered before that; the rest wait in the queue as 'held', "
              "not lost:")
    await asyncio.to_thread(_cli, ["campaign", "list", "-c", str(world.files.config)], world.say)
    world.found["paused"] = "offers-blast"


def where_to_look(world: World, cwd: Path) -> str:
    config = _shown(world.files.config, cwd)
    root = _shown(world.files.root, cwd)
    ports = world.ports
    lines = [
        f"\n[{STEPS}/{STEPS}] Where to look (the gateway keeps running; Ctrl-C stops it):",
        f"  Metrics:      http://{LOCAL}:{ports.admin}/metrics   (Prometheus text)",
        "  Dashboard:    docs/grafana/gateway.json   (Grafana: import it, point it at a Prometheus "
        f"scraping {LOCAL}:{ports.admin})",
        f"  Trace:        gateway trace {world.found['hard']} -c {config}",
        f"                (also {world.found['dsn']}: later DSN, {world.found['complainer']}: complaint, "
        f"{world.found['leaver']}: unsubscribed)",
        f"  Queue:        gateway queue list -c {config}",
    ]
    lines.append(f"  Status:       gateway status -c {config}")
    if "paused" in world.found:
        lines.append(f"  Campaigns:    gateway campaign list -c {config}   (gateway campaign resume "
                     f"{world.found['paused']} -c ... would send the held copies)")
    lines += [
        f"  Preferences:  {world.found['preferences']}   ({world.found['keeper']}'s preference centre)",
        f"  Fake ISPs:    {root}/inbox/PROVIDER/N.eml   (what each ISP accepted, as sent: DKIM, "
        "List-Unsubscribe, VERP)",
        f"  Webhooks:     {root}/webhooks.jsonl   (events the 'CRM' took after being down at first)",
        f"  Admin API:    curl -H \"Authorization: Bearer $(cat {root}/keys/api-token)\" "
        f"http://{LOCAL}:{ports.admin}/api/openapi.json",
        f"  DNS check:    gateway dns check {SENDING_DOMAIN} -c {config}",
        f"  SMTP:         {LOCAL}:{ports.submission} (users {NEWSLETTER} and {SHOP}, password in "
        f"{root}/keys/smtp-password), bounces and complaints to {LOCAL}:{ports.smtp}",
        "  Docs:         docs/demo.md",
    ]
    return "\n".join(lines)


def _shown(path: Path, cwd: Path) -> str:
    try:
        return str(path.relative_to(cwd))
    except ValueError:
        return str(path)


def _cli(argv: list[str], say: Callable[[str], None]) -> None:
    from gateway.cli.main import main as cli_main

    shown = " ".join(f'"{a}"' if " " in a else _shown(Path(a), Path.cwd()) if a.startswith("/") else a
                     for a in argv)
    say(f"$ gateway {shown}")
    if cli_main(argv) != 0:
        raise RuntimeError(f"demo: `gateway {' '.join(argv)}` failed")


def write_contacts(root: Path) -> tuple[Path, Path]:
    path = root / "contacts.csv"
    rows = ["email,proof,ip,frequency"]
    rows += [f"{c.address},signup form on shop.example 2026-10-{1 + n % 28:02d},192.0.2.{1 + n % 250},"
             f"{c.frequency}" for n, c in enumerate(contacts())]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    bought = root / "bought-list.csv"
    bought.write_text("\n".join(["email", *bought_list()]) + "\n", encoding="utf-8")
    return path, bought


async def import_contacts(files: Files, say: Callable[[str], None]) -> None:
    """With the CLI an operator would use (in a thread: each verb runs its own event loop)."""
    config = ["-c", str(files.config)]
    csv_path, bought = write_contacts(files.root)
    commands = [
        ["lists", "add", "news", "--name", "Weekly news", "--name", "de=Wöchentliche Neuigkeiten",
         "--description", "New arrivals and sales, every Tuesday", "--cap", "monthly=30", *config],
        ["lists", "add", "offers", "--name", "Special offers", "--name", "de=Sonderangebote", *config],
        ["contacts", "import", str(csv_path), "--list", "news", "--proof-column", "proof",
         "--ip-column", "ip", "--frequency-column", "frequency", *config],
        ["contacts", "import", str(bought), "--list", "offers", "--consent-source", "purchased", *config],
    ]
    for argv in commands:
        await asyncio.to_thread(_cli, argv, say)


@contextlib.asynccontextmanager
async def started_world(files: Files, ports: Ports, say: Callable[[str], None]) -> AsyncIterator[World]:
    async with contextlib.AsyncExitStack() as stack:
        dns = LoopbackDnsServer(zone(files, ports), host=DNS_HOST, port=ports.dns)
        await dns.start()
        stack.push_async_callback(dns.stop)
        sinks: dict[str, SinkServer] = {}
        for isp, (provider, script) in zip(ISPS, scripts().items(), strict=True):
            sink = SinkServer(isp.ip, ports.mx, script=script, hostname=isp.mx_host,
                              on_message=InboxWriter(files.root / "inbox" / provider))
            await sink.start()
            stack.push_async_callback(sink.stop)
            sinks[provider] = sink
        webhooks = WebhookReceiver(files.root / "webhooks.jsonl")
        await webhooks.start(ports.webhook)
        stack.push_async_callback(webhooks.stop)
        settings = load_settings([files.config])
        gateway = Gateway(settings, load_policy(settings.policy.dir))
        stack.push_async_callback(gateway.stop)
        await gateway.start()
        # `gateway reload -c var/demo/gateway.toml` works as with `gateway serve`.
        pid_file = write_pid_file(settings.process.pid_file)
        stack.callback(remove_pid_file, pid_file)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, lambda: gateway.reload_policy(settings.policy.dir))
        stack.callback(loop.remove_signal_handler, signal.SIGHUP)
        yield World(files, ports, gateway, sinks, webhooks, say)


async def _unless_stopped(work: Awaitable[T], stop: asyncio.Event) -> tuple[bool, T | None]:
    """Run ``work`` until it ends or Ctrl-C/SIGTERM sets ``stop``: (finished, its result)."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return False, None
    return True, task.result()


async def _set_up(root: Path, repo_policies: Path, say: Callable[[str], None]) -> tuple[Files, Ports]:
    prepare_dir(root, say)
    ports = pick_ports(say)
    say(f"Ports: SMTP {LOCAL}:{ports.smtp} (bounces, complaints) and {LOCAL}:{ports.submission} "
        "(submission), "
        f"admin and /metrics http://{LOCAL}:{ports.admin}, pages http://{LOCAL}:{ports.public}, "
        f"DNS {DNS_HOST}:{ports.dns}, fake ISPs 127.0.1.1-{len(ISPS)}:{ports.mx}, webhook receiver "
        f"{LOCAL}:{ports.webhook}.")
    today = datetime.now(UTC).date().isoformat()
    files = await asyncio.to_thread(write_files, root, ports, repo_policies, today)
    say(f"Wrote {_shown(files.config, Path.cwd())} with its DKIM key, token key, admin API token and "
        f"SMTP password under {_shown(files.root, Path.cwd())}/keys/.")
    await upgrade(load_settings([files.config]).storage.url)
    await import_contacts(files, say)
    return files, ports


async def run(root: Path, *, exit_after: float | None, log_level: str, out: TextIO = sys.stdout,
              repo_policies: Path = Path("policies")) -> int:
    def say(text: str) -> None:
        print(text, file=out, flush=True)

    logs.configure(log_level, "text", addresses=True)
    say("Gateway demo: the gateway, fake ISPs (127.0.1.x) and their DNS (127.0.0.53) on this machine; "
        "nothing leaves it.")
    if not (repo_policies / "providers.toml").exists():
        raise RuntimeError(f"{repo_policies}/providers.toml not found: run the demo from the repository root")
    # Ctrl-C is ours from the start: during set-up too (a contacts import runs in a thread,
    # where asyncio's own SIGINT handling did not reach it and the demo went on).
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        finished, prepared = await _unless_stopped(_set_up(root, repo_policies, say), stop)
        if not finished or prepared is None:
            say("\nStopped during set-up.")
            return 0
        files, ports = prepared
        async with started_world(files, ports, say) as world:
            finished, _ = await _unless_stopped(play(world), stop)
            if not finished:
                say("\nStopped before the run finished.")
                return 0
            say(where_to_look(world, Path.cwd()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), exit_after)
            say("\nStopping the demo ...")
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    say(f"Stopped. Its files stay in {_shown(files.root, Path.cwd())}/ until the next `gateway demo`.")
    return 0
