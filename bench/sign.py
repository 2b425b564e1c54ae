"""DKIM signing cost per message: dkimpy alone against the gateway's signing path.

For each algorithm (RSA-2048, Ed25519) this times, in microseconds per message:

- ``dkimpy_full``: ``dkim.sign`` on the whole message (relaxed/relaxed, the gateway's
  header list). dkimpy does RSA in pure Python, so it runs on at most ``--dkimpy-cap``
  messages per round; the others run on ``--messages``.
- ``gateway_first_copy``: ``split_message`` + ``signer.body_hash`` + ``signer.sign``, what
  the first recipient's copy of a message costs.
- ``gateway_per_copy``: ``split_message`` + ``signer.sign`` with the body hash cached, what
  each further recipient's copy of the same message costs.
- ``raw_signature``: the private-key operation alone on a SHA-256 digest (the floor).
- ``body_hash_only``: ``signer.body_hash`` alone.

Messages are generated here: realistic headers (List-Unsubscribe pair, Feedback-ID, ...)
and a body of varied text lines, some with trailing spaces, CRLF line endings, ``--size``
bytes in all. Each copy has its own To, Message-ID and unsubscribe link; the body is shared.
Every figure is the median over ``--repeat`` rounds; the garbage collector is off during the
timed loops. Before timing, the bench checks once that the gateway's DKIM-Signature equals
dkimpy's byte for byte for the same timestamp (``byte_identical`` in the JSON).

Prints one JSON object and a summary line:
    python -m bench.sign --messages 2000 --size 10240 --repeat 3
"""

from __future__ import annotations

import argparse
import base64
import gc
import hashlib
import json
import os
import platform
import random
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import format_datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any
from unittest import mock

import dkim
from cryptography.hazmat.backends.openssl.backend import backend as openssl_backend
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from gateway.rewrite.headers import split_message
from gateway.signing import keys, signer

DOMAIN = "example.com"
SELECTOR = "s1"
FIXED_TIME = 1_790_000_000  # the t= both signers get in the byte-for-byte check
ALGORITHMS: tuple[tuple[str, keys.Algorithm], ...] = (("rsa-2048", "rsa"), ("ed25519", "ed25519"))
FIGURES = ("dkimpy_full", "gateway_first_copy", "gateway_per_copy", "raw_signature", "body_hash_only")

WORDS = (
    "invoice", "order", "shipment", "account", "update", "weekly", "digest", "team", "garden",
    "winter", "spring", "harvest", "recipe", "workshop", "ticket", "seat", "venue", "schedule",
    "reminder", "renewal", "plan", "member", "coupon", "discount", "offer", "store", "delivery",
    "courier", "parcel", "tracking", "window", "morning", "evening", "review", "rating",
    "feedback", "survey", "thanks", "welcome", "library", "chapter", "volume", "edition", "author",
    "reader", "notes", "draft", "summary", "report", "quarter", "budget", "meeting", "agenda",
    "minutes", "project", "milestone", "release", "version", "changelog", "support", "question",
    "answer", "bicycle", "route", "trail", "weather", "forecast", "coastal", "mountain", "river",
    "bridge", "station", "platform", "timetable", "the", "a", "an", "of", "to", "in", "for", "on",
    "with", "from", "by", "at", "and", "or", "but", "if", "then", "so", "as", "is", "are", "was",
    "will", "can", "may",
)


