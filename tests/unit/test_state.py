from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.contract import tokenizer as tk
from stream.contract.events import Event
from stream.contract.state import (
    DEFAULT_MAX_IDS,
    UserState,
    apply_event,
    event_id_hash,
    stack_padded,
)
from stream.contract.tokenizer import NUM_FIELDS, Vocabulary, tokenize

VOCAB = Vocabulary()
T0 = 1_700_000_000_000
GAP = tk.FIELDS.index("gap_bucket")


def ev(i: int, ts_ms: int, event_type: str = "view", event_id: str | None = None) -> Event:
    return Event(
        event_id=event_id if event_id is not None else f"e-{i}",
        user_id="u",
        ts_ms=ts_ms,
        event_type=event_type,
        item_id=f"sku-{i % 7}",
        price=float(i),
        platform="web",
    )


def feed(events: list[Event], max_len: int = 64) -> UserState:
    state: UserState | None = None
    for event in events:
        state, _ = apply_event(state, event, VOCAB, max_len)
    assert state is not None
    return state


def test_first_event() -> None:
    state, applied = apply_event(None, ev(0, T0), VOCAB, 64)
    assert applied
    assert state.tokens.dtype == np.uint16 and state.tokens.shape == (1, NUM_FIELDS)
    assert tuple(state.tokens[0]) == tokenize(ev(0, T0), None, VOCAB)
    assert state.tokens[0, GAP] == tk.FIRST
    assert (state.first_ts_ms, state.last_ts_ms, state.event_count) == (T0, T0, 1)
    assert state.rate_per_s == 0.0
    assert state.last_event_ids == ["e-0"]
    assert state.recent_event_ids == [event_id_hash("e-0")]
    assert math.isnan(state.churn) and state.churn_armed


def test_tokens_oldest_to_newest_with_gaps() -> None:
    state = feed([ev(0, T0), ev(1, T0 + 3_000), ev(2, T0 + 3_500)])
    assert state.tokens.shape == (3, NUM_FIELDS)
    assert tuple(state.tokens[1]) == tokenize(ev(1, T0 + 3_000), T0, VOCAB)
    assert tuple(state.tokens[2]) == tokenize(ev(2, T0 + 3_500), T0 + 3_000, VOCAB)
    assert state.last_event_ids == ["e-0", "e-1", "e-2"]


def test_duplicate_event_id_leaves_state_unchanged() -> None:
    state = feed([ev(0, T0), ev(1, T0 + 1_000)])
    before = state.to_bytes()
    again, applied = apply_event(state, ev(0, T0 + 5_000), VOCAB, 64)
    assert not applied and again is state
    assert state.to_bytes() == before


def test_dedupe_window_is_bounded() -> None:
    state = feed([ev(i, T0 + i * 1_000) for i in range(DEFAULT_MAX_IDS + 5)])
    assert len(state.recent_event_ids) == DEFAULT_MAX_IDS
    # The oldest ids have left the window, so they are accepted again.
    _, applied_old = apply_event(state, ev(0, T0 + 10**6), VOCAB, 64)
    assert applied_old
    _, applied_recent = apply_event(state, ev(DEFAULT_MAX_IDS + 4, T0 + 10**6), VOCAB, 64)
    assert not applied_recent


def test_trims_to_max_len_keeping_newest() -> None:
    events = [ev(i, T0 + i * 1_000, event_type=tk.EVENT_TYPES[i % 9]) for i in range(20)]
    state = feed(events, max_len=8)
    assert state.tokens.shape == (8, NUM_FIELDS)
    expected = [tokenize(events[i], events[i - 1].ts_ms, VOCAB) for i in range(12, 20)]
    assert [tuple(row) for row in state.tokens] == expected
    assert state.event_count == 20
    assert state.last_event_ids == ["e-17", "e-18", "e-19"]


