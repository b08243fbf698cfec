"""Per-user rolling state, kept in the worker's changelogged table as compact bytes.

Binary layout (little-endian), version 4:

    header   151 bytes  see _HEADER: version 1's 87 bytes, then the source partition (int32)
                        and offset (int64) of the last message applied (version 2's 99 bytes),
                        then the exact behaviour counters (_COUNTERS, 36 bytes): active days,
                        purchases, purchase days (int32), spend (float64), first and last
                        purchase time (int64 ms, 0 for none), then the event time of the last
                        takeover alert (int64; version 3's 143 bytes), then the longest
                        silence the last event was re-scored at (int64 ms, 0 for none)

    tokens   n_tokens * NUM_FIELDS * 2 bytes (uint16, oldest event first)
    ids      n_ids * 8 bytes (uint64 blake2b hashes of recent event ids)
    last     n_last * (2-byte length + UTF-8) recent event ids, for alert records
    items    n_tokens * 4 bytes (uint32 item_hash per event, 0 for none), present when flag
             bit 2 is set; a state written before item hashes existed reads as all 0

The item hashes are the raw items as each model version needs them: a version maps them to
its own item vocabulary, so promoting a version with new items invalidates no state.

The counters are what the behaviour features (stream/contract/features.py) need exactly and
the 64 token rows cannot give: a user's purchases and spend over their whole history. A day is
a UTC day of event time; an event older than the newest one counts as a purchase but starts no
new active or purchase day (the state cannot know whether that day was already counted).

A user with a full 64-event sequence, 32 remembered ids and three 36-char UUID event ids takes
151 + 768 + 256 + 114 + 256 = 1545 bytes. Version 1 states (no source offset) still load, as states
that have applied no message yet by offset; version 1 and 2 states (no counters) load with the
counters they can be given: one active day per state with events, the purchases among the
token rows it keeps on one purchase day dated at its last event, and a spend of 0 (unknown);
they count exactly from then on, and with no takeover alert yet. Version 1 to 3 states load as
never re-scored in silence.

The silence re-scored (version 4) is what lets a worker that is assigned a partition, after a
restart or a rebalance, rebuild that partition's silent-user index from the table alone
(stream/scoring/idle.py, `silence_of`): the user is due at the first silence level beyond it,
as if no worker had stopped.

Exactly once by offset: a state remembers the (partition, offset) of the last message folded
into it, and a message at or below it is skipped. A worker that crashes after writing states
but before committing offsets re-reads those messages, however many, and changes nothing.
The event-id memory stays for the other kind of duplicate, an event a producer sent twice.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from hashlib import blake2b

import numpy as np
import numpy.typing as npt

from stream.contract.events import Event
from stream.contract.tokenizer import (
    EVENT_TYPES,
    NUM_FIELDS,
    NUM_SPECIAL,
    Vocabulary,
    item_hash,
    tokenize,
)

STATE_VERSION = 4
READABLE_VERSIONS = (1, 2, 3, 4)
NO_OFFSET = -1
DEFAULT_MAX_IDS = 32  # at-least-once redelivery repeats a user's last few events, not dozens
LAST_EVENT_IDS = 3
EVENT_ID_CHARS = 64

# rate_per_s is 1 / (exponentially weighted mean gap between in-order events). Weighting per
# event rather than per second lets a short burst show its own rate: 50 events in 1 s reach
# ~50/s, while a 10 s half-life counter would smear them to ~3/s. A new user starts from a
# slow prior gap so that two events sent together do not look like a bot.
RATE_WEIGHT = 0.25
PRIOR_GAP_S = 60.0
MIN_GAP_S = 0.001  # timestamps are whole milliseconds; also caps the rate at 1000/s

_HEADER_V1 = struct.Struct("<BBHBBBqqqddddqqq")
_HEADER_V2 = struct.Struct("<BBHBBBqqqddddqqqiq")
_COUNTERS = struct.Struct("<iiidqq")
_HEADER_V3 = struct.Struct(_HEADER_V2.format + _COUNTERS.format[1:] + "q")
_HEADER = struct.Struct(_HEADER_V3.format + "q")
_HEADERS = {1: _HEADER_V1, 2: _HEADER_V2, 3: _HEADER_V3, 4: _HEADER}
DAY_MS = 86_400_000
PURCHASE_TOKEN = NUM_SPECIAL + EVENT_TYPES.index("purchase")
_LEN = struct.Struct("<H")
_FLAG_CHURN_ARMED = 1
_FLAG_ITEM_HASHES = 2
_HASH_DTYPE = np.dtype("<u4")
_TOKEN_DTYPE = np.dtype("<u2")


def _empty_tokens() -> npt.NDArray[np.uint16]:
    return np.zeros((0, NUM_FIELDS), dtype=np.uint16)


def _empty_hashes() -> npt.NDArray[np.uint32]:
    return np.zeros(0, dtype=np.uint32)


@dataclass(slots=True, eq=False)
class UserState:
    tokens: npt.NDArray[np.uint16] = field(default_factory=_empty_tokens)
    last_ts_ms: int = 0
    first_ts_ms: int = 0
    event_count: int = 0
    rate_per_s: float = 0.0
    recent_event_ids: list[int] = field(default_factory=list)
    churn: float = math.nan
    purchase: float = math.nan
    anomaly: float = math.nan
    churn_armed: bool = True
    last_churn_alert_ms: int = 0
    last_anomaly_alert_ms: int = 0
    last_burst_alert_ms: int = 0
    last_takeover_alert_ms: int = 0
    last_event_ids: list[str] = field(default_factory=list)
    source_partition: int = NO_OFFSET
    source_offset: int = NO_OFFSET
    item_hashes: npt.NDArray[np.uint32] = field(default_factory=_empty_hashes)  # per token row
    active_days: int = 0
    purchase_count: int = 0
    purchase_days: int = 0
    spend: float = 0.0
    first_purchase_ms: int = 0  # 0: no purchase yet
    last_purchase_ms: int = 0
    # The longest silence (ms after last_ts_ms) this state was re-scored at; 0: none since
    # its last event. A newer event resets it.
    silence_scored_ms: int = 0

    def has_applied(self, partition: int, offset: int) -> bool:
        """True when the message at (partition, offset) is already folded into this state."""
        return partition == self.source_partition and offset <= self.source_offset

    def mark_applied(self, partition: int, offset: int) -> None:
        """Remember the message just folded in (another partition: the topic was resized)."""
        if partition != self.source_partition or offset > self.source_offset:
            self.source_partition, self.source_offset = partition, offset

    def __eq__(self, other: object) -> bool:
        # Byte equality: exact for NaN scores and independent of the array's memory layout.
        return isinstance(other, UserState) and self.to_bytes() == other.to_bytes()

    def to_bytes(self) -> bytes:
        last = [s.encode("utf-8", "surrogatepass") for s in self.last_event_ids]
        parts = [
            _HEADER.pack(
                STATE_VERSION,
                (_FLAG_CHURN_ARMED if self.churn_armed else 0) | _FLAG_ITEM_HASHES,
                self.tokens.shape[0],
                NUM_FIELDS,
                len(self.recent_event_ids),
                len(last),
                self.last_ts_ms,
                self.first_ts_ms,
                self.event_count,
                self.rate_per_s,
                self.churn,
                self.purchase,
                self.anomaly,
                self.last_churn_alert_ms,
                self.last_anomaly_alert_ms,
                self.last_burst_alert_ms,
                self.source_partition,
                self.source_offset,
                self.active_days,
                self.purchase_count,
                self.purchase_days,
                self.spend,
                self.first_purchase_ms,
                self.last_purchase_ms,
                self.last_takeover_alert_ms,
                self.silence_scored_ms,
            ),
            self.tokens.astype(_TOKEN_DTYPE, copy=False).tobytes(),
            struct.pack(f"<{len(self.recent_event_ids)}Q", *self.recent_event_ids),
        ]
        for encoded in last:
            parts.append(_LEN.pack(len(encoded)))
            parts.append(encoded)
        parts.append(self._aligned_hashes().astype(_HASH_DTYPE, copy=False).tobytes())
        return b"".join(parts)

    def _aligned_hashes(self) -> npt.NDArray[np.uint32]:
        """One item hash per token row (0 for rows from before item hashes were kept)."""
        n = self.tokens.shape[0]
        hashes = self.item_hashes[-n:] if n else self.item_hashes[:0]
        if hashes.shape[0] == n:
            return hashes
        return np.concatenate([np.zeros(n - hashes.shape[0], dtype=np.uint32), hashes])

    @classmethod
    def from_bytes(cls, data: bytes) -> UserState:
        """Inverse of to_bytes; ValueError for another version or damaged bytes."""
        version = data[0] if data else 0
        header = _HEADERS.get(version, _HEADER)
        if version not in READABLE_VERSIONS or len(data) < header.size:
            raise ValueError(f"not a user state of version {READABLE_VERSIONS}")
        source_partition = source_offset = NO_OFFSET
        counters: list[int | float] = []
        last_takeover_alert_ms = silence_scored_ms = 0
        (
            _,
            flags,
            n_tokens,
            n_fields,
            n_ids,
            n_last,
            last_ts_ms,
            first_ts_ms,
            event_count,
            rate_per_s,
            churn,
            purchase,
            anomaly,
            last_churn_alert_ms,
            last_anomaly_alert_ms,
            last_burst_alert_ms,
            *rest,
        ) = header.unpack_from(data)
        if rest:
            source_partition, source_offset, *counters = rest
            if version >= 4:  # the silence re-scored at
                silence_scored_ms = int(counters.pop())
            if counters:  # version 3: the behaviour counters, then the takeover alert time
                last_takeover_alert_ms = int(counters.pop())
        if n_fields != NUM_FIELDS:
            raise ValueError(f"state has {n_fields} token fields, expected {NUM_FIELDS}")
        offset = header.size
        token_bytes = n_tokens * NUM_FIELDS * 2
        if len(data) < offset + token_bytes + n_ids * 8:
            raise ValueError("user state truncated")
        # A bytearray copy makes the array writable and independent of the table's bytes.
        tokens = np.frombuffer(bytearray(data[offset : offset + token_bytes]), _TOKEN_DTYPE)
        offset += token_bytes
        ids = list(struct.unpack_from(f"<{n_ids}Q", data, offset))
        offset += n_ids * 8
        last: list[str] = []
        try:
            for _ in range(n_last):
                (size,) = _LEN.unpack_from(data, offset)
                offset += _LEN.size
                if offset + size > len(data):
                    raise ValueError("user state truncated")
                last.append(data[offset : offset + size].decode("utf-8", "surrogatepass"))
                offset += size
        except struct.error:
            raise ValueError("user state truncated") from None
        hashes = np.zeros(n_tokens, dtype=np.uint32)
        if flags & _FLAG_ITEM_HASHES:
            hash_bytes = n_tokens * _HASH_DTYPE.itemsize
            if offset + hash_bytes > len(data):
                raise ValueError("user state truncated")
            hashes = np.frombuffer(data[offset : offset + hash_bytes], _HASH_DTYPE).astype(
                np.uint32
            )
            offset += hash_bytes
        if offset != len(data):
            raise ValueError("trailing bytes after user state")
        tokens = tokens.reshape(n_tokens, NUM_FIELDS)
        if not counters:
            counters = _counters_from_tokens(tokens, event_count, last_ts_ms)
        active_days, purchase_count, purchase_days, spend, first_buy, last_buy = counters
        return cls(
            tokens=tokens,
            last_ts_ms=last_ts_ms,
            first_ts_ms=first_ts_ms,
            event_count=event_count,
            rate_per_s=rate_per_s,
            recent_event_ids=ids,
            churn=churn,
            purchase=purchase,
            anomaly=anomaly,
            churn_armed=bool(flags & _FLAG_CHURN_ARMED),
            last_churn_alert_ms=last_churn_alert_ms,
            last_anomaly_alert_ms=last_anomaly_alert_ms,
            last_burst_alert_ms=last_burst_alert_ms,
            last_takeover_alert_ms=last_takeover_alert_ms,
            last_event_ids=last,
            source_partition=source_partition,
            source_offset=source_offset,
            item_hashes=hashes,
            active_days=int(active_days),
            purchase_count=int(purchase_count),
            purchase_days=int(purchase_days),
            spend=float(spend),
            first_purchase_ms=int(first_buy),
            last_purchase_ms=int(last_buy),
            silence_scored_ms=silence_scored_ms,
        )

    def padded(self, max_len: int) -> npt.NDArray[np.int32]:
        """(max_len, NUM_FIELDS) int32, left-padded with PAD so the newest event is last."""
        out = np.zeros((max_len, NUM_FIELDS), dtype=np.int32)
        recent = self.tokens[-max_len:] if max_len else self.tokens[:0]
        out[max_len - recent.shape[0] :] = recent
        return out


@dataclass(frozen=True, slots=True)
class SilencePoint:
    """What the silent-user index needs of a stored state, read from its header alone."""

    partition: int  # of the last message applied (NO_OFFSET for a version 1 state)
    last_ts_ms: int
    silence_scored_ms: int
    event_count: int


# Where silence_point finds its fields in every header version (each extends the one before).
_LAST_TS_AT = struct.calcsize(_HEADER_V1.format[:7])
_EVENT_COUNT_AT = struct.calcsize(_HEADER_V1.format[:9])
_PARTITION_AT = _HEADER_V1.size
_SILENCE_AT = _HEADER_V3.size
_INT64 = struct.Struct("<q")
_INT32 = struct.Struct("<i")


def silence_point(data: bytes) -> SilencePoint:
    """A stored state's partition, last event time and silence re-scored at, read from four
    fields of its header (a worker reads every state of a partition it is assigned);
    ValueError for bytes that are no user state."""
    version = data[0] if data else 0
    header = _HEADERS.get(version)
    if header is None or len(data) < header.size:
        raise ValueError(f"not a user state of version {READABLE_VERSIONS}")
    return SilencePoint(
        _INT32.unpack_from(data, _PARTITION_AT)[0] if version >= 2 else NO_OFFSET,
        _INT64.unpack_from(data, _LAST_TS_AT)[0],
        _INT64.unpack_from(data, _SILENCE_AT)[0] if version >= 4 else 0,
        _INT64.unpack_from(data, _EVENT_COUNT_AT)[0],
    )


def _counters_from_tokens(
    tokens: npt.NDArray[np.uint16], event_count: int, last_ts_ms: int
) -> list[int | float]:
    """Counters for a state written before they existed: what its token rows show."""
    purchases = int((tokens[:, 0] == PURCHASE_TOKEN).sum()) if tokens.size else 0
    return [
        1 if event_count else 0,
        purchases,
        1 if purchases else 0,
        0.0,
        last_ts_ms if purchases else 0,
        last_ts_ms if purchases else 0,
    ]


def event_id_hash(event_id: str) -> int:
    """64-bit hash of an event id; crc32's 32 bits would give false duplicates at scale."""
    digest = blake2b(event_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def _next_rate(rate_per_s: float, gap_ms: int) -> float:
    mean_gap_s = 1.0 / rate_per_s if rate_per_s > 0 else PRIOR_GAP_S
    mean_gap_s += RATE_WEIGHT * (gap_ms / 1000.0 - mean_gap_s)
    return 1.0 / max(mean_gap_s, MIN_GAP_S)


def _append_row(
    tokens: npt.NDArray[np.uint16], row: tuple[int, ...], max_len: int
) -> npt.NDArray[np.uint16]:
    keep = min(tokens.shape[0], max_len - 1)
    out = np.empty((keep + 1, NUM_FIELDS), dtype=np.uint16)
    if keep:
        out[:keep] = tokens[tokens.shape[0] - keep :]
    out[keep] = row
    return out


def apply_event(
    state: UserState | None,
    event: Event,
    vocab: Vocabulary,
    max_len: int,
    *,
    max_ids: int = DEFAULT_MAX_IDS,
) -> tuple[UserState, bool]:
    """Fold one event into the user's state (in place when given one).

    Returns (state, False) with the state untouched when the event id was seen recently.
    An event older than the newest one is appended (the model sees arrival order, with an
    OUT_OF_ORDER gap token) but moves neither last_ts_ms nor the rate.
    """
    # The header stores the counts in 16 and 8 bits.
    if not (1 <= max_len <= 0xFFFF and 1 <= max_ids <= 0xFF):
        raise ValueError("max_len must be in 1..65535 and max_ids in 1..255")
    id_hash = event_id_hash(event.event_id)
    if state is None:
        state = UserState()
    elif id_hash in state.recent_event_ids:
        return state, False

    prev_ts_ms = state.last_ts_ms if state.event_count else None
    row = tokenize(event, prev_ts_ms, vocab)
    _count(state, event, prev_ts_ms, row[0])
    state.item_hashes = _append_hash(state._aligned_hashes(), item_hash(event.item_id), max_len)
    state.tokens = _append_row(state.tokens, row, max_len)
    if prev_ts_ms is None:
        state.first_ts_ms = state.last_ts_ms = event.ts_ms
    elif event.ts_ms >= prev_ts_ms:
        state.rate_per_s = _next_rate(state.rate_per_s, event.ts_ms - prev_ts_ms)
        if event.ts_ms > prev_ts_ms:  # a new last event: its silence starts again
            state.silence_scored_ms = 0
        state.last_ts_ms = event.ts_ms
    else:
        state.first_ts_ms = min(state.first_ts_ms, event.ts_ms)
    state.event_count += 1

    state.recent_event_ids.append(id_hash)
    del state.recent_event_ids[:-max_ids]
    state.last_event_ids.append(event.event_id[:EVENT_ID_CHARS])
    del state.last_event_ids[:-LAST_EVENT_IDS]
    return state, True


def _count(state: UserState, event: Event, prev_ts_ms: int | None, event_type: int) -> None:
    """The exact counters (before the event moves last_ts_ms): see the module docstring."""
    day = event.ts_ms // DAY_MS
    in_order = prev_ts_ms is None or event.ts_ms >= prev_ts_ms
    if prev_ts_ms is None or (in_order and day != prev_ts_ms // DAY_MS):
        state.active_days += 1
    if event_type != PURCHASE_TOKEN:
        return
    state.purchase_count += 1
    state.spend += event.price or 0.0
    if state.purchase_count == 1:
        state.first_purchase_ms = state.last_purchase_ms = event.ts_ms
        state.purchase_days = 1
    elif event.ts_ms >= state.last_purchase_ms:
        if day != state.last_purchase_ms // DAY_MS:
            state.purchase_days += 1
        state.last_purchase_ms = event.ts_ms
    else:
        state.first_purchase_ms = min(state.first_purchase_ms, event.ts_ms)


def _append_hash(
    hashes: npt.NDArray[np.uint32], value: int, max_len: int
) -> npt.NDArray[np.uint32]:
    keep = min(hashes.shape[0], max_len - 1)
    out = np.empty(keep + 1, dtype=np.uint32)
    if keep:
        out[:keep] = hashes[hashes.shape[0] - keep :]
    out[keep] = value
    return out


def stack_item_hashes(states: Sequence[UserState], max_len: int) -> npt.NDArray[np.int64]:
    """(len(states), max_len) int64 item hashes, left-padded with 0 like stack_padded."""
    out = np.zeros((len(states), max_len), dtype=np.int64)
    if max_len == 0:
        return out
    for i, state in enumerate(states):
        recent = state._aligned_hashes()[-max_len:]
        out[i, max_len - recent.shape[0] :] = recent
    return out


def stack_padded(states: Sequence[UserState], max_len: int) -> npt.NDArray[np.int32]:
    """(len(states), max_len, NUM_FIELDS) int32 model input, each row left-padded."""
    out = np.zeros((len(states), max_len, NUM_FIELDS), dtype=np.int32)
    if max_len == 0:
        return out
    for i, state in enumerate(states):
        recent = state.tokens[-max_len:]
        out[i, max_len - recent.shape[0] :] = recent
    return out
