"""`gateway status`: the queue, providers, suspensions, warm-up and backlogs in a few tables.

It asks the running gateway's admin API (GET /api/status) first, since connections and
suspensions live only in that process. When the gateway is down, or the API has no token,
it reads what the database holds and says in one line what is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import sys
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import httpx
from pydantic import ValidationError
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from gateway.config.loader import load_settings
from gateway.config.policy import load_policy
from gateway.config.schema import Settings
from gateway.config.units import HostPort
from gateway.operations.status import Status, database_status
from gateway.shaping.pools import pools_from
from gateway.signing.token_keys import read_api_token
from gateway.storage.database import Database
from gateway.storage.errors import StorageError

AddConfig = Callable[[argparse.ArgumentParser], None]
API_TIMEOUT = 10.0
PIPED_WIDTH = 140
NEEDS_LIVE = "live suspensions and connections need the running gateway's admin API"


def add_parsers(verbs: Any, add_config: AddConfig) -> None:
    status = verbs.add_parser("status",
                              help="queue, providers, suspensions, warm-up and backlogs at a glance")
    add_config(status)
    status.add_argument("--json", action="store_true", help="print the status as JSON (as GET /api/status)")


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    status, missing = fetch_live(settings)
    if status is None:
        try:
            status = asyncio.run(_from_database(settings))
        except (StorageError, OSError) as exc:  # both sources failed: say why for each
            raise StorageError(f"{exc} (live status unavailable too: {missing}; a database that "
                               "is not at this version's schema needs `gateway db upgrade -c FILE`)") from exc
    if args.json:
        print(json.dumps(status.model_dump(mode="json"), indent=2))
    else:
        # Piped or redirected (a log, `| less`), rich would assume 80 columns and squeeze the
        # reasons away: such output gets the width of a wide terminal instead.
        console = Console(highlight=False, width=None if sys.stdout.isatty() else PIPED_WIDTH)
        show(console, status)
        if missing:
            console.print(f"{NEEDS_LIVE} ({missing})", highlight=False, markup=False, soft_wrap=True)
    return 0


# -- where the data comes from ----------------------------------------------------------------

def fetch_live(settings: Settings, transport: httpx.BaseTransport | None = None) -> tuple[Status | None, str]:
    """The running gateway's status, or None and why it could not be had.

    Proxy variables of the environment are ignored: the request carries the admin token and
    goes to the gateway's own listener, never through an HTTP_PROXY that could read it."""
    endpoint, token_file = settings.http.admin_listen, settings.http.api_token_file
    if endpoint is None:
        return None, "[http] admin_listen is off"
    if token_file is None:
        return None, "[http] api_token_file is not set"
    try:
        token = read_api_token(token_file)
    except ValueError as exc:
        return None, f"cannot use the API token: {exc}"
    url = f"http://{_reachable(endpoint)}/api/status"
    try:
        with httpx.Client(transport=transport, trust_env=False, timeout=API_TIMEOUT) as client:
            response = client.get(url, headers={"Authorization": f"Bearer {token}"})
    except httpx.ConnectError:
        return None, f"no gateway answers at {url}"
    except httpx.HTTPError as exc:
        return None, f"{url}: {exc or type(exc).__name__}"
    if response.status_code in (401, 403):
        return None, (f"{url} refused the token of [http] api_token_file "
                      f"({response.status_code}: {_error_text(response)})")
    if response.status_code != 200:
        return None, f"{url} answered {response.status_code}: {_error_text(response)}"
    try:
        return Status.model_validate_json(response.content), ""
    except ValidationError:
        return None, f"{url} answered something that is not a gateway status"