def test_out_of_order_event_does_not_move_time_back() -> None:
    state = feed([ev(0, T0), ev(1, T0 + 60_000)])
    rate = state.rate_per_s
    state, applied = apply_event(state, ev(2, T0 - 5_000), VOCAB, 64)
    assert applied
    assert state.last_ts_ms == T0 + 60_000
    assert state.first_ts_ms == T0 - 5_000
    assert state.tokens[-1, GAP] == tk.OUT_OF_ORDER
    assert state.rate_per_s == rate
    assert state.event_count == 3
    # The next in-order event measures its gap from the newest time, not the late one.
    state, _ = apply_event(state, ev(3, T0 + 61_000), VOCAB, 64)
    assert state.tokens[-1, GAP] == tk.OUT_OF_ORDER + 1 + 1  # 1-2 s


def test_rate_bot_burst_is_far_above_20_per_s() -> None:
    # A human history first, then 50 events in one second.
    human = [ev(i, T0 + i * 10_000) for i in range(20)]
    start = human[-1].ts_ms + 10_000
    burst = [ev(100 + i, start + i * 20) for i in range(50)]
    state = feed(human + burst)
    assert state.rate_per_s > 40


def test_rate_fresh_bot_burst() -> None:
    state = feed([ev(i, T0 + i * 20) for i in range(50)])
    assert state.rate_per_s > 40


def test_rate_human_is_about_a_tenth() -> None:
    state = feed([ev(i, T0 + i * 10_000) for i in range(40)])
    assert 0.08 < state.rate_per_s < 0.12


def test_rate_tolerates_a_few_simultaneous_events() -> None:
    events = [ev(i, T0 + i * 10_000) for i in range(20)]
    t = events[-1].ts_ms
    events += [ev(100 + i, t) for i in range(3)]  # e.g. view + click + add_to_cart in one ms
    assert feed(events).rate_per_s < 1
    # Two events of a brand-new user sent together are not a bot either.
    assert feed([ev(0, T0), ev(1, T0)]).rate_per_s < 1


def test_rate_is_capped() -> None:
    state = feed([ev(i, T0) for i in range(3_000)])
    assert math.isfinite(state.rate_per_s) and state.rate_per_s <= 1_000


def test_round_trip_exact() -> None:
    state = feed([ev(i, T0 + i * 777) for i in range(70)])
    state.churn, state.purchase, state.anomaly = 0.25, 0.5, math.nan
    state.churn_armed = False
    state.last_churn_alert_ms, state.last_anomaly_alert_ms, state.last_burst_alert_ms = 1, 2, 3
    state.last_takeover_alert_ms = 4
    state.last_event_ids = ["ü😀", "x" * 64, ""]
    data = state.to_bytes()
    again = UserState.from_bytes(data)
    assert again == state and again.to_bytes() == data
    assert np.array_equal(again.tokens, state.tokens) and again.tokens.dtype == np.uint16
    assert again.tokens.flags.writeable
    assert again.recent_event_ids == state.recent_event_ids
    assert (again.churn, again.purchase) == (0.25, 0.5) and math.isnan(again.anomaly)
    assert not again.churn_armed
    assert again.last_takeover_alert_ms == 4
    assert again.last_event_ids == state.last_event_ids
    assert (again.event_count, again.rate_per_s) == (state.event_count, state.rate_per_s)


def test_empty_round_trip() -> None:
    assert UserState.from_bytes(UserState().to_bytes()) == UserState()


def test_bytes_per_user_for_a_full_sequence() -> None:
    events = [ev(i, T0 + i, event_id=f"{i:08d}-0000-4000-8000-000000000000") for i in range(64)]
    state = feed(events)
    assert len(state.last_event_ids[0]) == 36
    assert len(state.to_bytes()) == 151 + 64 * 6 * 2 + 32 * 8 + 3 * (2 + 36) + 64 * 4 == 1545


def test_long_event_ids_truncated() -> None:
    state = feed([ev(0, T0, event_id="x" * 500)])
    assert state.last_event_ids == ["x" * 64]


@pytest.mark.parametrize(
    "data",
    [b"", b"\x02" + b"\x00" * 200, UserState().to_bytes()[:-1], UserState().to_bytes() + b"\x00"],
)
def test_from_bytes_rejects_damage(data: bytes) -> None:
    with pytest.raises(ValueError):
        UserState.from_bytes(data)


def test_from_bytes_rejects_truncated_tokens() -> None:
    data = feed([ev(0, T0), ev(1, T0 + 1)]).to_bytes()
    for cut in (100, len(data) - 3):
        with pytest.raises(ValueError):
            UserState.from_bytes(data[:cut])


