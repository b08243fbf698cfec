"""Fold one window of raw messages into per-user state: pure logic, no I/O.

The worker reads a window of messages (up to `window_max_events`, or what arrived within
`flush_delay_ms`), and this module turns it into what the window must write: the dead
letters, and the new state of every user it touched. Each touched user is then scored
once, on their state at the end of the window.

A user touched only by duplicates (an at-least-once redelivery after a restart) is still
scored: their state is unchanged, so the score and any alert are the same as before, and
the sinks' idempotent keys absorb the repeat. Skipping them instead would lose the score
of a window that crashed after its table write but before its sinks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from stream.contract.events import Event, Rejection, ValidationLimits, is_batch, parse_message
from stream.contract.state import UserState, apply_event
from stream.contract.tokenizer import Vocabulary

KEY_MISMATCH = "key_mismatch"  # the message key is not the event's user_id


@dataclass(frozen=True, slots=True)
class Message:
    """One consumed message, with where it came from (for dead letters and logs)."""

    key: bytes | None
    value: bytes
    topic: str
    partition: int
    offset: int


@dataclass
class Window:
    rejected: list[tuple[Message, Rejection]] = field(default_factory=list)
    states: dict[str, UserState] = field(default_factory=dict)
    newest_event: dict[str, Event] = field(default_factory=dict)
    # The partition each user's events came from: their table entry belongs there.
    partitions: dict[str, int] = field(default_factory=dict)
    events: int = 0
    duplicates: int = 0


def _parsed(
    messages: Sequence[Message], now_ms: int, limits: ValidationLimits
) -> Iterator[tuple[Message, int | None, Event | Rejection]]:
    """Each event of each message (a message may be a batch), with its index in the batch."""
    for message in messages:
        batch = is_batch(message.value)
        # A rejection carries its own index (None when the whole message was unreadable).
        for index, parsed in enumerate(parse_message(message.value, now_ms, limits)):
            yield message, index if batch else None, parsed


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
    for message, index, parsed in _parsed(messages, now_ms, limits):
        if isinstance(parsed, Rejection):
            window.rejected.append((message, parsed))
            continue
        if message.key != parsed.user_id.encode():
            # Per-user state lives in the partition of the user's key: a message keyed
            # otherwise would split that user's sequence across workers.
            detail = "message key differs from user_id; key events by user_id"
            window.rejected.append((message, Rejection(KEY_MISMATCH, detail, index)))
            continue
        user = parsed.user_id
        state = window.states.get(user)
        if state is None:
            state = load_state(user, message.partition)
        state, changed = apply_event(state, parsed, vocab, max_len)
        window.states[user] = state
        window.partitions[user] = message.partition
        window.events += 1
        if changed:
            newest = window.newest_event.get(user)
            if newest is None or parsed.ts_ms >= newest.ts_ms:
                window.newest_event[user] = parsed
        else:
            window.duplicates += 1
    return window