def _reachable(endpoint: HostPort) -> str:
    """The admin listener as a client reaches it: a wildcard bind is reached on loopback."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(endpoint.host, endpoint.host)
    return f"[{host}]:{endpoint.port}" if ":" in host else f"{host}:{endpoint.port}"


def _error_text(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error", ""))[:200]
    except (ValueError, AttributeError):
        return response.text[:200]


async def _from_database(settings: Settings) -> Status:
    policy = load_policy(settings.policy.dir)
    db = Database(settings.storage.url)
    try:
        return await database_status(db, policy, pools_from(settings), datetime.now(UTC))
    finally:
        await db.close()


# -- rendering (pure: a Status in, tables out) ------------------------------------------------

def render_text(data: dict[str, Any], width: int = 120) -> str:
    """The tables as plain text (no colours): what `gateway status` prints, for tests and pipes."""
    out = io.StringIO()
    console = Console(file=out, width=width, color_system=None, force_terminal=False, highlight=False)
    show(console, Status.model_validate(data))
    return out.getvalue()


def show(console: Console, status: Status) -> None:
    for part in renderables(status):
        console.print(part)


def renderables(status: Status) -> list[RenderableType]:
    now = status.generated_at
    where = f"node {status.node}" if status.node else "database only (gateway not reached)"
    parts: list[RenderableType] = [Text(f"gateway status at {_when(now)} UTC, {where}", style="bold")]
    parts.append(_queue_table(status, now))
    if status.providers is not None:
        parts.append(_providers_table(status, now))
    if status.suspensions is not None:
        parts.append(_suspensions_table(status, now))
    parts.append(_warmup_table(status))
    parts.append(_campaigns_table(status, now))
    parts.append(Text(f"webhook backlog: {status.webhook_backlog} event(s) waiting; "
                      f"unapplied feedback: {status.feedback_unapplied} record(s)"))
    return parts


def _table(title: str, columns: Iterable[str], right: Iterable[str] = ()) -> Table:
    table = Table(title=title, title_justify="left", title_style="bold")
    aligned = set(right)
    for column in columns:
        if column == "WHY":  # the long one: wraps, and keeps a readable width on a narrow screen
            table.add_column(column, overflow="fold", min_width=30)
        else:
            table.add_column(column, justify="right" if column in aligned else "left", no_wrap=True)
    return table


def _queue_table(status: Status, now: datetime) -> RenderableType:
    queue = status.queue
    if not queue.total:
        return Text("queue: empty")
    more = "+" if queue.capped else ""
    states = ", ".join(f"{count}{'+' if state in queue.capped else ''} {state}"
                       for state, count in sorted(queue.by_state.items()))
    table = _table(f"queue: {queue.total}{more} deliveries ({states})",
                   ["PROVIDER", "STATE", "COUNT", "OLDEST DUE (UTC)"], right=["COUNT"])
    for group in sorted(queue.groups, key=lambda g: (g.provider, g.state)):
        table.add_row(group.provider or "(not routed yet)", group.state,
                      f"{group.count}{'+' if group.state in queue.capped else ''}",
                      "-" if group.state == "held" else _when(group.oldest_due, now))
    if not queue.capped:
        return table
    return Group(table, Text(f"{' and '.join(queue.capped)}: the {queue.scan_limit} soonest due counted; "
                             "gateway_queue_deliveries has the totals"))


def _providers_table(status: Status, now: datetime) -> RenderableType:
    """Only providers with something to show: a dozen idle profiles would hide the busy one."""
    busy = [p for p in status.providers or [] if p.connections or p.paused_until or p.slowed]
    if not busy:
        return Text("providers (this node): no open connections, pauses or slow-downs")
    table = _table("providers (this node)", ["PROVIDER", "CONNECTIONS", "BY SOURCE IP", "PAUSED UNTIL",
                                             "SLOWED"], right=["CONNECTIONS"])
    for p in busy:
        table.add_row(p.provider, str(p.connections),
                      ", ".join(f"{ip or 'OS-chosen'}: {n}" for ip, n in sorted(p.connections_by_ip.items())),
                      _when(p.paused_until, now) if p.paused_until else "",
                      ", ".join(f"{ip or 'OS-chosen'}: {what}" for ip, what in sorted(p.slowed.items())))
    return table


def _suspensions_table(status: Status, now: datetime) -> RenderableType:
    if not status.suspensions:
        return Text("suspensions: none")
    table = _table("suspensions", ["SOURCE IP", "PROVIDER", "UNTIL (UTC)", "WHY"])
    for s in status.suspensions:
        table.add_row(s.source_ip or "OS-chosen", s.provider, _when(s.until, now),
                      s.reason or "(suspended by another node)")
    return table


def _warmup_table(status: Status) -> RenderableType:
    if not status.warmup:
        return Text("warm-up: no IP is warming up")
    table = _table("warm-up (today, UTC)", ["SOURCE IP", "PROVIDER", "DAY", "CAP", "SENT TODAY", "HELD DAYS"],
                   right=["DAY", "CAP", "SENT TODAY", "HELD DAYS"])
    for w in status.warmup:
        table.add_row(w.source_ip, w.provider, str(w.day), "unlimited" if w.cap is None else str(w.cap),
                      str(w.sent_today), str(w.held_days))
    return table


def _campaigns_table(status: Status, now: datetime) -> RenderableType:
    if not status.paused_campaigns:
        return Text("paused campaigns: none")
    table = _table("paused campaigns (`gateway campaign resume NAME`)",
                   ["CAMPAIGN", "REASON", "BY", "SINCE (UTC)", "HELD", "WHY"], right=["HELD"])
    for c in status.paused_campaigns:
        table.add_row(c.campaign, c.reason, c.changed_by, _when(c.changed_at, now), str(c.held), c.detail)
    return table


def _when(at: datetime, now: datetime | None = None) -> str:
    """UTC time, with how far it is from ``now`` ("3m ago", "in 40s")."""
    text = f"{at.astimezone(UTC):%Y-%m-%d %H:%M:%S}"
    if now is None:
        return text
    seconds = int((at - now).total_seconds())
    if seconds > 0:
        return f"{text} (in {_span(seconds)})"
    if seconds < 0:
        return f"{text} ({_span(-seconds)} ago)"
    return f"{text} (now)"


def _span(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