def test_padded_left_pads_newest_last() -> None:
    state = feed([ev(i, T0 + i * 1_000) for i in range(3)])
    out = state.padded(5)
    assert out.shape == (5, NUM_FIELDS) and out.dtype == np.int32
    assert not out[:2].any()
    assert np.array_equal(out[2:], state.tokens)
    trimmed = state.padded(2)
    assert np.array_equal(trimmed, state.tokens[1:])


def test_stack_padded() -> None:
    a = feed([ev(i, T0 + i * 1_000) for i in range(3)])
    b = feed([ev(i, T0 + i * 1_000) for i in range(10)])
    batch = stack_padded([a, b, UserState()], 4)
    assert batch.shape == (3, 4, NUM_FIELDS) and batch.dtype == np.int32
    assert np.array_equal(batch[0], a.padded(4))
    assert np.array_equal(batch[1], b.padded(4))
    assert not batch[2].any()
    assert stack_padded([], 4).shape == (0, 4, NUM_FIELDS)


def test_event_id_hash_is_stable_64_bit() -> None:
    assert event_id_hash("e-1") == event_id_hash("e-1") != event_id_hash("e-2")
    assert 0 <= event_id_hash("e-1") < 2**64
    assert event_id_hash("") != event_id_hash(" ")


def test_invalid_limits() -> None:
    for max_len, max_ids in ((0, 32), (70_000, 32), (64, 0), (64, 256)):
        with pytest.raises(ValueError):
            apply_event(None, ev(0, T0), VOCAB, max_len, max_ids=max_ids)


_FULL = feed([ev(i, T0 + i * 1_000) for i in range(10)]).to_bytes()


@settings(max_examples=300)
@given(st.integers(0, len(_FULL) - 1), st.integers(0, 255), st.integers(0, len(_FULL)))
def test_damaged_bytes_load_or_raise_value_error(pos: int, byte: int, cut: int) -> None:
    data = bytearray(_FULL)
    data[pos] = byte
    try:
        state = UserState.from_bytes(bytes(data[:cut]))
    except ValueError:
        return
    assert state.tokens.shape[1] == NUM_FIELDS


def _older(current: bytes, version: int) -> bytes:
    """Bytes of the same state as `version` wrote them: version 3 lacks the 8-byte silence at
    the end of the header, version 2 also the 36-byte counters before it, version 1 also the
    12-byte source offset before them."""
    v3 = bytes([3]) + current[1:143] + current[151:]
    if version == 3:
        return v3
    v2 = bytes([2]) + v3[1:99] + v3[143:]
    return v2 if version == 2 else bytes([1]) + v2[1:87] + v2[99:]


def test_version_1_states_still_load_without_an_applied_offset() -> None:
    state = feed([ev(i, T0 + i) for i in range(5)])
    state.mark_applied(2, 41)
    v2 = _older(state.to_bytes(), 2)
    # Version 1: the same bytes without the 12-byte source offset at the end of the header.
    v1 = bytes([1]) + v2[1:87] + v2[99:]
    old = UserState.from_bytes(v1)
    assert (old.source_partition, old.source_offset) == (-1, -1)
    assert old.event_count == 5 and np.array_equal(old.tokens, state.tokens)
    assert not old.has_applied(2, 0)
    restored = UserState.from_bytes(v2)
    assert restored.has_applied(2, 41) and not restored.has_applied(2, 42)
    assert not restored.has_applied(1, 0)  # another partition: decided by event ids
    with pytest.raises(ValueError):
        UserState.from_bytes(bytes([5]) + state.to_bytes()[1:])


def test_version_2_states_load_with_no_takeover_alert_yet() -> None:
    state = feed([ev(i, T0 + i) for i in range(5)])
    state.mark_applied(2, 41)
    state.last_burst_alert_ms, state.last_takeover_alert_ms = 7, 9
    v3 = _older(state.to_bytes(), 3)
    old = UserState.from_bytes(_older(state.to_bytes(), 2))
    assert old.last_takeover_alert_ms == 0 and old.last_burst_alert_ms == 7
    assert (old.source_partition, old.source_offset) == (2, 41)
    assert old.event_count == 5 and np.array_equal(old.tokens, state.tokens)
    assert UserState.from_bytes(v3).last_takeover_alert_ms == 9
    # A version 2 header with version 3's length is damage, not a takeover time.
    with pytest.raises(ValueError):
        UserState.from_bytes(bytes([2]) + v3[1:])


