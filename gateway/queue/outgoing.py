"""Turns a claimed delivery and its stored message into the copy that goes out.

The pure work (headers, tokens, signatures) is in rewrite/ and signing/; this adds the
state around it. A message's header section, From domain and body hash are worked out
once and shared by all its recipients, even when their deliveries start together (one
computation, the others wait for it). Bodies large enough to stall the event loop are
hashed in a worker thread.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from gateway.records import AttemptResult, ClaimedDelivery
from gateway.rewrite.copies import Copy, CopyRules, Recipient, make_copy
from gateway.rewrite.headers import (
    Header,
    HeaderProblem,
    author_domain,
    body_offset,
    header_length,
    parse_fields,
)
from gateway.rewrite.message import Controls, Stream
from gateway.rewrite.tokens import TokenCodec
from gateway.signing.keyring import KeyRing
from gateway.signing.keys import SigningKey
from gateway.signing.signer import body_hash

THREAD_HASH_BYTES = 256 * 1024  # ~0.1-2 ms of canonicalization: above this, hash in a thread
# Parsed messages kept for their next recipients. A kept entry holds its stored message
# alive, so the bound is in bytes; the spool's BodyCache decides what stays beyond that.
KEPT_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Parsed:
    """What every copy of one stored message shares."""

    headers: list[Header]
    body: memoryview
    keys: tuple[SigningKey, ...]
    bh: bytes
    problem: AttemptResult | None = None


class CopyMaker:
    def __init__(self, keyring: KeyRing, codec: TokenCodec, rules: CopyRules, *,
                 pass_unsigned: bool = False, clock: Callable[[], float] = time.time) -> None:
        self.keyring = keyring
        self.codec = codec
        self.rules = rules
        self.pass_unsigned = pass_unsigned
        self.clock = clock
        self._parsed: OrderedDict[str, tuple[asyncio.Future[Parsed], int]] = OrderedDict()
        self._kept_bytes = 0

    async def make(self, claim: ClaimedDelivery, stored: bytes) -> Copy | AttemptResult:
        """The copy for ``claim``, or the attempt's result when none can be made now."""
        parsed = await self._parse_once(claim.queue_id, stored)
        if parsed.problem is not None:
            return parsed.problem
        stream: Stream = "marketing" if claim.stream == "marketing" else "transactional"
        recipient = Recipient(claim.delivery_id, claim.recipient, claim.mail_from,
                              Controls(stream, claim.list_key, claim.campaign))
        return make_copy(parsed.headers, parsed.body, parsed.bh, recipient, parsed.keys,
                         self.codec, self.rules, int(self.clock()))

    async def _parse_once(self, queue_id: str, stored: bytes) -> Parsed:
        known = self._parsed.get(queue_id)
        if known is not None:
            self._parsed.move_to_end(queue_id)
            return await asyncio.shield(known[0])
        future: asyncio.Future[Parsed] = asyncio.get_running_loop().create_future()
        self._keep(queue_id, future, len(stored))
        try:
            future.set_result(await self._parse(stored))
        except BaseException as exc:
            self._forget(queue_id)
            future.set_exception(exc)
            future.exception()  # retrieved: waiters get it, nobody is warned twice
            raise
        return future.result()

    def _keep(self, queue_id: str, future: asyncio.Future[Parsed], size: int) -> None:
        self._parsed[queue_id] = (future, size)
        self._kept_bytes += size
        while self._kept_bytes > KEPT_BYTES and len(self._parsed) > 1:
            self._forget(next(iter(self._parsed)))

    def _forget(self, queue_id: str) -> None:
        entry = self._parsed.pop(queue_id, None)
        if entry is not None:
            self._kept_bytes -= entry[1]

    async def _parse(self, stored: bytes) -> Parsed:
        body = memoryview(stored)[body_offset(stored):]
        try:
            headers = parse_fields(stored[:header_length(stored)])
            author = author_domain(headers)
        except HeaderProblem as exc:  # intake checked this; only rows queued before can fail
            return Parsed([], body, (), b"",
                          AttemptResult("permanent", f"5.6.0 message cannot be signed: {exc}"))
        keys = self.keyring.keys_for(author)
        if not keys and not self.pass_unsigned:
            # The key was removed from the config after intake: wait for the operator.
            return Parsed([], body, (), b"",
                          AttemptResult("transient", f"4.7.0 no DKIM key for From domain {author}"))
        if not keys:
            return Parsed(headers, body, (), b"")
        bh = (await asyncio.to_thread(body_hash, body) if len(body) > THREAD_HASH_BYTES
              else body_hash(body))
        return Parsed(headers, body, keys, bh)
