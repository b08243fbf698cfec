"""Dead-letter records: the original bytes, or a truncated copy that says what it replaced."""

from __future__ import annotations

import hashlib

from stream.contract.events import Rejection
from stream.sinks.kafka import (
    ORIGINAL_SHA256_HEADER,
    ORIGINAL_SIZE_HEADER,
    TRUNCATED_HEADER,
    dead_letter_record,
)
from stream.worker.window import Message

WHY = Rejection("oversized_payload", "2000000 bytes, limit 16384")


def test_bytes_that_fit_go_out_untouched() -> None:
    message = Message(b"user-1", b"x" * 1000, "events", 2, 7)
    _, key, value, headers = dead_letter_record("dlq", message, WHY, max_request_bytes=100_000)
    names = dict(headers or [])
    assert (key, value) == (b"user-1", b"x" * 1000)
    assert TRUNCATED_HEADER not in names
    assert names["clickscore.source.offset"] == b"7"


def test_bytes_too_large_for_a_request_become_a_truncated_copy_with_size_and_hash() -> None:
    original = b"{" + b"y" * 2_000_000 + b"}"
    message = Message(b"user-2", original, "events", 0, 1)
    _, key, value, headers = dead_letter_record("dlq", message, WHY, max_request_bytes=1_000_000)
    names = dict(headers or [])
    assert value is not None and original.startswith(value)
    size = len(key or b"") + len(value) + sum(len(n) + len(v) for n, v in headers or [])
    assert size <= 1_000_000
    assert names[TRUNCATED_HEADER] == b"true"
    assert int(names[ORIGINAL_SIZE_HEADER]) == len(original)
    assert names[ORIGINAL_SHA256_HEADER] == hashlib.sha256(original).hexdigest().encode()


def test_a_tombstone_keeps_its_missing_value() -> None:
    message = Message(b"user-3", None, "events", 0, 2)
    _, _, value, headers = dead_letter_record("dlq", message, Rejection("null_value", "none"))
    assert value is None
    assert dict(headers or [])["clickscore.reason"] == b"null_value"
