"""`gateway campaign list|show|pause|resume`: campaigns, their reputation figures, and the
circuit breakers' pauses (docs/reputation.md)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from gateway.config.loader import load_settings
from gateway.config.policy import Reputation, load_policy
from gateway.config.units import KEY_RULE, is_key
from gateway.feedback import reputation
from gateway.feedback.breakers import COMPLAINT, HARD_BOUNCE, Tally, duration_text, percent
from gateway.feedback.reputation import CampaignFigures
from gateway.storage.database import Database

T = TypeVar("T")
AddConfig = Callable[[argparse.ArgumentParser], None]
MAX_NAME = 64


def add_parsers(verbs: Any, add_config: AddConfig) -> None:
    campaign = verbs.add_parser("campaign", help="campaigns: reputation figures, pause and resume")
    actions = campaign.add_subparsers(dest="campaign_verb", required=True, metavar="ACTION")
    add_config(actions.add_parser("list", help="paused campaigns and those sending in the window"))
    show = actions.add_parser("show", help="one campaign's figures per provider")
    pause = actions.add_parser("pause", help="hold a campaign's mail in the queue until it is resumed")
    pause.add_argument("--reason", default="", metavar="TEXT", help="why (shown by list and in the event)")
    resume = actions.add_parser("resume", help="release a paused campaign's held mail; counts start afresh")
    for action in (show, pause, resume):
        action.add_argument("name", metavar="NAME", help="the X-Gateway-Campaign value")
        add_config(action)


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    rep = load_policy(settings.policy.dir).reputation
    now = datetime.now(UTC)
    url = settings.storage.url
    if args.campaign_verb == "list":
        return _print_list(_with_db(url, lambda db: reputation.overview(db, rep, now)), rep)
    name = _name(args.name)
    if args.campaign_verb == "show":
        return _print_show(name, _with_db(url, lambda db: reputation.overview(db, rep, now, name)), rep)
    if args.campaign_verb == "pause":
        held = _with_db(url, lambda db: reputation.pause(db, name, note=args.reason.strip()[:500], by="cli",
                                                          now=now))
        if held is None:
            print(f"gateway: campaign {name} is already paused (see `gateway campaign show {name}`)",
                  file=sys.stderr)
            return 1
        print(f"campaign {name} paused: {held} queued copies held; new mail is held too until "
              f"`gateway campaign resume {name}`")
        return 0
    released = _with_db(url, lambda db: reputation.resume(db, name, by="cli", now=now))
    if released is None:
        print(f"gateway: campaign {name} is not paused", file=sys.stderr)
        return 1
    print(f"campaign {name} resumed: {released} held copies released; its reputation counts start afresh")
    return 0


def _name(value: str) -> str:
    name = value.strip()
    if not name:
        raise ValueError("a campaign name is required (mail without X-Gateway-Campaign is never paused)")
    if len(name) > MAX_NAME:
        raise ValueError(f"campaign name longer than {MAX_NAME} characters")
    if not is_key(name):  # as X-Gateway-Campaign takes it: no mail carries any other name
        raise ValueError(f"not a campaign name {name!r}: {KEY_RULE}")
    return name


def _with_db(url: str, op: Callable[[Database], Awaitable[T]]) -> T:
    async def go() -> T:
        db = Database(url)
        await db.start()
        try:
            return await op(db)
        finally:
            await db.close()
    return asyncio.run(go())


def _rate(tally: Tally, kind: str) -> str:
    rate = tally.rate(HARD_BOUNCE if kind == HARD_BOUNCE else COMPLAINT)
    return "-" if rate is None else percent(rate)


def _state(figures: CampaignFigures) -> str:
    return "paused" if figures.paused else "running"


def _print_list(found: list[CampaignFigures], rep: Reputation) -> int:
    window = duration_text(timedelta(seconds=rep.window))
    if not found:
        print(f"no paused campaign and no campaign mail answered in the last {window}")
        return 0
    rows = [("CAMPAIGN", "STATE", "HELD", f"SENT ({window})", "HARD", "COMPLAINTS", "REASON")]
    rows += [(f.campaign, _state(f), str(f.held), str(f.whole.sent), _rate(f.whole, HARD_BOUNCE),
              _rate(f.whole, COMPLAINT), f"{f.reason}: {f.detail}" if f.paused else "") for f in found]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1])
    return 0


def _print_show(name: str, found: list[CampaignFigures], rep: Reputation) -> int:
    window = duration_text(timedelta(seconds=rep.window))
    if not found:
        print(f"gateway: no campaign {name}: never paused and no answered mail in the last {window}",
              file=sys.stderr)
        return 1
    figures = found[0]
    print(f"campaign {name}: {_state(figures)}, {figures.held} copies held")
    if figures.paused:
        print(f"  paused ({figures.reason}): {figures.detail}")
    streams = ", ".join(figures.streams) or "-"
    print(f"  last {window} (stream {streams}; breakers {'on' if rep.enabled else 'off'} for "
          f"{', '.join(rep.streams)}):")
    rows = [("PROVIDER", "SENT", "HARD", "HARD %", "COMPLAINTS", "COMPLAINT %")]
    for provider, tally in [*sorted(figures.providers.items()), ("all", figures.whole)]:
        rows.append((provider or "(unrouted)", str(tally.sent), str(tally.hard), _rate(tally, HARD_BOUNCE),
                     str(tally.complaints), _rate(tally, COMPLAINT)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0
