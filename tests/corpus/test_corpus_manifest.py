"""The corpus stays consistent: every sample listed, every verdict within the rules, replies valid."""

from __future__ import annotations

import email
from email import policy

from tests.corpus.check_manifest import (
    CORPUS,
    file_problems,
    key_problems,
    load_expected,
    load_replies,
    reply_problems,
    sample_problems,
)

# Non-conforming on purpose: the stdlib parser reports a defect, and a robust parser must cope.
DELIBERATELY_MALFORMED = {"misc/delivery-status-base64.eml"}


def test_every_sample_listed_and_every_verdict_follows_the_rules() -> None:
    samples = load_expected()
    problems = key_problems(CORPUS) + file_problems(CORPUS, samples)
    for sample in samples:
        problems.extend(sample_problems(sample))
    assert problems == []


def test_corpus_covers_each_kind() -> None:
    kinds = [s.kind for s in load_expected()]
    assert len(kinds) >= 170
    assert kinds.count("arf") >= 15 and kinds.count("auto-reply") >= 20 and kinds.count("not-bounce") >= 10
    delayed = [r for s in load_expected() for r in s.recipients if r.action == "delayed"]
    assert len(delayed) >= 10


def test_replies_are_valid() -> None:
    replies = load_replies()
    assert len(replies) >= 80
    assert reply_problems(replies) == []


def test_every_sample_is_well_formed_mime_with_one_line_ending_style() -> None:
    for sample in load_expected():
        raw = (CORPUS / sample.path).read_bytes()
        crlf = raw.count(b"\r\n")
        assert crlf in (0, raw.count(b"\n")), f"{sample.path}: mixed line endings"
        message = email.message_from_bytes(raw, policy=policy.default)
        defects = [d for part in message.walk() for d in part.defects]
        if sample.path not in DELIBERATELY_MALFORMED:
            assert defects == [], f"{sample.path}: {defects}"
