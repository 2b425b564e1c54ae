"""Turns a claimed delivery and its stored message into the copy that goes out.

The pure work (headers, tokens, signatures) is in rewrite/ and signing/; this adds the
state around it: the body hash, computed once per message and reused for each of its
recipients, and a worker thread for hashing bodies large enough to stall the event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable

from gateway.records import AttemptResult, ClaimedDelivery
from gateway.rewrite.copies import Copy, CopyRules, Recipient, make_copy
from gateway.rewrite.headers import HeaderProblem, author_domain, split_message
from gateway.rewrite.message import Controls, Stream
from gateway.rewrite.tokens import TokenCodec
from gateway.signing.keyring import KeyRing
from gateway.signing.signer import body_hash

THREAD_HASH_BYTES = 256 * 1024  # ~2 ms of canonicalization: above this, hash in a thread
BODY_HASHES_KEPT = 4096


class CopyMaker:
    def __init__(self, keyring: KeyRing, codec: TokenCodec, rules: CopyRules, *,
                 pass_unsigned: bool = False, clock: Callable[[], float] = time.time) -> None:
        self.keyring = keyring
        self.codec = codec
        self.rules = rules
        self.pass_unsigned = pass_unsigned
        self.clock = clock
        self._body_hashes: OrderedDict[str, bytes] = OrderedDict()

    async def make(self, claim: ClaimedDelivery, stored: bytes) -> Copy | AttemptResult:
        """The copy for ``claim``, or the attempt's result when none can be made now."""
        try:
            headers, body = split_message(stored)
            author = author_domain(headers)
        except HeaderProblem as exc:  # intake checked this; only rows queued before can fail
            return AttemptResult("permanent", f"5.6.0 message cannot be signed: {exc}")
        keys = self.keyring.keys_for(author)
        if not keys and not self.pass_unsigned:
            # The key was removed from the config after intake: wait for the operator.
            return AttemptResult("transient", f"4.7.0 no DKIM key for From domain {author}")
        bh = await self._body_hash(claim.queue_id, body) if keys else b""
        stream: Stream = "marketing" if claim.stream == "marketing" else "transactional"
        recipient = Recipient(claim.delivery_id, claim.recipient, claim.mail_from,
                              Controls(stream, claim.list_key, claim.campaign))
        return make_copy(headers, body, bh, recipient, keys, self.codec, self.rules,
                         int(self.clock()))

    async def _body_hash(self, queue_id: str, body: bytes) -> bytes:
        known = self._body_hashes.get(queue_id)
        if known is not None:
            self._body_hashes.move_to_end(queue_id)
            return known
        bh = (await asyncio.to_thread(body_hash, body) if len(body) > THREAD_HASH_BYTES
              else body_hash(body))
        self._body_hashes[queue_id] = bh
        if len(self._body_hashes) > BODY_HASHES_KEPT:
            self._body_hashes.popitem(last=False)
        return bh
