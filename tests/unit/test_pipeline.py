"""A window that fails as a whole, and a request Triton refuses: the rest goes on (no services)."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
import numpy as np
import numpy.typing as npt
import pytest

from stream.contract.events import Rejection
from stream.contract.state import UserState
from stream.scoring.alerts import Alert
from stream.scoring.scores import Score
from stream.worker.metrics import Health
from stream.worker.pipeline import ScoringPipeline
from stream.worker.triton_client import ModelScores
from stream.worker.window import MODEL_REJECTED, PROCESSING_ERROR, Message
from tests.conftest import make_settings
from tests.support.pipeline import ConstantScorer, MemoryTable, RecordingOutputs, view_message
from tests.unit.test_faults import triton_error

NOW_MS = 1_800_000_000_000


class RefusesBob(RecordingOutputs):
    """A sink that cannot take bob's score, for a reason no retry fixes (a stand-in bug)."""

    async def write(self, scores: Sequence[Score], alerts: Sequence[Alert]) -> None:
        if any(s.user_id == "bob" for s in scores):
            raise ValueError("cannot store this")
        await super().write(scores, alerts)


def message(user: str, n: int, offset: int) -> Message:
    return view_message(user, n, offset, NOW_MS)


def pipeline(outputs: RecordingOutputs, scorer: object, table: MemoryTable) -> ScoringPipeline:
    return ScoringPipeline(
        make_settings(),
        table,
        scorer,  # type: ignore[arg-type]
        outputs,
        outputs,  # type: ignore[arg-type]
        clock=lambda: NOW_MS / 1000,
    )


async def test_a_failed_window_is_processed_message_by_message_and_only_the_culprit_dropped() -> (
    None
):
    outputs, table = RefusesBob(), MemoryTable()
    scoring = pipeline(outputs, ConstantScorer(), table)
    window = [*(message("alice", n, n) for n in range(3)), message("bob", 0, 3)]
    with pytest.raises(ValueError):
        await scoring.process(window)
    await scoring.process_isolated(window)
    assert [(m.key, r.reason) for m, r in outputs.dead] == [(b"bob", PROCESSING_ERROR)]
    assert "ValueError" in outputs.dead[0][1].detail
    assert {s.user_id: s.event_count for s in outputs.scores}["alice"] == 3
    assert list(table.rows) == [b"alice"]
    # Processing the window again (a restart) changes nothing: the offsets are applied.
    await scoring.process(window[:3])
    assert UserState.from_bytes(table.rows[b"alice"]).event_count == 3


async def test_a_refused_request_dead_letters_its_events_and_the_rest_is_scored() -> None:
    outputs, table = RecordingOutputs(), MemoryTable()

    class RefusesCarol:
        async def score(
            self, tokens: npt.NDArray[np.int32], item_hashes: npt.NDArray[np.int64] | None = None
        ) -> ModelScores:
            n = tokens.shape[0]
            half = np.full(n, 0.5, dtype=np.float32)
            why = str(triton_error(grpc.StatusCode.INVALID_ARGUMENT))
            # Row order follows the window's first appearance of each user: alice, carol.
            return ModelScores(half, half, half, ["1"] * n, [None, why])

    window = [message("alice", 0, 0), message("carol", 0, 1), message("carol", 1, 2)]
    await pipeline(outputs, RefusesCarol(), table).process(window)
    assert [(m.offset, r.reason) for m, r in outputs.dead] == [
        (1, MODEL_REJECTED),
        (2, MODEL_REJECTED),
    ]
    assert [s.user_id for s in outputs.scores] == ["alice"]
    assert list(table.rows) == [b"alice"]  # carol's events do not count until replayed


