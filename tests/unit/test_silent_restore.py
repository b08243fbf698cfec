"""The silent-user index rebuilt from stored states: after a restart or a rebalance a quiet
user is re-scored at the same levels, once each, as if no worker had stopped (no services)."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import numpy as np
import numpy.typing as npt

from stream.contract.events import Event
from stream.contract.state import (
    UserState,
    apply_event,
    silence_point,
)
from stream.contract.tokenizer import OTHER, Vocabulary
from stream.scoring.alerts import Alert
from stream.scoring.idle import IdleIndex, IdlePolicy
from stream.scoring.rebuild import IndexRebuilder, rebuild
from stream.scoring.scores import Score
from stream.worker.pipeline import ScoringPipeline
from stream.worker.triton_client import ModelScores
from stream.worker.window import Message
from tests.conftest import make_settings
from tests.support.pipeline import ConstantScorer, MemoryTable, RecordingOutputs

HOUR_MS = 3_600_000
NOW_MS = 1_800_000_000_000
START_MS = NOW_MS - 20 * 24 * HOUR_MS
POLICY = IdlePolicy(idle_s=3600, max_idle_s=8 * 3600, max_users_per_pass=100)
VOCAB = Vocabulary()


def test_a_state_remembers_the_silence_it_was_scored_at_until_a_newer_event() -> None:
    state, _ = apply_event(None, Event("e1", "u", 1_000, "view"), VOCAB, 8)
    state.silence_scored_ms = 4 * HOUR_MS
    loaded = UserState.from_bytes(state.to_bytes())
    assert loaded.silence_scored_ms == 4 * HOUR_MS
    same_time, _ = apply_event(loaded, Event("e2", "u", 1_000, "view"), VOCAB, 8)
    assert same_time.silence_scored_ms == 4 * HOUR_MS  # the same last event: same silence
    older, _ = apply_event(same_time, Event("e3", "u", 500, "view"), VOCAB, 8)
    assert older.silence_scored_ms == 4 * HOUR_MS  # out of order: the last event stays
    newer, _ = apply_event(older, Event("e4", "u", 2_000, "view"), VOCAB, 8)
    assert newer.silence_scored_ms == 0


def test_silence_point_reads_the_header_of_every_format() -> None:
    state, _ = apply_event(None, Event("e1", "u", 7_000, "view"), VOCAB, 8)
    state.mark_applied(3, 41)
    state.silence_scored_ms = HOUR_MS
    point = silence_point(state.to_bytes())
    assert (point.partition, point.last_ts_ms, point.silence_scored_ms) == (3, 7_000, HOUR_MS)
    assert point.event_count == 1
    # A format 3 state: the same header without the silence, so never re-scored yet.
    v4 = state.to_bytes()
    v3 = bytes([3]) + v4[1:143] + v4[151:]
    assert UserState.from_bytes(v3).silence_scored_ms == 0
    assert silence_point(v3).silence_scored_ms == 0
    assert silence_point(v3).last_ts_ms == 7_000


def test_a_restored_user_is_due_at_the_first_level_beyond_the_one_scored() -> None:
    index = IdleIndex(POLICY)
    index.restore(0, "scored-1h", 0, HOUR_MS)
    index.restore(0, "never", 0, 0)
    index.restore(0, "done", 0, 8 * HOUR_MS)  # every level scored: nothing left
    index.touch(0, "clock", 3 * HOUR_MS)
    due = {d.user_id: d.elapsed_ms(POLICY) for d in index.due(0)}
    assert due == {"scored-1h": 2 * HOUR_MS, "never": 2 * HOUR_MS}  # 1 h and 2 h passed: 2 h
    assert len(index) == 3  # both rescheduled at 4 h, and the clock user


def test_a_restore_never_replaces_a_newer_event_read_since() -> None:
    index = IdleIndex(POLICY)
    index.touch(0, "u", 5 * HOUR_MS)
    index.restore(0, "u", 0, 0)
    index.touch(0, "clock", 6 * HOUR_MS - 1)
    assert index.due(0) == []  # due only 1 h after the newer event, at 6 h
    index.touch(0, "clock", 6 * HOUR_MS)
    assert [(d.user_id, d.last_ts_ms) for d in index.due(0)] == [("u", 5 * HOUR_MS)]


def test_pending_counts_the_due_users_not_yet_taken() -> None:
    index = IdleIndex(replace(POLICY, max_users_per_pass=3))
    for n in range(10):
        index.touch(0, f"u{n}", n * 60_000)
    index.touch(1, "other", 0)
    assert index.pending() == 0
    index.touch(0, "clock", HOUR_MS + 4 * 60_000)  # u0..u4 passed their first level
    assert index.pending() == 5
    assert len(index.due(0)) == 3
    assert index.pending() == 2
    index.touch(0, "u3", HOUR_MS + 4 * 60_000)  # u3 came back: not due any more
    assert index.pending() == 1


async def test_rebuild_indexes_only_the_given_partitions_and_skips_what_it_cannot_read() -> None:
    def stored(user: str, partition: int, ts_ms: int) -> tuple[bytes, bytes]:
        state, _ = apply_event(None, Event(f"{user}-1", user, ts_ms, "view"), VOCAB, 8)
        state.mark_applied(partition, 0)
        return user.encode(), state.to_bytes()

    rows = [stored("a", 0, 0), stored("b", 1, 0), stored("c", 2, 10), (b"junk", b"\xff\x00")]
    index = IdleIndex(POLICY)
    assert await rebuild(index, {0, 2}, rows, yield_every=1) == 2
    assert index.partitions() == {0, 2}
    index.touch(0, "clock", HOUR_MS)
    index.touch(2, "clock", HOUR_MS + 10)
    assert [d.user_id for d in index.due(0)] == ["a"]
    assert [d.user_id for d in index.due(2)] == ["c"]
    index.forget({2})
    assert index.partitions() == {0}


# --- the pipeline, restarted after every window ------------------------------------------------


def _view(user: str, n: int, ts_ms: int, offset: int) -> Message:
    value = b'{"event_id":"%s-%d","user_id":"%s","ts":%d,"event_type":"view"}' % (
        user.encode(),
        n,
        user.encode(),
        ts_ms,
    )
    return Message(user.encode(), value, "events", 0, offset)


def _windows() -> list[list[Message]]:
    """Three quiet users with two days of history, then windows of another user whose events
    move the partition's event time on: 30 min, 1.5 h, 3 h, 3.5 h, 20 h, 5 days on."""
    offset = 0
    first: list[Message] = []
    for user in ("quiet-a", "quiet-b", "quiet-c"):
        for n, ts in enumerate((START_MS - 48 * HOUR_MS, START_MS - HOUR_MS, START_MS)):
            first.append(_view(user, n, ts, offset))
            offset += 1
    windows = [first]
    for n, hours in enumerate((0.5, 1.5, 3, 3.5, 20, 120)):
        windows.append([_view("clock", n, START_MS + int(hours * HOUR_MS), offset)])
        offset += 1
    return windows


