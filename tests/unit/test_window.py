"""Folding a window of raw messages into per-user state (pure, no services)."""

from __future__ import annotations

import orjson

from stream.contract.events import Event, ValidationLimits, event_to_json
from stream.contract.state import UserState, apply_event
from stream.contract.tokenizer import Vocabulary
from stream.worker.window import KEY_MISMATCH, NULL_VALUE, PROCESSING_ERROR, Message, fold

VOCAB = Vocabulary()
NOW = 1_700_000_000_000


def message(event: Event | bytes, key: bytes | None = None, offset: int = 0) -> Message:
    value = event if isinstance(event, bytes) else event_to_json(event)
    if key is None and isinstance(event, Event):
        key = event.user_id.encode()
    return Message(key=key, value=value, topic="events", partition=offset % 3, offset=offset)


def run(messages: list[Message], table: dict[str, UserState] | None = None):  # type: ignore[no-untyped-def]
    table = table or {}
    return fold(
        messages,
        lambda user, _partition: table.get(user),
        vocab=VOCAB,
        max_len=8,
        limits=ValidationLimits(),
        now_ms=NOW,
    )


def ev(user: str, n: int, ts: int = NOW - 60_000) -> Event:
    return Event(f"{user}-{n}", user, ts + n * 1000, "view")


def test_each_user_is_folded_once_per_window_with_all_their_events() -> None:
    window = run(
        [
            message(ev("a", 0), offset=0),
            message(ev("b", 0), offset=1),
            message(ev("a", 1), offset=3),
        ]
    )
    assert set(window.states) == {"a", "b"}
    assert window.states["a"].event_count == 2
    assert window.partitions == {"a": 0, "b": 1}
    assert window.newest_event["a"].event_id == "a-1"
    assert window.events == 3 and window.duplicates == 0


def test_state_continues_from_the_table() -> None:
    stored, _ = apply_event(None, ev("a", 0), VOCAB, 8)
    window = run([message(ev("a", 1))], {"a": stored})
    assert window.states["a"].event_count == 2


def test_redelivered_events_touch_the_user_without_changing_the_state() -> None:
    stored, _ = apply_event(None, ev("a", 0), VOCAB, 8)
    stored.mark_applied(0, 0)
    before = stored.to_bytes()
    # The same event again at a later offset: a producer's duplicate, caught by its id.
    window = run([message(ev("a", 0), offset=3)], {"a": UserState.from_bytes(before)})
    assert window.duplicates == 1
    after = window.states["a"]
    assert after.event_count == 1 and after.tokens.shape[0] == 1  # nothing applied twice
    assert (after.source_partition, after.source_offset) == (0, 3)
    assert "a" not in window.newest_event


def test_messages_at_or_below_the_applied_offset_are_skipped_however_many() -> None:
    """A re-read after a crash: far more than the 32 remembered event ids of one user."""
    first = run([message(ev("a", n), offset=3 * n) for n in range(100)])
    stored = first.states["a"]
    assert (stored.event_count, stored.source_offset) == (100, 297)
    again = run(
        [message(ev("a", n), offset=3 * n) for n in range(100)]
        + [message(ev("a", 100), offset=300)],
        {"a": UserState.from_bytes(stored.to_bytes())},
    )
    assert again.replayed == 100 and again.events == 1
    assert again.states["a"].event_count == 101


def test_a_tombstone_and_a_message_that_fails_to_fold_are_rejected_alone() -> None:
    def load(user: str, _partition: int) -> UserState | None:
        if user == "damaged":
            return UserState.from_bytes(b"\x07damaged")
        return None

    window = fold(
        [
            Message(b"a", None, "events", 0, 0),
            message(ev("damaged", 0), offset=3),
            message(ev("b", 0), offset=6),
        ],
        load,
        vocab=VOCAB,
        max_len=8,
        limits=ValidationLimits(),
        now_ms=NOW,
    )
    assert [(m.offset, r.reason) for m, r in window.rejected] == [
        (0, NULL_VALUE),
        (3, PROCESSING_ERROR),
    ]
    assert "ValueError" in window.rejected[1][1].detail
    assert set(window.states) == {"b"}


def test_bad_messages_are_rejected_with_their_origin_and_the_rest_kept() -> None:
    bad = message(b"{nope", key=b"a", offset=7)
    wrong_key = message(ev("a", 2), key=b"b", offset=8)
    no_key = Message(
        key=None, value=event_to_json(ev("a", 3)), topic="events", partition=0, offset=9
    )
    window = run([bad, message(ev("a", 1), offset=1), wrong_key, no_key])
    reasons = [(m.offset, r.reason) for m, r in window.rejected]
    assert reasons == [(7, "bad_json"), (8, KEY_MISMATCH), (9, KEY_MISMATCH)]
    assert window.states["a"].event_count == 1


def test_a_rejection_never_carries_the_payload() -> None:
    secret = "4111-1111-1111-1111" * 10
    raw = orjson.dumps({"event_id": "x", "user_id": "a", "ts": "soon", "event_type": secret})
    window = run([message(raw, key=b"a")])
    [(_, rejection)] = window.rejected
    assert secret not in rejection.detail


def test_a_batch_message_folds_its_good_events_and_rejects_the_bad_ones_by_index() -> None:
    good = [orjson.loads(event_to_json(ev("a", n))) for n in range(3)]
    other_user = orjson.loads(event_to_json(ev("b", 0)))
    batch = orjson.dumps([good[0], {"user_id": "a"}, good[1], other_user, good[2]])
    window = run([message(batch, key=b"a", offset=4), message(ev("c", 0), offset=5)])
    assert window.states["a"].event_count == 3 and window.states["c"].event_count == 1
    assert "b" not in window.states
    rejected = [(m.offset, r.index, r.reason) for m, r in window.rejected]
    assert rejected == [(4, 1, "missing_field"), (4, 3, KEY_MISMATCH)]
    assert all(m.value == batch for m, _ in window.rejected)  # the original bytes, whole
    assert window.events == 4
