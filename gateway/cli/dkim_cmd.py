"""`gateway dkim keygen|rotate|show`: make DKIM keys and the DNS records that publish them."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.config.loader import load_settings
from gateway.config.schema import SendingDomain, dkim_selector, domain_name
from gateway.signing import keys

AddConfig = Callable[[argparse.ArgumentParser], None]


def add_parsers(verbs: Any, add_config: AddConfig) -> None:
    dkim = verbs.add_parser("dkim", help="DKIM keys and their DNS records")
    actions = dkim.add_subparsers(dest="dkim_verb", required=True, metavar="ACTION")

    keygen = actions.add_parser("keygen", help="write a new private key, print its DNS TXT record")
    keygen.add_argument("domain", metavar="DOMAIN")
    keygen.add_argument("--selector", required=True)
    _key_options(keygen)
    keygen.add_argument("--key-file", type=Path,
                        help="where to write the key (default keys/DOMAIN.SELECTOR.pem)")

    rotate = actions.add_parser("rotate", help="prepare a new selector while the current one keeps signing")
    rotate.add_argument("domain", metavar="DOMAIN")
    rotate.add_argument("--selector", help="the new selector (default: sYYYYMM)")
    _key_options(rotate)
    add_config(rotate)

    show = actions.add_parser("show", help="print the DNS TXT records of a domain's configured keys")
    show.add_argument("domain", metavar="DOMAIN")
    add_config(show)


def _key_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--algorithm", choices=["rsa", "ed25519"], default="rsa")
    parser.add_argument("--bits", type=int, default=keys.DEFAULT_RSA_BITS,
                        help=f"RSA key size, {keys.MIN_RSA_BITS} to {keys.MAX_RSA_BITS}")


def run(args: argparse.Namespace) -> int:
    domain = domain_name(args.domain)
    if args.dkim_verb == "keygen":
        selector = dkim_selector(args.selector)
        path = args.key_file or Path("keys") / f"{domain}.{selector}.pem"
        key = _write_new_key(path, args.algorithm, args.bits)
        print(_record_text(domain, selector, key, path))
        print(f"; then add to the [[domains]] entry for {domain}:\n;   dkim = "
              f"[{_toml_entry(selector, args.algorithm, path, sign=True)}]")
        return 0
    configured = _configured(args, domain)
    if args.dkim_verb == "show":
        for entry in configured.dkim:
            key = keys.load_private_key(entry.key_file, entry.algorithm)
            state = "signing" if entry.sign else "not signing"
            print(f"; {entry.selector} ({entry.algorithm}, {state}, {entry.key_file})")
            print(keys.zone_record(entry.selector, domain, key))
        return 0
    return _rotate(args, configured)


def _rotate(args: argparse.Namespace, configured: SendingDomain) -> int:
    domain = configured.name
    current = [k for k in configured.dkim if k.sign and k.algorithm == args.algorithm]
    selector = dkim_selector(args.selector or datetime.now(UTC).strftime("s%Y%m"))
    if any(entry.selector == selector for entry in configured.dkim):
        raise ValueError(f"selector {selector} is already configured for {domain}; pass --selector")
    directory = current[0].key_file.parent if current else Path("keys")
    path = directory / f"{domain}.{selector}.pem"
    key = _write_new_key(path, args.algorithm, args.bits)
    old = current[0].selector if current else None
    print(_record_text(domain, selector, key, path))
    print("; rotation steps:")
    print(f";  1. publish the record above; {old or 'the current key'} keeps signing meanwhile")
    print(f";  2. add to the [[domains]] entry for {domain}: "
          f"{_toml_entry(selector, args.algorithm, path, sign=False)}")
    print(";  3. once the record resolves everywhere (a day is safe), set sign = true on "
          f"{selector}" + (f" and sign = false on {old}" if old else "") +
          ", then restart the gateway (keys are read at start)")
    if old:
        print(f";  4. keep {old}'s record published about a week for mail still in transit, then remove it")
    return 0


def _configured(args: argparse.Namespace, domain: str) -> SendingDomain:
    settings = load_settings(args.config)
    for entry in settings.domains:
        if entry.name == domain:
            return entry
    raise ValueError(f"{domain} is not in [[domains]] of the configuration")


def _write_new_key(path: Path, algorithm: keys.Algorithm, bits: int) -> keys.PrivateKey:
    key = keys.generate_key(algorithm, bits)
    keys.write_private_file(path, keys.private_pem(key))
    return key


def _record_text(domain: str, selector: str, key: keys.PrivateKey, path: Path) -> str:
    return (f"; wrote {path} (mode 0600). DNS record to publish:\n"
            f"{keys.zone_record(selector, domain, key)}")


def _toml_entry(selector: str, algorithm: str, path: Path, *, sign: bool) -> str:
    return (f'{{ selector = "{selector}", algorithm = "{algorithm}", key_file = "{path}", '
            f'sign = {"true" if sign else "false"} }}')
