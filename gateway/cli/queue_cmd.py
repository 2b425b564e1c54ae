"""`gateway queue list|show|retry|purge` and `gateway trace`: read and steer the queue."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.config.loader import load_settings
from gateway.records import PENDING_STATES
from gateway.storage import queue_store
from gateway.storage.database import create_engine

T = TypeVar("T")
AddConfig = Callable[[argparse.ArgumentParser], None]


def add_parsers(verbs: Any, add_config: AddConfig) -> None:
    queue = verbs.add_parser("queue", help="inspect and steer pending deliveries")
    actions = queue.add_subparsers(dest="queue_verb", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="pending deliveries, soonest due first")
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--provider", metavar="NAME",
                         help="only deliveries last routed to this provider profile (e.g. gmail)")
    listing.add_argument("--state", choices=[s.value for s in sorted(PENDING_STATES)],
                         help="only queued (not tried yet) or deferred (waiting for a retry) deliveries")
    for name, text in (("retry", "make pending deliveries due now"),
                       ("purge", "give up on pending deliveries (they become expired)")):
        action = actions.add_parser(name, help=text)
        action.add_argument("--id", dest="queue_id", help="only this queue id")
    for action in actions.choices.values():
        add_config(action)
        action.add_argument("--domain", help="only recipients at this domain")
    show = actions.add_parser("show", help="one message and each of its deliveries, in any state")
    show.add_argument("queue_id", metavar="QUEUE-ID")
    add_config(show)
    trace = verbs.add_parser("trace", help="every recorded step of a message or an address")
    trace.add_argument("key", metavar="ID-or-ADDRESS",
                       help="queue id, Message-ID header value, or recipient address")
    add_config(trace)


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    if args.verb == "trace":
        return _print_trace(_with_db(settings.storage.url, lambda c: queue_store.trace(c, args.key)),
                            args.key)
    if args.queue_verb == "list":
        if args.limit < 1:
            raise ValueError("--limit must be at least 1")
        states = [args.state] if args.state else [s.value for s in PENDING_STATES]
        return _print_list(_with_db(settings.storage.url, lambda c: queue_store.list_queue(
            c, domain=args.domain, provider=args.provider, states=states, limit=args.limit)))
    if args.queue_verb == "show":
        return _print_message(_with_db(settings.storage.url,
                                       lambda c: queue_store.show_message(c, args.queue_id)), args.queue_id)
    now = datetime.now(UTC)
    change = queue_store.retry_now if args.queue_verb == "retry" else queue_store.purge
    count = _with_db(settings.storage.url, lambda c: change(
        c, now, queue_id=args.queue_id, domain=args.domain), write=True)
    print(f"{count} deliveries {'made due now' if args.queue_verb == 'retry' else 'purged'}")
    return 0


def _with_db(url: str, op: Callable[[AsyncConnection], Awaitable[T]], *, write: bool = False) -> T:
    async def go() -> T:
        engine = create_engine(url)
        try:
            async with (engine.begin() if write else engine.connect()) as conn:
                return await op(conn)
        finally:
            await engine.dispose()
    return asyncio.run(go())


_NO_PROVIDER = "-"  # not routed yet: no attempt or postponement so far


def _print_list(entries: list[queue_store.DeliveryView]) -> int:
    if not entries:
        print("queue is empty")
        return 0
    print(f"{'QUEUE ID':26}  {'STATE':8}  {'TRIES':>5}  {'PROVIDER':12}  {'NEXT ATTEMPT (UTC)':19}  "
          "RECIPIENT / LAST REPLY")
    for e in entries:
        print(f"{e.queue_id:26}  {e.state:8}  {e.attempts:>5}  {e.provider or _NO_PROVIDER:12}  "
              f"{e.next_attempt_at:%Y-%m-%d %H:%M:%S}  {e.recipient}")
        if e.last_reply:
            print(f"{'':80}{e.last_reply[:120]}")
    return 0


def _print_message(message: queue_store.MessageView | None, queue_id: str) -> int:
    if message is None:
        print(f"no message with queue id {queue_id}")
        return 1
    print(f"queue id: {message.queue_id}")
    print(f"received: {message.received_at:%Y-%m-%d %H:%M:%S} UTC from <{message.mail_from}>, "
          f"stream {message.stream}, {len(message.deliveries)} recipient(s)")
    for d in message.deliveries:
        pending = d.state in {s.value for s in PENDING_STATES}
        when = f"next attempt {d.next_attempt_at:%Y-%m-%d %H:%M:%S} UTC" if pending else "final"
        print(f"  {d.recipient}: {d.state}, {d.attempts} attempt(s), provider "
              f"{d.provider or _NO_PROVIDER}, {when}")
        if d.last_reply:
            print(f"    last reply: {d.last_reply[:300]}")
    return 0


def _print_trace(rows: list[queue_store.TraceRow], key: str) -> int:
    if not rows:
        print(f"nothing recorded for {key}")
        return 1
    for row in rows:
        who = f" {row.recipient}" if row.recipient else ""
        print(f"{row.at:%Y-%m-%d %H:%M:%S} {row.queue_id} {row.kind:9}{who}: {row.detail}")
    return 0
