"""Parsers for the human-friendly values used in TOML config and policy files.

Operators write "25MB", "5m" or "127.0.0.1:2525"; every parser here turns such a
string into a plain value or raises ``ValueError`` with a message that says what
form was expected, so the loader can report it next to the key and line.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

_SIZE_UNITS = {
    "": 1,
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "KIB": 1024,
    "MIB": 1024**2,
    "GIB": 1024**3,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION_PART_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def parse_size(text: str | int) -> int:
    """Bytes from "25MB", "512KiB" or a bare integer (bytes)."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ValueError("size must not be negative")
        return text
    if not isinstance(text, str):
        raise ValueError("expected a size such as \"25MB\" or an integer number of bytes")
    match = _SIZE_RE.match(text)
    unit = match.group(2).upper() if match else None
    if match is None or unit not in _SIZE_UNITS:
        raise ValueError(f"bad size {text!r}: expected a number with B, KB, MB, GB, KiB, MiB or GiB")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def parse_duration(text: str | int | float) -> float:
    """Seconds from "30s", "5m", "4h", "5d", "1h30m" or a bare number of seconds."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        if text < 0:
            raise ValueError("duration must not be negative")
        return float(text)
    if not isinstance(text, str):
        raise ValueError("expected a duration such as \"30s\", \"5m\", \"4h\" or \"5d\"")
    compact = text.replace(" ", "")
    parts = _DURATION_PART_RE.findall(compact)
    if not compact or "".join(n + u for n, u in parts) != compact:
        raise ValueError(f"bad duration {text!r}: expected e.g. \"30s\", \"5m\", \"4h\", \"1h30m\", \"5d\"")
    return sum(float(number) * _DURATION_UNITS[unit] for number, unit in parts)


@dataclass(frozen=True)
class HostPort:
    """A listening or connecting endpoint; IPv6 hosts are written "[::1]:25"."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_host_port(text: str, default_port: int | None = None) -> HostPort:
    """Split "host:port" ("[v6]:port"); the port may be omitted only when a default is given."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("expected \"host:port\"")
    text = text.strip()
    host, port_text = _split_host_port(text)
    if port_text is None:
        if default_port is None:
            raise ValueError(f"bad address {text!r}: expected \"host:port\"")
        return HostPort(_check_host(host, text), default_port)
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"bad port in {text!r}: expected a number from 0 to 65535")
    return HostPort(_check_host(host, text), int(port_text))


def _split_host_port(text: str) -> tuple[str, str | None]:
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"bad address {text!r}: expected \"[IPv6]:port\"")
        return host, (rest[1:] if rest else None)
    if text.count(":") > 1:
        raise ValueError(f"bad address {text!r}: write IPv6 addresses as \"[addr]:port\"")
    host, sep, port = text.partition(":")
    return host, (port if sep else None)


_HOSTNAME_RE = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9_]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?)+$")


def _check_host(host: str, original: str) -> str:
    if is_ip_address(host) or (host and _HOSTNAME_RE.match(host)):
        return host
    raise ValueError(f"bad host in {original!r}: expected an IP address or a host name")


def is_ip_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def is_hostname(text: str) -> bool:
    return bool(_HOSTNAME_RE.match(text))


# List and campaign keys: they travel in Feedback-ID (colon-separated), token MACs and
# 64-character columns, so they are plain tokens.
KEY_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
KEY_RULE = "1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"


def is_key(text: str) -> bool:
    return bool(KEY_PATTERN.fullmatch(text))