async def test_a_dead_letter_topic_that_refuses_makes_the_worker_unhealthy_until_it_accepts() -> (
    None
):
    class RefusesTwice(RefusesBob):
        refusals = 2

        async def dead_letters(self, rejected: Sequence[tuple[Message, Rejection]]) -> None:
            if self.refusals:
                self.refusals -= 1
                raise PermissionError("not authorised to write the dead-letter topic")
            await super().dead_letters(rejected)

    outputs, health = RefusesTwice(), Health()
    scoring = ScoringPipeline(
        make_settings(retry_max_backoff_s=0.01),
        MemoryTable(),
        ConstantScorer(),
        outputs,
        outputs,  # type: ignore[arg-type]
        clock=lambda: NOW_MS / 1000,
        health=health,
    )
    seen: list[dict[str, object]] = []
    original_fail = health.fail

    def fail(component: str, reason: str) -> None:
        original_fail(component, reason)
        seen.append(health.report())

    health.fail = fail  # type: ignore[method-assign]
    await scoring.process_isolated([message("bob", 0, 0)])
    assert seen and seen[0]["status"] == "unhealthy"
    assert "not authorised" in str(seen[0]["problems"])
    assert health.report() == {"status": "ok", "problems": {}}
    assert [(m.key, r.reason) for m, r in outputs.dead] == [(b"bob", PROCESSING_ERROR)]


async def test_a_refused_silent_rescore_of_a_window_user_is_dropped_and_the_rest_kept() -> None:
    """Alice's view is 3 h older than Bob's in the same partition, so this window's own event
    time has already passed her first level of silence: she is re-scored after the window's
    table writes, and Triton refuses that row. Her silent score is dropped (a refused silent
    re-score has no events to dead-letter); her event's score and state stand."""

    class RefusesSilentAlice(ConstantScorer):
        def __init__(self) -> None:
            super().__init__()
            self.calls = 0

        async def score(
            self, tokens: npt.NDArray[np.int32], item_hashes: npt.NDArray[np.int64] | None = None
        ) -> ModelScores:
            self.calls += 1
            model = await super().score(tokens, item_hashes)
            if self.calls == 2:  # the late re-score: alice's row alone
                why = str(triton_error(grpc.StatusCode.INVALID_ARGUMENT))
                model = ModelScores(
                    model.churn, model.purchase, model.anomaly, model.model_versions, [why]
                )
            return model

    def view(user: str, ts_ms: int, offset: int) -> Message:
        value = b'{"event_id":"%s","user_id":"%s","ts":%d,"event_type":"view"}' % (
            user.encode(),
            user.encode(),
            ts_ms,
        )
        return Message(user.encode(), value, "events", 0, offset)

    outputs, table, scorer = RecordingOutputs(), MemoryTable(), RefusesSilentAlice()
    scoring = ScoringPipeline(
        make_settings(silent_rescore_after_s=3600),
        table,
        scorer,
        outputs,
        outputs,  # type: ignore[arg-type]
        clock=lambda: NOW_MS / 1000,
    )
    await scoring.process([view("alice", NOW_MS - 3 * 3_600_000, 0), view("bob", NOW_MS, 1)])
    assert scorer.calls == 2  # the window, then alice's silence
    assert [s.user_id for s in outputs.scores] == ["alice", "bob"]  # no silent score
    assert outputs.dead == []
    alice = UserState.from_bytes(table.rows[b"alice"])
    assert alice.event_count == 1 and alice.last_ts_ms == NOW_MS - 3 * 3_600_000


def _emitted_figures() -> tuple[float, float, float, float]:
    """(count, sum) of event-to-score latency, then of silent re-score delay, so far."""
    from prometheus_client import REGISTRY

    def value(name: str) -> float:
        return REGISTRY.get_sample_value(name) or 0.0

    return (
        value("clickscore_event_to_score_seconds_count"),
        value("clickscore_event_to_score_seconds_sum"),
        value("clickscore_silent_rescore_delay_seconds_count"),
        value("clickscore_silent_rescore_delay_seconds_sum"),
    )