def test_states_without_the_item_hash_section_still_load() -> None:
    state = feed([ev(i, T0 + i) for i in range(5)])
    state.mark_applied(2, 41)
    current = _older(state.to_bytes(), 2)
    assert current[1] & 2  # the item-hash flag; its section is the last 5 * 4 bytes
    # Version 2 and version 1 as written before item hashes existed: no flag, no section.
    v2 = bytearray(current[: -5 * 4])
    v2[1] &= ~2
    v1 = bytes([1]) + bytes(v2[1:87]) + bytes(v2[99:])
    for data, source in ((bytes(v2), (2, 41)), (v1, (-1, -1))):
        old = UserState.from_bytes(data)
        assert (old.source_partition, old.source_offset) == source
        assert old.item_hashes.tolist() == [0] * 5
        assert old.event_count == 5 and np.array_equal(old.tokens, state.tokens)
        # Written again, it carries the section (all 0) and reads back the same.
        assert UserState.from_bytes(old.to_bytes()) == old
    # Version 1 bytes that do carry the section load their hashes too.
    v1_items = bytes([1]) + current[1:87] + current[99:]
    assert UserState.from_bytes(v1_items).item_hashes.tolist() == state.item_hashes.tolist()


DAY = 86_400_000


def test_counters_count_purchases_spend_and_days_exactly() -> None:
    day0 = (T0 // DAY) * DAY
    events = [
        ev(0, day0 + 1_000),
        ev(1, day0 + 2_000, "purchase"),  # price 1.0
        ev(2, day0 + 3_000, "buy"),  # an alias of purchase, price 2.0, same day
        ev(3, day0 + DAY + 5, "view"),
        ev(4, day0 + 3 * DAY, "purchase"),  # price 4.0, a new purchase day
        ev(5, day0 + 2 * DAY, "purchase"),  # out of order: counts, starts no day
    ]
    state = feed(events)
    assert state.active_days == 3  # day 0, day 1, day 3
    assert state.purchase_count == 4 and state.purchase_days == 2
    assert state.spend == 1.0 + 2.0 + 4.0 + 5.0
    assert (state.first_purchase_ms, state.last_purchase_ms) == (day0 + 2_000, day0 + 3 * DAY)
    again = UserState.from_bytes(state.to_bytes())
    assert (again.active_days, again.purchase_count, again.purchase_days) == (3, 4, 2)
    assert (again.spend, again.first_purchase_ms, again.last_purchase_ms) == (
        12.0,
        day0 + 2_000,
        day0 + 3 * DAY,
    )


def test_a_duplicate_event_counts_once() -> None:
    state = feed([ev(1, T0, "purchase"), ev(1, T0 + 5, "purchase")])
    assert (state.purchase_count, state.spend, state.event_count) == (1, 1.0, 1)


def test_version_2_states_load_with_counters_from_their_token_rows() -> None:
    state = feed([ev(0, T0), ev(1, T0 + DAY, "purchase"), ev(2, T0 + 2 * DAY, "purchase")])
    state.mark_applied(1, 7)
    for version in (2, 1):
        old = UserState.from_bytes(_older(state.to_bytes(), version))
        assert old.event_count == 3 and np.array_equal(old.tokens, state.tokens)
        # What the rows show: two purchases, of unknown spend, dated at the last event.
        assert (old.active_days, old.purchase_count, old.purchase_days, old.spend) == (1, 2, 1, 0.0)
        assert old.first_purchase_ms == old.last_purchase_ms == T0 + 2 * DAY
        # Written again it is a version 4 state and counts on from there.
        assert UserState.from_bytes(old.to_bytes()).to_bytes()[0] == 4
        later, _ = apply_event(old, ev(3, T0 + 3 * DAY, "purchase"), VOCAB, 64)
        assert (later.purchase_count, later.purchase_days, later.active_days) == (3, 2, 2)