def build_body(rng: random.Random, length: int) -> bytes:
    """Paragraphs of text lines up to ~80 characters, some with trailing spaces, exactly ``length`` bytes."""
    lines: list[str] = []
    total = 0
    paragraph = rng.randint(3, 8)
    while True:
        if paragraph == 0:
            line, paragraph = "", rng.randint(3, 8)
        else:
            words = [rng.choice(WORDS)]
            width = rng.randint(36, 74)
            while len(" ".join(words)) < width:
                words.append(rng.choice(WORDS))
            line = " ".join(words).capitalize() + rng.choice((".", ",", "", "", ";", ":"))
            if rng.random() < 0.2:
                line += " " * rng.randint(1, 3)  # relaxed body canonicalization removes these
            paragraph -= 1
        if total + len(line) + 2 > length:
            break
        lines.append(line)
        total += len(line) + 2
    room = length - total
    if lines and not lines[-1]:  # end on text, not on a paragraph break
        lines.pop()
        room += 2
    if room >= 3 or not lines:  # a last line fills the rest exactly
        text = " ".join(rng.choice(WORDS) for _ in range(room // 2 + 1))[: room - 1]  # 1 over: cut at a word
        filler = text.rsplit(" ", 1)[0] if " " in text else text[: room - 2]
        lines.append(filler.capitalize().ljust(room - 2, "."))
    else:
        lines[-1] += "." * room
    return "".join(line + "\r\n" for line in lines).encode("ascii")


def build_head(n: int) -> bytes:
    token = hashlib.sha256(f"unsubscribe {n}".encode()).hexdigest()[:32]
    date = format_datetime(datetime(2026, 11, 24, 9, 30, n % 60, tzinfo=UTC))
    return (
        f"From: Garden Club News <news@{DOMAIN}>\r\n"
        f"To: Reader {n:06d} <reader{n:06d}@mail.example.net>\r\n"
        "Subject: Your weekly digest: spring planting, workshop seats and route updates\r\n"
        f"Date: {date}\r\n"
        f"Message-ID: <digest-2026-47.{n:06d}.a1b2c3@{DOMAIN}>\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 7bit\r\n"
        f"List-Unsubscribe: <https://lists.{DOMAIN}/u/{token}>,\r\n"
        f" <mailto:unsubscribe+{token}@lists.{DOMAIN}>\r\n"
        "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
        "Feedback-ID: digest-47:weekly:newsletter:garden-club\r\n"
        "\r\n"
    ).encode("ascii")


def build_messages(count: int, size: int) -> list[bytes]:
    """``count`` copies of one message: personal headers, one shared body, ``size`` bytes each."""
    head_length = len(build_head(0))  # every copy's head has the same length (fixed-width numbers)
    body = build_body(random.Random(20261124), max(size - head_length, 80))
    return [build_head(n) + body for n in range(count)]


def dkimpy_private_key(private: keys.PrivateKey) -> bytes:
    """PKCS#1 PEM for RSA, base64 of the 32-byte seed for Ed25519: what ``dkim.sign`` accepts."""
    if isinstance(private, ed25519.Ed25519PrivateKey):
        return base64.b64encode(private.private_bytes(serialization.Encoding.Raw,
                                                      serialization.PrivateFormat.Raw,
                                                      serialization.NoEncryption()))
    return private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                 serialization.NoEncryption())


def per_message_us(work: Callable[[int], object], count: int) -> float:
    """Mean microseconds per call of ``work(i)`` for i in 0..count-1, collector off."""
    collecting = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        started = time.perf_counter()
        for i in range(count):
            work(i)
        elapsed = time.perf_counter() - started
    finally:
        if collecting:
            gc.enable()
    return elapsed / count * 1e6


def measure(algorithm: keys.Algorithm, messages: list[bytes], args: argparse.Namespace,
            dkimpy_count: int) -> dict[str, Any]:
    key = keys.SigningKey(DOMAIN, SELECTOR, keys.generate_key(algorithm))
    dkimpy_key = dkimpy_private_key(key.private)
    headers, body = split_message(messages[0])
    include = signer.signed_header_names(headers)
    bh = signer.body_hash(body)
    bodies = [split_message(message)[1] for message in messages]
    digests = [hashlib.sha256(message).digest() for message in messages]

    with mock.patch("dkim.time.time", return_value=float(FIXED_TIME)):
        theirs: bytes = dkim.sign(messages[0], SELECTOR.encode(), DOMAIN.encode(), dkimpy_key,
                                  canonicalize=(b"relaxed", b"relaxed"), include_headers=include,
                                  signature_algorithm=key.a_tag)
    ours = signer.sign(headers, bh, key, FIXED_TIME)

    def dkimpy_full(i: int) -> None:
        dkim.sign(messages[i], SELECTOR.encode(), DOMAIN.encode(), dkimpy_key,
                  canonicalize=(b"relaxed", b"relaxed"), include_headers=include,
                  signature_algorithm=key.a_tag)

    def gateway_first_copy(i: int) -> None:
        fields, text = split_message(messages[i])
        signer.sign(fields, signer.body_hash(text), key, int(time.time()))

    def gateway_per_copy(i: int) -> None:
        fields, _ = split_message(messages[i])
        signer.sign(fields, bh, key, int(time.time()))

    def raw_signature(i: int) -> None:
        key.sign_digest(digests[i])

    def body_hash_only(i: int) -> None:
        signer.body_hash(bodies[i])

    work: dict[str, tuple[Callable[[int], object], int]] = {
        "dkimpy_full": (dkimpy_full, dkimpy_count),
        "gateway_first_copy": (gateway_first_copy, args.messages),
        "gateway_per_copy": (gateway_per_copy, args.messages),
        "raw_signature": (raw_signature, args.messages),
        "body_hash_only": (body_hash_only, args.messages),
    }
    for function, count in work.values():  # warm-up: imports, caches, CPU frequency
        per_message_us(function, min(count, 20))
    rounds: dict[str, list[float]] = {name: [] for name in FIGURES}
    for _ in range(args.repeat):  # interleaved, so drift on a shared machine hits every figure alike
        for name, (function, count) in work.items():
            rounds[name].append(per_message_us(function, count))
    result: dict[str, Any] = {name: round(statistics.median(rounds[name]), 1) for name in FIGURES}
    result["speedup_vs_dkimpy"] = round(result["dkimpy_full"] / result["gateway_first_copy"], 1)
    result["copies_per_second_one_core"] = round(1e6 / result["gateway_per_copy"])
    result["rounds_us"] = {name: [round(value, 1) for value in rounds[name]] for name in FIGURES}
    result["byte_identical"] = ours == theirs
    if ours != theirs:
        result["ours"], result["dkimpy"] = ours.decode("ascii"), theirs.decode("ascii")
    return result


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def run(args: argparse.Namespace) -> dict[str, Any]:
    messages = build_messages(args.messages, args.size)
    dkimpy_count = min(args.messages, args.dkimpy_cap)
    algorithms = {label: measure(algorithm, messages, args, dkimpy_count)
                  for label, algorithm in ALGORITHMS}
    return {
        "benchmark": "sign",
        "unit": "microseconds per message, median of rounds",
        "messages": args.messages, "size": args.size, "message_bytes": len(messages[0]),
        "repeat": args.repeat,
        "dkimpy_messages_per_round": dkimpy_count,
        "dkimpy_note": f"dkimpy_full is timed on min(messages, {args.dkimpy_cap}) messages per round "
                       "(pure-Python RSA); every other figure on all messages",
        "canonicalization": "relaxed/relaxed",
        "signed_headers": [name.decode("ascii") for name in
                           signer.signed_header_names(split_message(messages[0])[0])],
        "byte_identical": all(figures["byte_identical"] for figures in algorithms.values()),
        "algorithms": algorithms,
        "machine": {"processor": platform.processor(), "machine": platform.machine(),
                    "cpu_model": cpu_model(), "cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "libraries": {"dkimpy": version("dkimpy"), "cryptography": version("cryptography"),
                      "openssl": openssl_backend.openssl_version_text()},
    }


def summary(result: dict[str, Any]) -> str:
    parts = [f"{label} dkimpy {fig['dkimpy_full']:.0f} us, gateway {fig['gateway_first_copy']:.0f} us "
             f"first copy / {fig['gateway_per_copy']:.0f} us per further copy "
             f"({fig['speedup_vs_dkimpy']}x)"
             for label, fig in result["algorithms"].items()]
    identical = "yes" if result["byte_identical"] else "NO"
    return (f"sign: {'; '.join(parts)}; byte-identical to dkimpy: {identical} "
            f"({result['messages']} x {result['message_bytes']} B, "
            f"dkimpy on {result['dkimpy_messages_per_round']}, median of {result['repeat']} rounds)")


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=positive, default=2000, help="messages per round")
    parser.add_argument("--size", type=positive, default=10240,
                        help="bytes per message (at least the header block plus an 80-byte body)")
    parser.add_argument("--repeat", type=positive, default=3, help="rounds; figures are their median")
    parser.add_argument("--dkimpy-cap", type=positive, default=200,
                        help="at most this many messages per round for dkimpy_full (it is slow)")
    args = parser.parse_args()
    result = run(args)
    print(json.dumps(result))
    print(summary(result))


if __name__ == "__main__":
    main()
