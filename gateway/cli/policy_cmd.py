"""`gateway policy show|test` and `gateway reload`: read the shaping policy, ask it, apply it."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import time
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import make_url
from sqlalchemy.exc import SQLAlchemyError

from gateway.config.loader import load_settings
from gateway.config.policy import Policy, ProviderProfile, load_policy
from gateway.config.schema import Settings
from gateway.dns.errors import DnsError
from gateway.ingest.addresses import normalize_recipient
from gateway.shaping.matching import DEFAULT
from gateway.shaping.pools import check_pool_bindings, pools_from
from gateway.shaping.rates import Rate
from gateway.shaping.router import Router, SourceIp, utc_day
from gateway.shaping.store import MemoryThrottleStore
from gateway.shaping.warmup import day_index
from gateway.storage import shaping_store
from gateway.storage.database import create_engine

WarmupState = tuple[dict[shaping_store.WarmupKey, int], dict[shaping_store.WarmupKey, tuple[int, date]]]

AddConfig = Callable[[argparse.ArgumentParser], None]


def add_parsers(verbs: Any, add_config: AddConfig) -> None:
    policy = verbs.add_parser("policy", help="show or try the per-provider delivery policy")
    actions = policy.add_subparsers(dest="policy_verb", required=True, metavar="ACTION")
    show = actions.add_parser("show", help="the effective policy of one provider (default merged in)")
    show.add_argument("provider", metavar="PROVIDER", help="profile name, e.g. gmail (or 'list')")
    test = actions.add_parser("test", help="which provider, pool, source IPs and limits an address gets")
    test.add_argument("address", metavar="ADDRESS", help="recipient address (or a bare domain)")
    test.add_argument("--stream", choices=["transactional", "marketing"], default="marketing")
    test.add_argument("--mx", action="append", default=None, metavar="HOST",
                      help="use these MX host names instead of looking them up (repeatable)")
    for action in (show, test):
        add_config(action)
    reload = verbs.add_parser("reload", help="check the policy files, then make the running "
                                             "gateway load them (SIGHUP to the pid in [process] pid_file)")
    add_config(reload)


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    policy = load_policy(settings.policy.dir)
    check_pool_bindings(policy, pools_from(settings))
    if args.verb == "reload":
        return _reload(settings, policy)
    if args.policy_verb == "show":
        return _show(policy, args.provider)
    return _test(settings, policy, args.address, args.stream, args.mx)


def _show(policy: Policy, provider: str) -> int:
    if provider == "list":
        for name, profile in policy.providers.items():
            print(f"{name:<12} mx: {', '.join(profile.match_mx) or '-'}; "
                  f"domains: {', '.join(profile.match_domains) or '-'}")
        return 0
    if provider not in policy.providers:
        raise ValueError(f"no provider profile {provider!r} (known: {', '.join(policy.providers)})")
    profile = policy.providers[provider]
    print(f"[providers.{provider}]" + ("" if provider == DEFAULT else "  # default merged in"))
    for line in profile_lines(profile):
        print(line)
    schedule = policy.warmup.schedule(provider)
    if schedule is not None:
        caps = ", ".join(f"day {day}: {'unlimited' if cap is None else cap}" for day, cap in schedule.caps)
        print(f"# warm-up caps per source IP per day: {caps}")
    return 0


def profile_lines(profile: ProviderProfile) -> list[str]:
    lines = [f"{key} = {_value(key, getattr(profile, key))}"
             for key in type(profile).model_fields if key != "rules"]
    for rule in profile.rules:
        extra = (f", duration = {_duration(rule.duration)}" if rule.duration else "") + (
            f', rate = "{rule.rate}"' if rule.rate else "")
        lines.append(f"rule {rule.name!r}: match '{rule.match}' -> {rule.action}{extra}")
    return lines


_DURATION_KEYS = {"provider_pause", "retry_first", "retry_max", "max_queue_age", "connect_timeout",
                  "command_timeout", "idle_close"}


def _value(key: str, value: object) -> str:
    if value is None:
        return '"unlimited"' if key != "pool" else "(stream's pool)"
    if key in _DURATION_KEYS and isinstance(value, float):
        return _duration(value)
    if isinstance(value, Rate):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(f'"{item}"' for item in value) + "]"
    return f'"{value}"' if isinstance(value, str) else str(value)


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f'"{int(seconds // size)}{unit}"'
    return f'"{seconds:g}s"'


def _test(settings: Settings, policy: Policy, address: str, stream: str, mx: Sequence[str] | None) -> int:
    domain = address.rpartition("@")[2] if "@" in address else address
    if "@" in address and normalize_recipient(address) is None:
        raise ValueError(f"bad address {address!r}")
    hosts = list(mx) if mx is not None else _lookup_mx(settings, domain)
    router = Router(policy, pools_from(settings), MemoryThrottleStore(), time.time)
    route = router.route(domain.lower(), hosts, stream)
    profile = route.profile
    print(f"address:  {address}")
    print(f"MX hosts: {', '.join(hosts) or '(none found)'}")
    print(f"provider: {route.provider} ({route.reason})")
    binding = "provider binding" if profile.pool == route.pool.name else f"stream {stream}"
    print(f"pool:     {route.pool.name} ({binding})")
    today = utc_day(time.time())
    state = _warmup_state(settings, today) if any(ip.warmup_start for ip in route.pool.ips) else ({}, {})
    for ip in route.pool.ips:
        warmup = _warmup(policy, ip, route.provider, today, state)
        print(f"  {ip.address or '(OS default)'} helo {ip.helo} weight {ip.weight}{warmup}")
    print(f"limits:   {profile.connection_limit} connections and "
          f"{profile.max_message_rate or 'unlimited'} per source IP; provider-wide "
          f"{profile.provider_connection_limit or 'unlimited'} connections, "
          f"{profile.provider_max_message_rate or 'unlimited'}; "
          f"{profile.max_deliveries_per_connection} messages per connection")
    print(f"retry:    first {_duration(profile.retry_first)}, x{profile.retry_factor:g}, "
          f"max {_duration(profile.retry_max)}, expire after {_duration(profile.max_queue_age)}; "
          f"tls {profile.tls}")
    print(f"rules:    {len(profile.rules)} automation rule(s); `gateway policy show {route.provider}`")
    return 0


def _warmup(policy: Policy, ip: SourceIp, provider: str, today: date, state: WarmupState) -> str:
    schedule = policy.warmup.schedule(provider)
    if ip.warmup_start is None or schedule is None:
        return " (warm)"
    sends, holds = state
    held, decided_on = holds.get((ip.key, provider), (0, None))
    sent = f", {sends[(ip.key, provider)]} sent" if (ip.key, provider) in sends else ""
    if decided_on is not None and decided_on >= today:  # the decision counts from tomorrow
        day = day_index(ip.warmup_start, today + timedelta(days=1), held)
        return (f" (warm-up held back today{sent}: from tomorrow day {day}: "
                f"{_cap_text(schedule.cap(day))} to {provider}, {held} day(s) held back)")
    day = day_index(ip.warmup_start, today, held)
    hold = f"; {held} day(s) held back since {decided_on}" if decided_on is not None else ""
    return f" (warm-up day {day}: {_cap_text(schedule.cap(day))} to {provider} today{sent}{hold})"


def _cap_text(cap: int | None) -> str:
    return "unlimited" if cap is None else str(cap)


def _warmup_state(settings: Settings, today: date) -> WarmupState:
    """Today's warm-up sends and the held-back schedules the running gateway saved."""
    async def read() -> WarmupState:
        engine = create_engine(settings.storage.url)
        try:
            async with engine.connect() as conn:
                return await shaping_store.load_warmup(conn, today)
        finally:
            await engine.dispose()

    url = make_url(settings.storage.url)
    if url.get_backend_name() == "sqlite" and url.database and not Path(url.database).exists():
        print(f"note: no database at {url.database} yet; showing the plain schedule")
        return {}, {}
    try:
        return asyncio.run(read())
    except SQLAlchemyError as exc:
        print(f"note: warm-up state not read ({str(exc).splitlines()[0]}); showing the plain schedule")
        return {}, {}


def _lookup_mx(settings: Settings, domain: str) -> list[str]:
    from gateway.runtime import resolver_from

    async def ask() -> list[str]:
        try:
            targets = await resolver_from(settings).targets(domain)
        except DnsError as exc:
            print(f"note: MX lookup failed ({exc}); matching on the domain only")
            return []
        return list(dict.fromkeys(target.host for target in targets))

    return asyncio.run(ask())


def _reload(settings: Settings, policy: Policy) -> int:
    pid = read_pid(settings.process.pid_file)
    os.kill(pid, signal.SIGHUP)
    print(f"policy in {settings.policy.dir} is valid ({len(policy.providers)} provider profiles); "
          f"asked gateway process {pid} to reload it at {datetime.now(UTC):%H:%M:%S} UTC "
          "(its log says whether it did)")
    return 0


def read_pid(path: Path) -> int:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        raise ValueError(f"{path}: no pid file; is `gateway serve` running with this config?") from None
    if not text.isdigit():
        raise ValueError(f"{path}: not a process id: {text[:20]!r}")
    pid = int(text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        raise ValueError(f"{path}: process {pid} is not running (stale pid file)") from None
    return pid
