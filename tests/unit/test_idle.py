"""Silent users: when they are due for a re-score, and the sequence that carries the silence."""

from __future__ import annotations

import math

from stream.contract.events import Event
from stream.contract.state import UserState, apply_event
from stream.contract.tokenizer import FIRST, OTHER, Vocabulary, item_hash
from stream.scoring.alerts import AlertRules, alert_id, evaluate
from stream.scoring.idle import IdleIndex, IdlePolicy, silence_item_hashes, silence_tokens

HOUR_MS = 3_600_000
POLICY = IdlePolicy(idle_s=3600, max_idle_s=8 * 3600, max_users_per_pass=2)
VOCAB = Vocabulary()


def test_levels_double_up_to_the_longest_silence() -> None:
    assert POLICY.levels_ms() == [HOUR_MS, 2 * HOUR_MS, 4 * HOUR_MS, 8 * HOUR_MS]
    assert IdlePolicy(idle_s=0).levels_ms() == []


def test_a_user_is_due_when_the_partitions_event_time_passes_each_level() -> None:
    index = IdleIndex(POLICY)
    index.touch(0, "quiet", 0)
    assert index.due(0) == []
    index.touch(0, "other", HOUR_MS)  # another user's event moves the partition's clock
    [due] = index.due(0)
    assert (due.user_id, due.elapsed_ms(POLICY), due.last_ts_ms) == ("quiet", HOUR_MS, 0)
    assert index.due(0) == []  # the 2 h level is not reached yet
    index.touch(0, "other", 5 * HOUR_MS)
    [due] = [d for d in index.due(0) if d.user_id == "quiet"]
    assert due.elapsed_ms(POLICY) == 4 * HOUR_MS  # 2 h and 4 h passed together: one re-score
    index.touch(0, "other", 100 * HOUR_MS)
    assert [d.elapsed_ms(POLICY) for d in index.due(0) if d.user_id == "quiet"] == [8 * HOUR_MS]
    index.touch(0, "other", 1000 * HOUR_MS)
    assert [d for d in index.due(0) if d.user_id == "quiet"] == []  # past the last level


def test_a_new_event_restarts_the_silence_and_partitions_keep_their_own_clock() -> None:
    index = IdleIndex(POLICY)
    index.touch(0, "u", 0)
    index.touch(0, "u", 3 * HOUR_MS // 2)  # came back before the first level
    index.touch(1, "v", 10 * HOUR_MS)  # another partition's clock does not count
    assert index.due(0) == []
    index.touch(0, "w", 3 * HOUR_MS)
    [due] = [d for d in index.due(0) if d.user_id == "u"]
    assert due.last_ts_ms == 3 * HOUR_MS // 2 and due.elapsed_ms(POLICY) == HOUR_MS


def test_each_pass_is_bounded_and_the_rest_wait_for_the_next() -> None:
    index = IdleIndex(POLICY)
    for n in range(5):
        index.touch(0, f"u{n}", n)
    index.touch(0, "clock", 10 * HOUR_MS)
    passes = [index.due(0) for _ in range(4)]
    assert [len(p) for p in passes] == [2, 2, 1, 0]  # u0..u4; "clock" itself is not silent
    assert {d.user_id for p in passes for d in p} == {f"u{n}" for n in range(5)}


def test_stale_entries_are_compacted() -> None:
    index = IdleIndex(POLICY)
    for ts in range(5000):
        index.touch(0, "busy", ts)
    assert len(index) == 1 and index.entries() < 2 * 1 + 1024 + 1


def _state(gaps_ms: list[int]) -> UserState:
    state, ts = None, 0
    for n, gap in enumerate(gaps_ms):
        ts += gap
        state, _ = apply_event(state, Event(f"e{n}", "u", ts, "view", item_id="i"), VOCAB, 8)
    assert state is not None
    return state


def test_silence_tokens_append_a_pseudo_event_carrying_the_gap() -> None:
    state = _state([0, 60_000])
    tokens = silence_tokens([state], [3 * 86_400_000], VOCAB, 8)
    assert tokens.shape == (1, 8, 6)
    assert tokens[0, -1, 0] == OTHER and tokens[0, -1, 4] == 3 + 1 + 12  # the 3-7 d bucket
    assert tokens[0, -3, 4] == FIRST  # the user's own events moved one to the left
    assert state.event_count == 2  # the state is untouched


def test_silence_item_hashes_stay_aligned_with_the_silence_tokens() -> None:
    state = _state([0, 60_000])
    hashes = silence_item_hashes([state], 8)
    assert hashes.shape == (1, 8)
    # The user's two items moved one to the left with their tokens; the silence names none.
    assert hashes[0].tolist() == [0, 0, 0, 0, 0, item_hash("i"), item_hash("i"), 0]


def test_a_silent_rescore_raises_only_churn_at_last_event_plus_the_silence() -> None:
    rules = AlertRules(churn_min_events=1, churn_min_history_s=0, burst_events_per_s=0.001)
    state = _state([0, HOUR_MS])
    state = evaluate(state, "u", 0.1, 0.1, 0.2, "7", rules)[0]
    new, alerts = evaluate(state, "u", 0.9, 0.1, 0.99, "7", rules, math.nan, 2 * 86_400_000)
    [alert] = alerts  # no anomaly or burst alert from a silence
    assert alert.kind == "churn" and alert.event_ts_ms == state.last_ts_ms + 2 * 86_400_000
    assert alert.reason == "churn risk 0.90 crossed 0.80 after 2.0 d of silence"
    assert alert.alert_id == alert_id("churn", "u", 0)
    assert new.anomaly == state.anomaly and new.last_ts_ms == state.last_ts_ms
