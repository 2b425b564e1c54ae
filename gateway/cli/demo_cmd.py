"""`gateway demo`: the gateway with fake ISPs on loopback and a sample campaign (docs/demo.md)."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any


def add_parsers(verbs: Any) -> None:
    demo = verbs.add_parser(
        "demo", help="run the gateway with fake ISPs on this machine and send a sample campaign",
        description="Starts the gateway, a loopback DNS server and fake ISPs on 127.0.1.x, sends a "
                    "campaign through them and prints where to look. Needs no Internet and no setup; "
                    "every file goes under --dir, which the next run deletes. Run it from the "
                    "repository root (it copies policies/).")
    demo.add_argument("--dir", type=Path, default=Path("var/demo"), metavar="DIR",
                      help="where the demo writes its config, database and keys (default: var/demo)")
    demo.add_argument("--exit-after", type=float, metavar="SECONDS",
                      help="stop this many seconds after the run instead of waiting for Ctrl-C")
    demo.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"],
                      help="the gateway's own log on stderr (default: warning)")


def run(args: argparse.Namespace) -> int:
    from gateway.sandbox.demo import run as run_demo

    if args.exit_after is not None and args.exit_after < 0:
        raise ValueError("--exit-after must not be negative")
    return asyncio.run(run_demo(args.dir, exit_after=args.exit_after, log_level=args.log_level))
