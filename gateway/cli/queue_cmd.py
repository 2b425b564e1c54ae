"""`gateway queue list|show|retry|hold|release|purge` and `gateway trace`: read and steer the queue."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.config.loader import load_settings
from gateway.records import QUEUE_STATES, DeliveryState
from gateway.shaping.pools import pool_names_by_ip
from gateway.storage import queue_store, tally
from gateway.storage.database import create_engine

T = TypeVar("T")
AddConfig = Callable[[argparse.ArgumentParser], None]

# Actions that stop mail: without a filter they need --all, as `postsuper -d ALL` does.
_NEED_ALL = frozenset({"hold", "purge"})
# verb -> (help, what the count printed afterwards says); the states each applies to are
# queue_store.ACTION_STATES
_ACTIONS = {
    "retry": ("make waiting deliveries due now", "made due now"),
    "hold": ("keep waiting deliveries in the queue without sending them, until released", "held"),
    "release": ("send held deliveries again (due now)", "released"),
    "purge": ("give up on deliveries still in the queue (they become expired)", "purged"),
}


def add_parsers(verbs: Any, add_config: AddConfig) -> None:
    queue = verbs.add_parser("queue", help="inspect and steer deliveries still in the queue")
    actions = queue.add_subparsers(dest="queue_verb", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="deliveries still in the queue, soonest due first")
    listing.add_argument("--limit", type=int, default=50)
    _add_filters(listing, "list")
    for name, (text, _) in _ACTIONS.items():
        action = actions.add_parser(name, help=text)
        _add_filters(action, name)
        if name in _NEED_ALL:
            action.add_argument("--all", action="store_true",
                                help="every delivery in the queue (needed when no other filter is given)")
    for action in actions.choices.values():
        add_config(action)
    show = actions.add_parser("show", help="one message and each of its deliveries, in any state")
    show.add_argument("queue_id", metavar="QUEUE-ID")
    add_config(show)
    trace = verbs.add_parser("trace", help="every recorded step of a message or an address")
    trace.add_argument("key", metavar="ID-or-ADDRESS",
                       help="queue id, Message-ID header value, or recipient address")
    add_config(trace)


def _add_filters(action: argparse.ArgumentParser, verb: str) -> None:
    """The same filters for every action; given together, a delivery must match them all."""
    states = ", ".join(sorted(state.value for state in queue_store.ACTION_STATES[verb]))
    action.add_argument("--id", dest="queue_id", metavar="QUEUE-ID", help="only this message")
    action.add_argument("--domain", help="only recipients at this domain")
    action.add_argument("--provider", metavar="NAME",
                        help="only deliveries last routed to this provider profile (e.g. gmail)")
    action.add_argument("--campaign", metavar="NAME",
                        help='only this campaign (X-Gateway-Campaign; "" for mail without one)')
    action.add_argument("--state", dest="states", action="append", metavar="STATE",
                        help=f"only deliveries in this state, repeatable ({states}; default: all of them)")


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    if args.verb == "trace":
        pools = pool_names_by_ip(settings)
        return _print_trace(_with_db(settings.storage.url,
                                     lambda c: queue_store.trace(c, args.key, pool_of=pools)), args.key)
    if args.queue_verb == "show":
        return _print_message(_with_db(settings.storage.url,
                                       lambda c: queue_store.show_message(c, args.queue_id)), args.queue_id)
    filters = {"queue_id": args.queue_id, "domain": args.domain, "provider": args.provider,
               "campaign": args.campaign, "states": args.states}
    if args.queue_verb == "list":
        if args.limit < 1:
            raise ValueError("--limit must be at least 1")
        entries = _with_db(settings.storage.url, lambda c: queue_store.list_queue(
            c, **filters, limit=args.limit + 1))  # one more: says whether the list goes on
        _print_list(entries[:args.limit])
        if len(entries) > args.limit:
            print(f"... more: the first {args.limit} shown (--limit N, or narrow with the filters)")
        return 0
    narrowed = any(value is not None for name, value in filters.items() if name != "states")
    if args.queue_verb in _NEED_ALL and not narrowed and not args.all:
        raise ValueError(f"queue {args.queue_verb} needs --id, --domain, --provider or --campaign, "
                         "or --all for the whole queue")
    change = {"retry": queue_store.retry_now, "hold": queue_store.hold, "release": queue_store.release,
              "purge": queue_store.purge}[args.queue_verb]
    now = datetime.now(UTC)
    count = _with_db(settings.storage.url, lambda c: change(c, now, **filters), write=True)
    print(f"{count} deliveries {_ACTIONS[args.queue_verb][1]}")
    return 0


def _with_db(url: str, op: Callable[[AsyncConnection], Awaitable[T]], *, write: bool = False) -> T:
    async def go() -> T:
        engine = create_engine(url)
        try:
            if not write:
                async with engine.connect() as conn:
                    return await op(conn)
            async with engine.connect() as conn:
                async with conn.begin():
                    result = await op(conn)
                tally.settle(conn)  # counted in this process only: see docs/operations.md, Metrics
                return result
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
              f"{_due(e):19}  {e.recipient}")
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
        when = _when(d)
        print(f"  {d.recipient}: {d.state}, {d.attempts} attempt(s), provider "
              f"{d.provider or _NO_PROVIDER}, {when}")
        if d.last_reply:
            print(f"    last reply: {d.last_reply[:300]}")
    return 0


def _due(entry: queue_store.DeliveryView) -> str:
    if entry.state == DeliveryState.HELD:
        return "(until released)"
    return f"{entry.next_attempt_at:%Y-%m-%d %H:%M:%S}"


def _when(delivery: queue_store.DeliveryView) -> str:
    if delivery.state == DeliveryState.HELD:
        return "held until released (queue release, or campaign resume)"
    if delivery.state in QUEUE_STATES:
        return f"next attempt {delivery.next_attempt_at:%Y-%m-%d %H:%M:%S} UTC"
    return "final"


def _print_trace(rows: list[queue_store.TraceRow], key: str) -> int:
    if not rows:
        print(f"nothing recorded for {key}")
        return 1
    for row in rows:
        who = f" {row.recipient}:" if row.recipient else ""
        print(f"{row.at:%Y-%m-%d %H:%M:%S} {row.queue_id} {row.kind:9}{who} {row.detail}")
    return 0