class SilenceScorer(ConstantScorer):
    """Churn risk 0.9 for a sequence that ends in silence (the pseudo-event of no known
    type, stream/scoring/idle.py), 0.1 for one that ends in an event."""

    async def score(
        self, tokens: npt.NDArray[np.int32], item_hashes: npt.NDArray[np.int64] | None = None
    ) -> ModelScores:
        model = await super().score(tokens, item_hashes)
        model.churn[:] = np.where(tokens[:, -1, 0] == OTHER, 0.9, 0.1)
        return model


def _pipeline(table: MemoryTable, outputs: RecordingOutputs) -> ScoringPipeline:
    settings = make_settings(silent_rescore_after_s=3600, silent_rescore_max_s=8 * 3600)
    return ScoringPipeline(
        settings,
        table,
        SilenceScorer(),
        outputs,
        outputs,  # type: ignore[arg-type]
        clock=lambda: NOW_MS / 1000,
    )


def _silent(scores: list[Score]) -> list[tuple[str, int]]:
    """(user, the scoring time's distance from their last event) of each quiet user's score
    after their own events."""
    return [
        (s.user_id, s.event_count)
        for s in scores
        if s.user_id.startswith("quiet") and s.event_count == 3
    ]


def _churn(alerts: list[Alert]) -> list[tuple[str, str, int]]:
    return [(a.user_id, a.alert_id, a.event_ts_ms) for a in alerts if a.kind == "churn"]


