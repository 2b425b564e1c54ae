"""DKIM signatures (RFC 6376, relaxed/relaxed) with dkimpy's canonicalization and
``cryptography``'s signing.

dkimpy signs RSA in pure Python (about 27 times slower than OpenSSL, see
docs/performance.md), so the gateway uses dkimpy for what it does well - header
selection, canonicalization, folding - and lets ``cryptography`` make the signature.
The result is byte-for-byte what ``dkim.sign`` would produce (tests prove it), so
the two stay interchangeable.

The body hash depends only on the body, which every recipient's copy shares: it is
computed once per message (:func:`body_hash`) and passed to :func:`sign` per copy.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterator, Sequence

import dkim
from dkim.canonicalization import CanonicalizationPolicy, correct_empty_body, strip_trailing_lines

from gateway.signing.keys import SigningKey

Header = tuple[bytes, bytes]  # (name, value): value as after the colon, folding and final CRLF kept

RELAXED = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
SIGNATURE_HEADER = b"DKIM-Signature"

# Signed when present (each instance). Receivers' requirements and RFC 6376 5.4.1.
SIGNED = (
    b"from", b"reply-to", b"subject", b"date", b"to", b"cc", b"message-id", b"in-reply-to",
    b"references", b"mime-version", b"content-type", b"content-transfer-encoding",
    b"list-unsubscribe", b"list-unsubscribe-post", b"list-id", b"feedback-id",
)
# Each is signed once more than present ("over-signed"): a replayed copy with one of them
# added - a second From, a Reply-To pointing elsewhere, another unsubscribe link, another
# Content-Type that changes what is shown - no longer verifies. Each occurs at most once in
# a valid message (RFC 5322 3.6), so nothing legitimate is lost.
OVERSIGNED = SIGNED


_TRAILING_WSP = re.compile(rb"[\t ]+\r\n")
_WSP_RUN = re.compile(rb"\t[\t ]*| [\t ]+")  # runs that change; a lone space stays as it is


WINDOW = 128 * 1024


def canonical_body(body: bytes | memoryview) -> bytes:
    """Relaxed body canonicalization (RFC 6376 3.4.4), equal to dkimpy's output.

    dkimpy substitutes every run of blanks, single spaces included, which costs ~270 us
    for 10 KB of text; skipping the passes that cannot change anything and leaving single
    spaces alone makes it 3 to 12 times faster. Tests compare the two on random bodies.

    Large bodies are processed in windows that end after a CRLF (blank runs never cross
    one, so the result is the same): a regular expression holds the GIL for its whole
    run, and short runs let the event loop go on while a worker thread hashes 25 MB.
    """
    canonical: bytes = correct_empty_body(strip_trailing_lines(
        b"".join(_blanks_canonical(window) for window in _windows(bytes(body)))))
    return canonical


def _windows(body: bytes) -> Iterator[bytes]:
    start, size = 0, len(body)
    while start < size:
        cut = body.rfind(b"\r\n", start, start + WINDOW) + 2 if size - start > WINDOW else size
        if cut < start + 2:  # no line end in the window: go on to the next one
            found = body.find(b"\r\n", start + WINDOW)
            cut = size if found < 0 else found + 2
        yield body[start:cut]
        start = cut


def _blanks_canonical(text: bytes) -> bytes:
    if b" \r\n" in text or b"\t\r\n" in text:
        text = _TRAILING_WSP.sub(b"\r\n", text)
    if b"\t" in text or b"  " in text:
        text = _WSP_RUN.sub(b" ", text)
    return text


def body_hash(body: bytes | memoryview) -> bytes:
    """bh= for relaxed body canonicalization and SHA-256 (the same for every copy)."""
    return base64.b64encode(hashlib.sha256(canonical_body(body)).digest())


def signed_header_names(headers: Sequence[Header]) -> list[bytes]:
    """h=: each present header of SIGNED, bottom-up order is dkimpy's, plus the over-signing."""
    names = (name.rstrip(b" \t").lower() for name, _ in headers)
    present = [name for name in names if name in SIGNED]
    return present + list(OVERSIGNED)


def sign(headers: Sequence[Header], bh: bytes, key: SigningKey, timestamp: int) -> bytes:
    """The DKIM-Signature header line (with CRLF) for a message with these headers."""
    include = signed_header_names(headers)
    domain = key.domain.encode("ascii")
    fields = [
        (b"v", b"1"),
        (b"a", key.a_tag),
        (b"c", RELAXED.to_c_value()),
        (b"d", domain),
        (b"i", b"@" + domain),
        (b"q", b"dns/txt"),
        (b"s", key.selector.encode("ascii")),
        (b"t", str(timestamp).encode("ascii")),
        (b"h", b" : ".join(include)),
        (b"bh", bh),
        (b"b", b"0" * 60),  # placeholder that makes dkimpy's folder put b= on its own line
    ]
    namelen = len(SIGNATURE_HEADER)
    unsigned = dkim.RE_BTAG.sub(b"\\1", fold(_join(fields), namelen))
    hasher = hashlib.sha256()
    dkim.hash_headers(hasher, RELAXED, RELAXED.canonicalize_headers(list(headers)), include,
                      (SIGNATURE_HEADER, b" " + unsigned), None)
    fields[-1] = (b"b", base64.b64encode(key.sign_digest(hasher.digest())))
    return SIGNATURE_HEADER + b": " + fold(_join(fields) + b"\r\n", namelen)


def fold(value: bytes, namelen: int) -> bytes:
    """Fold a tag list at spaces into lines of about 72 columns, as dkimpy's ``fold`` does.

    dkimpy breaks any token longer than a line wherever the line ends, which corrupts a
    long ``d=`` or ``i=`` (a 70-character domain is legal). Here only the final ``b=``
    value, which is base64 and may hold folding white space, is broken inside; any
    other long token stays whole on a longer line (limit 998).
    """
    limit = 72 - namelen
    if len(value) <= limit or (value.endswith(b"\r\n") and len(value) <= limit + 2):
        return value
    lines: list[bytes] = []
    rest = value
    while len(rest) > limit and not (rest.endswith(b"\r\n") and len(rest) <= limit + 2):
        cut = rest.rfind(b" ", 0, limit)
        if cut > 0:
            lines.append(rest[:cut])
            rest = rest[cut + 1:]
        elif b";" not in rest:  # inside the last tag (b=): base64, breakable anywhere
            lines.append(rest[:limit])
            rest = rest[limit:]
        else:
            cut = rest.find(b" ", limit)
            if cut < 0:
                break
            lines.append(rest[:cut])
            rest = rest[cut + 1:]
        limit = 71
    return b"\r\n ".join([*lines, rest])


def _join(fields: Sequence[tuple[bytes, bytes]]) -> bytes:
    return b"; ".join(b"=".join(field) for field in fields)
