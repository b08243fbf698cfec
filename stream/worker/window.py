"""Fold one window of raw messages into per-user state: pure logic, no I/O.

The worker reads a window of messages (what was fetched and is waiting, up to
`window_max_events`), and this module turns it into what the window must write: the dead
letters, and the new state of every user it touched. Each touched user is then scored
once, on their state at the end of the window.

A message is one event or a batch (a JSON array) of one user's events; each event is
validated on its own, and a bad one is rejected with its index in the batch.

No message can stop a window: a message without a value (a tombstone) is rejected as
`null_value`, and any error while folding one message (a damaged stored state, a bug) rejects
that message alone as `processing_error`; the rest of the window goes on.

A message at or below the offset a user's state last applied (a re-read after a crash) is
skipped whatever its event ids: exactly once by offset. The offset is marked applied once
the whole message is folded, so every event of a batch message counts. A user touched only
by such messages or by duplicates (an at-least-once redelivery after a restart) is still
scored: their state is unchanged, so the score and any alert are the same as before, and the
sinks' idempotent keys absorb the repeat. Skipping them instead would lose the score
of a window that crashed after its table write but before its sinks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from stream.contract.events import Event, Rejection, ValidationLimits, is_batch, parse_message
from stream.contract.state import UserState, apply_event
from stream.contract.tokenizer import Vocabulary
from stream.scoring.outcomes import awaits_return

KEY_MISMATCH = "key_mismatch"  # the message key is not the event's user_id
NULL_VALUE = "null_value"  # a message without a value (a Kafka tombstone)
PROCESSING_ERROR = "processing_error"  # folding this one message failed; detail says why
MODEL_REJECTED = "model_rejected"  # Triton refused the request holding this user's sequence


@dataclass(frozen=True, slots=True)
class Message:
    """One consumed message, with where it came from (for dead letters and logs)."""

    key: bytes | None
    value: bytes | None
    topic: str
    partition: int
    offset: int

    def where(self) -> dict[str, object]:
        """Where it came from, as the fields of a log record."""
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset}


@dataclass
class Window:
    rejected: list[tuple[Message, Rejection]] = field(default_factory=list)
    states: dict[str, UserState] = field(default_factory=dict)
    newest_event: dict[str, Event] = field(default_factory=dict)
    # The partition each user's events came from: their table entry belongs there.
    partitions: dict[str, int] = field(default_factory=dict)
    # Each user's valid messages of this window: dead-lettered together if the model
    # refuses their request.
    messages: dict[str, list[Message]] = field(default_factory=dict)
    # For outcomes (stream/scoring/outcomes.py): each user's newest event time before this
    # window (0 for none), the churn alert time of those who have not come back since it,
    # their first event after it as (alert, event) times, and purchases' times.
    before_ms: dict[str, int] = field(default_factory=dict)
    awaiting: dict[str, int] = field(default_factory=dict)
    returns: dict[str, tuple[int, int]] = field(default_factory=dict)
    purchases: dict[str, list[int]] = field(default_factory=dict)
    events: int = 0
    duplicates: int = 0
    replayed: int = 0  # skipped: at or below the offset the user's state already applied


def fold(
    messages: Sequence[Message],
    load_state: Callable[[str, int], UserState | None],
    *,
    vocab: Vocabulary,
    max_len: int,
    limits: ValidationLimits,
    now_ms: int,
) -> Window:
    window = Window()
    for message in messages:
        try:
            rejections = _fold_message(window, message, load_state, vocab, max_len, limits, now_ms)
        except Exception as exc:  # one message must not take its window down
            detail = f"{type(exc).__name__}: {str(exc)[:200]}"
            rejections = [Rejection(PROCESSING_ERROR, detail)]
        window.rejected += [(message, rejection) for rejection in rejections]
    return window


def _fold_message(
    window: Window,
    message: Message,
    load_state: Callable[[str, int], UserState | None],
    vocab: Vocabulary,
    max_len: int,
    limits: ValidationLimits,
    now_ms: int,
) -> list[Rejection]:
    if message.value is None:
        return [Rejection(NULL_VALUE, "message has no value (a tombstone); events carry JSON")]
    batch = is_batch(message.value)
    rejections: list[Rejection] = []
    # Per user of this message: whether their state had already applied it (a re-read).
    replayed: dict[str, bool] = {}
    for index, parsed in enumerate(parse_message(message.value, now_ms, limits)):
        if isinstance(parsed, Rejection):
            rejections.append(parsed)
            continue
        if message.key != parsed.user_id.encode():
            # Per-user state lives in the partition of the user's key: a message keyed
            # otherwise would split that user's sequence across workers.
            detail = "message key differs from user_id; key events by user_id"
            rejections.append(Rejection(KEY_MISMATCH, detail, index if batch else None))
            continue
        user = parsed.user_id
        state = window.states.get(user)
        if state is None:
            state = load_state(user, message.partition)
            window.before_ms[user] = 0 if state is None else state.last_ts_ms
            if state is not None and awaits_return(state.last_churn_alert_ms, state.last_ts_ms):
                window.awaiting[user] = state.last_churn_alert_ms
        if user not in replayed:
            replayed[user] = state is not None and state.has_applied(
                message.partition, message.offset
            )
            if not replayed[user]:
                window.messages.setdefault(user, []).append(message)
        window.partitions[user] = message.partition
        if replayed[user]:
            assert state is not None
            window.states[user] = state
            window.replayed += 1
            continue
        bought = 0 if state is None else state.purchase_count
        state, changed = apply_event(state, parsed, vocab, max_len)
        window.states[user] = state
        window.events += 1
        if changed:
            newest = window.newest_event.get(user)
            if newest is None or parsed.ts_ms >= newest.ts_ms:
                window.newest_event[user] = parsed
            alert_ms = window.awaiting.get(user, 0) if window.awaiting else 0
            if alert_ms and parsed.ts_ms > alert_ms:  # their first event after the alert
                window.returns[user] = (window.awaiting.pop(user), parsed.ts_ms)
            if state.purchase_count > bought:  # a purchase, by the state's own reading
                window.purchases.setdefault(user, []).append(parsed.ts_ms)
        else:
            window.duplicates += 1
    for user, was_applied in replayed.items():
        if not was_applied:
            window.states[user].mark_applied(message.partition, message.offset)
    return rejections