async def test_a_restart_after_every_window_rescores_and_alerts_as_if_none_happened() -> None:
    straight, straight_table = RecordingOutputs(), MemoryTable()
    running = _pipeline(straight_table, straight)
    await running.silent_index.assigned({0})
    for window in _windows():
        await running.process(window)

    restarted, table = RecordingOutputs(), MemoryTable()
    for window in _windows():
        worker = _pipeline(table, restarted)  # a new process: an empty index
        await worker.silent_index.assigned({0})  # the partition assigned, states restored
        await worker.silent_index.wait()
        await worker.process(window)

    expected = _churn(straight.alerts)
    # Levels 1 h, 2 h (3 h passed 2 h), 4 h (and 8 h at 20 h; 16 h is past the last level)
    # for each quiet user, in both runs, and one churn alert each, at the first level with
    # a day of history behind it.
    assert len(_silent(straight.scores)) == 3 * 4
    assert _silent(restarted.scores) == _silent(straight.scores)
    assert [s.churn_risk for s in restarted.scores] == [s.churn_risk for s in straight.scores]
    quiet = sorted(u for u, _, _ in expected if u.startswith("quiet"))
    assert quiet == ["quiet-a", "quiet-b", "quiet-c"]
    assert _churn(restarted.alerts) == expected
    assert table.rows == straight_table.rows


async def test_without_the_rebuild_a_restart_forgets_the_quiet_users() -> None:
    """What the rebuild is for: a new worker that only learns users from the events it reads
    never re-scores those who went quiet before it started."""
    outputs, table = RecordingOutputs(), MemoryTable()
    windows = _windows()
    await _pipeline(table, outputs).process(windows[0])
    worker = _pipeline(table, outputs)
    for window in windows[1:]:
        await worker.process(window)
    assert _silent(outputs.scores)[3:] == []
    assert _churn(outputs.alerts) == []


def _many_quiet_windows(users: int) -> list[list[Message]]:
    """`users` quiet users' events in the first window, then the clock windows of _windows."""
    first, offset = [], 0
    for u in range(users):
        for n, ts in enumerate((START_MS - 48 * HOUR_MS, START_MS - HOUR_MS, START_MS)):
            first.append(_view(f"quiet-{u:03d}", n, ts, offset))
            offset += 1
    clock = [
        [Message(m.key, m.value, m.topic, m.partition, offset + i) for m in window]
        for i, window in enumerate(_windows()[1:])
    ]
    return [first, *clock]


async def test_windows_scored_while_the_index_is_rebuilt_score_no_level_twice() -> None:
    """The rebuild runs in the background, a state at a time here, while the new worker
    scores windows: users it has not reached yet are re-scored later, at the longest level
    passed by then, and none twice."""
    users = 60
    outputs, table = RecordingOutputs(), MemoryTable()
    windows = _many_quiet_windows(users)
    before = _pipeline(table, outputs)
    await before.silent_index.assigned({0})
    for window in windows[:3]:  # the 1 h level scored, then the worker stops
        await before.process(window)
    worker = _pipeline(table, outputs)
    worker.silent_index = IndexRebuilder(worker.idle, table.stored, yield_every=1)
    await worker.silent_index.assigned({0})  # starts the rebuild, returns at once
    await worker.process(windows[3])
    assert len(worker.idle) < users  # the window ran before the rebuild was done
    for window in windows[4:]:
        await worker.process(window)
    await worker.silent_index.wait()
    # Users restored after the last window are due and go with the next one.
    await worker.process([_view("clock", 99, START_MS + 121 * HOUR_MS, 10_000)])

    levels: dict[str, list[int]] = {}
    for score in outputs.scores:
        if score.user_id.startswith("quiet") and score.trigger == "silence":
            levels.setdefault(score.user_id, []).append(score.silence_ms // HOUR_MS)
    assert len(levels) == users
    for user, hours in levels.items():
        assert hours == sorted(set(hours)), (user, hours)  # no level twice, in order
        assert hours[0] == 1 and hours[-1] == 8, (user, hours)  # the last level reached
    churn = [a.user_id for a in outputs.alerts if a.kind == "churn"]
    assert sorted(u for u in churn if u.startswith("quiet")) == sorted(levels)


async def test_a_rebalance_during_a_rebuild_forgets_the_unfinished_partitions() -> None:
    table = MemoryTable()
    for u in range(50):
        state, _ = apply_event(None, Event(f"e{u}", f"u{u}", START_MS, "view"), VOCAB, 8)
        state.mark_applied(0, u)
        table.put(f"u{u}".encode(), state.to_bytes(), 0)
    index = IdleIndex(POLICY)
    rebuilder = IndexRebuilder(index, table.stored, yield_every=1)
    await rebuilder.assigned({0})
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert 0 < len(index) < 50  # part-way
    await rebuilder.rebalancing()
    assert index.partitions() == set()  # not left half-built
    await rebuilder.assigned({0})
    await rebuilder.wait()
    assert len(index) == 50