async def test_silent_rescores_say_so_and_count_as_due_delay_never_as_latency() -> None:
    """Carol's view is 3 h old when Bob's arrives: she is re-scored in Bob's window, at the
    2 h level (1 h and 2 h passed together). Alice's 3 h old view is in that window itself:
    she is re-scored after it. Both silent rows say "silence" at 2 h, carry their last
    event, and add to the due-to-emitted delay (due 1 h before the clock), not to latency."""
    hour_ms = 3_600_000

    def view(user: str, ts_ms: int, offset: int) -> Message:
        value = b'{"event_id":"%s-e","user_id":"%s","ts":%d,"event_type":"view"}' % (
            user.encode(),
            user.encode(),
            ts_ms,
        )
        return Message(user.encode(), value, "events", 0, offset)

    outputs = RecordingOutputs()
    scoring = ScoringPipeline(
        make_settings(silent_rescore_after_s=3600),
        MemoryTable(),
        ConstantScorer(),
        outputs,
        outputs,  # type: ignore[arg-type]
        clock=lambda: NOW_MS / 1000,
    )
    before = _emitted_figures()
    await scoring.process([view("carol", NOW_MS - 3 * hour_ms, 0)])
    await scoring.process([view("alice", NOW_MS - 3 * hour_ms, 1), view("bob", NOW_MS, 2)])
    after = _emitted_figures()

    why = [(s.user_id, s.trigger, s.silence_ms, s.last_event_id) for s in outputs.scores]
    assert why == [
        ("carol", "event", 0, "carol-e"),
        ("alice", "event", 0, "alice-e"),
        ("bob", "event", 0, "bob-e"),
        ("carol", "silence", 2 * hour_ms, "carol-e"),  # in Bob's Triton call
        ("alice", "silence", 2 * hour_ms, "alice-e"),  # after the window's table writes
    ]
    assert outputs.published_scores == outputs.scores
    latency_count, latency_sum, delay_count, delay_sum = (
        a - b for a, b in zip(after, before, strict=True)
    )
    # Three event scores: carol and alice 3 h after their view, bob at once.
    assert (latency_count, latency_sum) == (3, 2 * 3 * 3600)
    # Two silent re-scores, each due at last event + 2 h = 1 h before they were emitted.
    assert (delay_count, delay_sum) == (2, 2 * 3600)


async def test_results_mark_a_row_with_silence_as_a_silent_rescore() -> None:
    state = UserState()
    model = await ConstantScorer().score(np.zeros((2, 4, 6), dtype=np.int32))
    scoring = pipeline(RecordingOutputs(), ConstantScorer(), MemoryTable())
    _, scores, _ = scoring._results(["a", "b"], [state, state], model, [0, 86_400_000])
    assert [(s.trigger, s.silence_ms) for s in scores] == [("event", 0), ("silence", 86_400_000)]
    _, scores, _ = scoring._results(["a"], [state], model.rows([0]))
    assert [(s.trigger, s.silence_ms) for s in scores] == [("event", 0)]


async def test_the_due_gauge_counts_silent_users_left_for_a_later_window() -> None:
    """Three users went quiet 3 h ago; one event moves the partition's clock past their first
    level, and a window re-scores at most one of them: two stay due."""
    from prometheus_client import REGISTRY

    outputs = RecordingOutputs()
    scoring = ScoringPipeline(
        make_settings(silent_rescore_after_s=3600, silent_rescore_max_users=1),
        MemoryTable(),
        ConstantScorer(),
        outputs,
        outputs,  # type: ignore[arg-type]
        clock=lambda: NOW_MS / 1000,
    )
    three_hours_ago = NOW_MS - 3 * 3_600_000 + 1000  # view_message sends at now_ms - 1 s
    await scoring.process([view_message(u, 0, n, three_hours_ago) for n, u in enumerate("abc")])
    assert REGISTRY.get_sample_value("clickscore_silent_rescores_due") == 0
    await scoring.process([message("dora", 0, 3)])
    assert [s.trigger for s in outputs.scores].count("silence") == 1
    assert REGISTRY.get_sample_value("clickscore_silent_rescores_due") == 2
