"""`gateway` command line: parse, call a service, print. No tracebacks for user errors."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

from gateway.cli import (
    bounces_cmd,
    campaign_cmd,
    consent_cmd,
    demo_cmd,
    dkim_cmd,
    dns_cmd,
    policy_cmd,
    queue_cmd,
    status_cmd,
)
from gateway.config.loader import ConfigError, load_settings
from gateway.config.policy import load_policy
from gateway.config.schema import Settings
from gateway.feedback.classify import Classifier
from gateway.signing.keyring import KeyRing
from gateway.signing.token_keys import read_api_token, read_secret, token_codec
from gateway.smtp.passwords import hash_password
from gateway.storage.errors import StorageError


class UserError(Exception):
    """Bad input from the person at the keyboard: one line, exit 2."""


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", action="append", type=Path, required=True,
                        metavar="FILE", help="settings file; repeat to layer overrides")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__)
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    serve = verbs.add_parser("serve", help="run the SMTP intake, delivery and admin HTTP")
    _config_arg(serve)
    serve.add_argument("--log-level", default=None, choices=["debug", "info", "warning", "error"],
                       help="overrides [logging] level")
    serve.add_argument("--log-format", default=None, choices=["text", "json"],
                       help="overrides [logging] format (json: one object per line on stdout)")

    check = verbs.add_parser("check-config", help="validate settings and policy files")
    _config_arg(check)

    verbs.add_parser("passwd", help="read a password (twice on a terminal), print its hash")

    db = verbs.add_parser("db", help="database schema")
    db_verbs = db.add_subparsers(dest="db_verb", required=True, metavar="ACTION")
    upgrade = db_verbs.add_parser("upgrade", help="create or migrate the schema to this version")
    _config_arg(upgrade)

    dkim_cmd.add_parsers(verbs, _config_arg)
    dns_cmd.add_parsers(verbs, _config_arg)
    queue_cmd.add_parsers(verbs, _config_arg)
    consent_cmd.add_parsers(verbs, _config_arg)
    policy_cmd.add_parsers(verbs, _config_arg)
    bounces_cmd.add_parsers(verbs, _config_arg)
    demo_cmd.add_parsers(verbs)
    status_cmd.add_parsers(verbs, _config_arg)
    campaign_cmd.add_parsers(verbs, _config_arg)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _dispatch(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"gateway: {problem}", file=sys.stderr)
        return 2
    except UserError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    except (StorageError, OSError, RuntimeError) as exc:
        print(f"gateway: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    if args.verb == "serve":
        return _serve(args)
    if args.verb == "check-config":
        settings = load_settings(args.config)
        policy = load_policy(settings.policy.dir)
        Classifier.from_policy_dir(settings.policy.dir)  # bounce rules: refused at start if bad
        keyring = KeyRing.load(settings.domains)
        signing = sum(len(keyring.keys_for(domain.name)) for domain in settings.domains)
        if _token_keys_exist(settings):
            token_codec(settings.tokens, create=False)  # raises KeyProblem if unusable
        if settings.http.api_token_file is not None:
            read_api_token(settings.http.api_token_file)  # the same checks serve makes
        for hook in settings.webhooks:
            read_secret(hook.secret_file)  # webhook signing secrets: owner-only, 32+ bytes
        _check_pages(settings)
        print(f"ok: {len(args.config)} settings file(s), policy from {settings.policy.dir}, "
              f"{len(settings.smtp.accounts)} account(s), {len(policy.providers)} provider profile(s), "
              f"{signing} DKIM signing key(s) for {len(settings.domains)} domain(s)")
        return 0
    if args.verb == "dkim":
        return dkim_cmd.run(args)
    if args.verb == "dns":
        return dns_cmd.run(args)
    if args.verb == "demo":
        return demo_cmd.run(args)
    if args.verb == "bounces":
        return bounces_cmd.run(args)
    if args.verb == "campaign":
        return campaign_cmd.run(args)
    if args.verb == "status":
        return status_cmd.run(args)
    if args.verb in ("policy", "reload"):
        return policy_cmd.run(args)
    if args.verb in ("lists", "suppress", "contacts"):
        return consent_cmd.run(args)
    if args.verb == "passwd":
        print(hash_password(_read_password()))
        return 0
    if args.verb == "db":
        settings = load_settings(args.config)
        revision = asyncio.run(_upgrade(settings.storage.url))
        print(f"database schema at revision {revision}")
        return 0
    return queue_cmd.run(args)


async def _upgrade(url: str) -> str | None:
    from sqlalchemy.exc import SQLAlchemyError

    from gateway.storage.migrate import upgrade as do_upgrade

    try:
        return await do_upgrade(url)
    except SQLAlchemyError as exc:
        raise StorageError(f"cannot migrate {url}: {str(exc).splitlines()[0]}") from exc


def _serve(args: argparse.Namespace) -> int:
    from gateway import logs
    from gateway.runtime import serve

    settings = load_settings(args.config).logging
    logs.configure(args.log_level or settings.level, args.log_format or settings.format,
                   addresses=settings.addresses)
    _run_loop(serve(args.config))
    return 0


def _check_pages(settings: Settings) -> None:
    """The public pages' templates and message catalogs (an operator's .po files included)."""
    from gateway.web.pages import Pages

    Pages.load(settings.pages)


def _token_keys_exist(settings: Settings) -> bool:
    """Configured token keys must be readable now; the default one is made on first start."""
    return bool(settings.tokens.keys) or settings.tokens.default_secret_file.exists()


def _run_loop(main: Coroutine[Any, Any, None]) -> None:
    """uvloop where installed: about a third less CPU per SMTP session than asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)


def _read_password() -> str:
    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        if first != getpass.getpass("Again: "):
            raise UserError("the two passwords differ")
    else:
        first = sys.stdin.readline().rstrip("\r\n")
    if len(first) < 8:
        raise UserError("password too short: use at least 8 characters")
    return first
